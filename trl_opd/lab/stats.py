# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""Statistics over seeds: mean, sample standard deviation, and paired differences to a baseline method."""

from __future__ import annotations

import math


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def std(values: list[float]) -> float:
    """Sample standard deviation (n - 1); 0 for a single value."""
    if len(values) < 2:
        return 0.0
    m = mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def summarize(values: list[float]) -> dict:
    return {"values": list(values), "mean": mean(values), "std": std(values)}


def paired_differences(values: dict[int, float], baseline: dict[int, float]) -> dict:
    """`values[seed] - baseline[seed]` for the seeds both have, with their mean and standard deviation."""
    seeds = [s for s in values if s in baseline]
    diffs = {s: values[s] - baseline[s] for s in seeds}
    return {"per_seed": diffs, "mean": mean(list(diffs.values())), "std": std(list(diffs.values()))}
