# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""The lab's outputs: `<stem>.json`, `<stem>.md` (statistics over seeds) and `<stem>.png`, written atomically."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from .stats import paired_differences, summarize


METRICS = (("greedy", "held-out greedy"), ("average_at_k", "average@k"), ("mean_length", "mean length"))


def own_baselines(method: str, methods: list[str]) -> list[str]:
    """The methods in this run that `method` must beat, other than the first (its plain method for a variant
    `name:field=value`, then the registry's `baselines`; the `step-oracle` control's are `grpo` and `rlsd`)."""
    from ..launch.methods import METHODS
    from .oracle import ORACLE_BASE, STEP_ORACLE

    name = method.split(":")[0]
    if name in METHODS:
        registry = METHODS[name].baselines
    else:
        registry = ("grpo", ORACLE_BASE) if name == STEP_ORACLE else ()
    candidates = ([name] if name != method else []) + list(registry)
    return [b for b in candidates if b in methods and b != methods[0] and b != method]


def _paired(runs: dict, method: str, base: str) -> dict:
    return {
        metric: paired_differences(
            {s: runs[method][s]["final"][metric] for s in runs[method]},
            {s: runs[base][s]["final"][metric] for s in runs[base]},
        )
        for metric, _ in METRICS
    }


def add_statistics(results: dict) -> dict:
    """`summary[method][metric]` (values over seeds, mean, std), `paired[method][metric]` (to the first method) and
    `paired_to_own["method - baseline"][metric]` (to each of its own baselines that ran beside it)."""
    runs, methods = results["runs"], results["methods"]
    results["summary"] = {
        m: {metric: summarize([runs[m][s]["final"][metric] for s in runs[m]]) for metric, _ in METRICS}
        | {"seconds": summarize([runs[m][s]["seconds"] for s in runs[m]])}
        for m in methods
    }
    results["paired"] = {m: _paired(runs, m, methods[0]) for m in methods[1:]}
    results["paired_to_own"] = {
        f"{m} - {b}": _paired(runs, m, b) for m in methods[1:] for b in own_baselines(m, methods)
    }
    return results


def _pm(stat: dict, digits: int = 3) -> str:
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def render_markdown(results: dict, plot_name: str) -> str:
    k, seeds, base = results["k"], results["seeds"], results["methods"][0]
    start = results["start"]
    lines = [
        f"command: `{results['command']}`",
        "",
        f"# lab: `{results['world']}`",
        "",
        f"{results['description']}.",
        "",
        f"- diagnostic: {results['diagnostic']['summary']}",
        f"- teacher held-out greedy accuracy {results['teacher_accuracy']:.3f}; student start greedy "
        f"{start['greedy']:.3f}, average@{k} {start['average_at_k']:.3f}, mean length {start['mean_length']:.1f} "
        f"(warm-up stopped after {results['build']['warmup_steps']} steps at validation accuracy "
        f"{results['build']['val_accuracy']:.3f}{confirmation_note(results['build'])})",
        f"- {results['steps']} steps per run, seeds {', '.join(map(str, seeds))}, {results['n_heldout']} held-out "
        f"problems; mean ± sample std over seeds; average@{k}: temperature-1 samples; length in tokens.",
    ]
    schedule = results.get("lr_schedule", "constant")  # absent from results made before it was an option
    if schedule == "constant":
        lines.append("- learning rate: constant after the warm-up steps (`--lr-schedule constant`)")
    else:
        lines.append(f"- learning rate: {schedule} decay to 0 after the warm-up steps (`--lr-schedule`)")
    machine = results.get("machine")  # absent from results made before it was recorded
    if machine:
        lines.append(
            f"- machine: torch {machine['torch']} on {machine['architecture']} with {machine['cpu_capability']} "
            f"kernels, {machine['cores']} cores (runs are deterministic on one kind of CPU, not across kinds)"
        )
    lines += [
        "",
        f"| method | held-out greedy | average@{k} | mean length | seconds per run |",
        "|---|---|---|---|---|",
    ]
    for method, stat in results["summary"].items():
        lines.append(
            f"| {method} | {_pm(stat['greedy'])} | {_pm(stat['average_at_k'])} | {_pm(stat['mean_length'], 1)} | "
            f"{stat['seconds']['mean']:.0f} |"
        )
    for title, paired in (
        (f"Paired difference to `{base}` (same seed)", results["paired"]),
        ("Paired difference of each method to its own baselines (same seed)", results.get("paired_to_own", {})),
    ):
        if paired:
            lines += ["", f"{title}, held-out greedy / average@{k}:", ""] + _paired_table(paired, seeds)
    lines += ["", f"![held-out accuracy and mechanism metrics]({plot_name})", ""]
    return "\n".join(lines)


def confirmation_note(build: dict) -> str:
    """`"; confirmed at X on fresh problems, after N entries that did not hold there"` for a world whose band entry
    is confirmed (`World.n_confirm`); `""` otherwise."""
    if build.get("confirm_accuracy") is None:
        return ""
    return (
        f"; confirmed at {build['confirm_accuracy']:.3f} on fresh problems, after {build['entries_rejected']} "
        "entries that did not hold there"
    )


def _paired_table(paired: dict, seeds: list) -> list[str]:
    lines = [
        "| method | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± std |",
        "|---|" + "---|" * (len(seeds) + 1),
    ]
    for method, metrics in paired.items():
        greedy, avg = metrics["greedy"], metrics["average_at_k"]
        cells = [
            f"{greedy['per_seed'][s]:+.3f} / {avg['per_seed'][s]:+.3f}" if s in greedy["per_seed"] else "–"
            for s in seeds
        ]
        lines.append(
            f"| {method} | " + " | ".join(cells) + f" | {greedy['mean']:+.3f} ± {greedy['std']:.3f} / "
            f"{avg['mean']:+.3f} ± {avg['std']:.3f} |"
        )
    return lines


def _band(series_by_seed: list[list[tuple[int, float]]]):
    """Mean and std over seeds at every step where some seed logged a finite value; a seed that did not log a step
    (e.g. a metric skipped when its group was empty) or logged NaN there is left out of that step's band."""
    by_seed = [dict(series) for series in series_by_seed]
    steps, means, stds = [], [], []
    for step in sorted({s for d in by_seed for s in d}):
        values = [d[step] for d in by_seed if step in d and not math.isnan(d[step])]
        if not values:
            continue
        m = sum(values) / len(values)
        steps.append(step)
        means.append(m)
        stds.append(math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0)
    return steps, means, stds


#: Mechanism metrics drawn together on one panel (line styles in this order), keyed by the panel's title.
SHARED_PANELS = {
    "motab/accuracy: backtracked (solid) vs not (dashed)": (
        "motab/accuracy_backtracked",
        "motab/accuracy_not_backtracked",
    ),
}
LINE_STYLES = ("-", "--", ":", "-.")


def _panels(metric_names: list[str]) -> list[tuple[str, list[str]]]:
    """`(title, metrics)` per mechanism panel: one metric each, except the [`SHARED_PANELS`] groups, sorted by title."""
    shared = [(title, [n for n in names if n in metric_names]) for title, names in SHARED_PANELS.items()]
    grouped = {n for _, names in shared for n in names}
    return sorted([(n, [n]) for n in metric_names if n not in grouped] + [p for p in shared if p[1]])


def _draw_band(ax, steps, means, stds, color, label, **line) -> None:
    ax.plot(steps, means, color=color, label=label, **line)
    lower, upper = [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)]
    ax.fill_between(steps, lower, upper, color=color, alpha=0.2)


def write_plot(path: Path, results: dict) -> None:
    """Held-out greedy accuracy against step (mean, band ± std over seeds), then each mechanism metric likewise."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results["runs"]
    panel_list = _panels(sorted({k for m in runs for s in runs[m] for k in runs[m][s]["mechanisms"]}))
    panels = 1 + len(panel_list)
    cols = min(3, panels)
    rows = math.ceil(panels / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), squeeze=False)
    colors = {m: f"C{i}" for i, m in enumerate(results["methods"])}
    ax = axes[0][0]
    for method in results["methods"]:
        steps, means, stds = _band([runs[method][s]["curve"] for s in runs[method]])
        _draw_band(ax, steps, means, stds, colors[method], method, marker="o", markersize=3)
    ax.axhline(results["teacher_accuracy"], color="gray", linestyle="--", label="teacher")
    ax.set_title(f"{results['world']}: held-out greedy accuracy ({len(results['seeds'])} seeds)")
    ax.set_xlabel("optimizer step")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    for index, (title, names) in enumerate(panel_list, start=1):
        ax = axes[index // cols][index % cols]
        for method in results["methods"]:
            for name, style in zip(names, LINE_STYLES):
                series = [r["mechanisms"][name] for r in runs[method].values() if name in r["mechanisms"]]
                if series:
                    label = method if len(names) == 1 else f"{method}: {name.rsplit('/', 1)[-1]}"
                    _draw_band(ax, *_band(series), colors[method], label, linestyle=style, marker=".", markersize=4)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for index in range(panels, rows * cols):
        axes[index // cols][index % cols].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90, format="png")
    plt.close(fig)


def write_outputs(out: Path, stem: str, results: dict) -> list[Path]:
    """Write `<stem>.json`, `<stem>.md`, `<stem>.png` under `out`: each to a temporary name first, then all renamed."""
    add_statistics(results)
    out.mkdir(parents=True, exist_ok=True)
    targets = [out / f"{stem}.json", out / f"{stem}.md", out / f"{stem}.png"]
    temps = [t.with_name(f".{t.name}.tmp-{os.getpid()}") for t in targets]
    try:
        temps[0].write_text(json.dumps(results, indent=1, default=str) + "\n")
        temps[1].write_text(render_markdown(results, targets[2].name))
        write_plot(temps[2], results)
        for tmp, target in zip(temps, targets):
            os.replace(tmp, target)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
    return targets
