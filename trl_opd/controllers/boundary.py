# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""[`AdaptiveBoundary`]: MOTAB's safety boundary, a running quantile of recent segment stray scores."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from typing import Any

import numpy as np


class AdaptiveBoundary:
    r"""
    Running quantile of the most recent segment stray scores, with a warm-up during which the boundary is `+inf`.

    `τ = max(quantile_q(last `window` scores), floor)` (linear interpolation, as `numpy.quantile`; no floor when
    `floor` is None), or `+inf` while `step < warmup_steps`, while no score has been seen, or always when `fixed` is
    given (then `τ = fixed`).
    The buffer and counters are plain Python state, saved with [`state_dict`] and restored with [`load_state_dict`].

    Args:
        quantile (`float`): `q` in (0, 1).
        window (`int`): number of recent segment scores kept.
        warmup_steps (`int`): optimizer steps during which `τ = +inf` (scores are still collected).
        fixed (`float`, *optional*): a constant boundary that replaces the running quantile (e.g. `inf` to disable
            backtracking, or a hand-set value).
        floor (`float`, *optional*): the lowest the running quantile may go: a segment scoring at most `floor` is
            never a stray, however well the student does (the quantile alone flags `1 − q` of segments forever).
    """

    def __init__(
        self,
        quantile: float = 0.9,
        window: int = 4096,
        warmup_steps: int = 0,
        fixed: float | None = None,
        floor: float | None = None,
    ):
        if not 0.0 < quantile < 1.0:
            raise ValueError(f"quantile must be in (0, 1), got {quantile}")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        if floor is not None and math.isnan(floor):
            raise ValueError("floor must be a number or None, got nan")
        self.quantile, self.window, self.warmup_steps, self.fixed = quantile, window, warmup_steps, fixed
        self.floor = floor
        self.scores: deque[float] = deque(maxlen=window)
        self.num_segments = 0  # segment scores ever seen
        self.num_backtracks = 0  # segments ever discarded
        self.num_updates = 0  # rollout batches folded in

    def threshold(self, step: int) -> float:
        """The boundary `τ` to use for rollouts made at optimizer step `step`."""
        if self.fixed is not None:
            return float(self.fixed)
        if step < self.warmup_steps or not self.scores:
            return math.inf
        tau = float(np.quantile(np.fromiter(self.scores, dtype=np.float64), self.quantile))
        return tau if self.floor is None else max(tau, float(self.floor))

    def update(self, scores: Iterable[float], num_backtracks: int = 0) -> None:
        """Fold in the segment scores of one rollout batch (all processes) and its backtrack count."""
        finite = [float(s) for s in scores if math.isfinite(s)]
        self.scores.extend(finite)
        self.num_segments += len(finite)
        self.num_backtracks += int(num_backtracks)
        self.num_updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {
            "quantile": self.quantile,
            "window": self.window,
            "warmup_steps": self.warmup_steps,
            "fixed": self.fixed,
            "floor": self.floor,
            "scores": list(self.scores),
            "num_segments": self.num_segments,
            "num_backtracks": self.num_backtracks,
            "num_updates": self.num_updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the buffer and counters. The configured quantile, window, warm-up, fixed value and floor are kept;
        the restored buffer is cut to the current window."""
        self.scores = deque(state["scores"], maxlen=self.window)
        self.num_segments = int(state["num_segments"])
        self.num_backtracks = int(state["num_backtracks"])
        self.num_updates = int(state["num_updates"])
