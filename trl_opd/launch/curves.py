# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""`training_curves.png`: the loss and every metric a method logs, against the step, from `trainer.state.log_history`."""

from __future__ import annotations

import math
import os
from pathlib import Path


# Bookkeeping that is no curve.
_SKIP = {"epoch", "step", "total_flos", "train_runtime", "train_samples_per_second", "train_steps_per_second"}
_SKIP |= {"num_tokens", "step_time", "train_loss"}
_SKIP |= {f"completions/{k}_length" for k in ("min", "max", "min_terminated", "max_terminated", "mean_terminated")}
# Panels after the method's own metrics: the optimizer's, then evals, then generation statistics.
_GENERIC = ("learning_rate", "grad_norm")
MAX_PANELS = 16


def curve_series(log_history: list[dict]) -> dict[str, tuple[list[int], list[float]]]:
    """`{metric: (steps, values)}` for every finite numeric metric of the log, `loss` first."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    for entry in log_history:
        step = entry.get("step")
        if step is None:
            continue
        for key, value in entry.items():
            if key in _SKIP or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if not math.isfinite(value):
                continue
            steps, values = series.setdefault(key, ([], []))
            steps.append(int(step))
            values.append(float(value))

    def rank(key: str) -> tuple:
        group = 0 if key == "loss" else 2 if key in _GENERIC else 3 if key.startswith("eval/") else 1
        return (4 if key.startswith("completions/") else group, key)

    ordered = sorted(series, key=rank)
    return {key: series[key] for key in ordered[:MAX_PANELS]}


def plot_training_curves(log_history: list[dict], path: str | os.PathLike, title: str | None = None) -> Path | None:
    """Write the curves to `path` (PNG); `None` (and no file) when the log has no metric."""
    series = curve_series(log_history)
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(4, len(series))
    rows = math.ceil(len(series) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3 * rows), squeeze=False)
    for axis, (key, (steps, values)) in zip(axes.flat, series.items()):
        axis.plot(steps, values, marker="o" if len(steps) < 20 else None, markersize=3)
        axis.set_title(key, fontsize=9)
        axis.set_xlabel("step", fontsize=8)
        axis.tick_params(labelsize=7)
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(series) :]:
        axis.set_visible(False)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    figure.savefig(tmp, dpi=100)
    plt.close(figure)
    os.replace(tmp, path)
    return path


__all__ = ["curve_series", "plot_training_curves"]
