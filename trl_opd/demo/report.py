# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""The demo's outputs: a markdown table and a PNG of held-out accuracy against step, written atomically."""

from __future__ import annotations

import os
from pathlib import Path

from ..launch.methods import METHODS


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def render_table(summary: dict) -> str:
    """Markdown: one row per method with accuracy before/after, best, mean completion length and wall time."""
    lines = [
        f"Held-out accuracy (greedy, boxed answer) after {summary['steps']} steps; "
        f"teacher {summary['teacher_accuracy']:.3f}.",
        "",
        "| method | paper | before | after | best | mean length | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, result in summary["methods"].items():
        accuracies = [acc for _, acc in result["curve"]]
        length = "" if result.get("mean_length") is None else f"{result['mean_length']:.1f}"
        lines.append(
            f"| {method} | {METHODS[method].paper} | {accuracies[0]:.3f} | {accuracies[-1]:.3f} | "
            f"{max(accuracies):.3f} | {length} | {result['seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def write_table(path: Path, summary: dict) -> str:
    table = render_table(summary)
    _atomic_write_text(path, table)
    return table


def write_plot(path: Path, summary: dict) -> None:
    """Held-out accuracy against step, one line per method, the teacher as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, result in summary["methods"].items():
        steps, accuracies = zip(*result["curve"])
        ax.plot(steps, accuracies, marker="o", label=method)
    ax.axhline(summary["teacher_accuracy"], color="gray", linestyle="--", label="teacher")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title("trl-opd demo: on-policy distillation of a tiny student")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
