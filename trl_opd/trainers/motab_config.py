# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""Configuration of [`MOTABTrainer`]: monitored on-policy rollouts that backtrack when the student strays."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..ops.motab import MONITOR_SIGNALS, STRAY_REDUCTIONS
from .opd_config import OPDConfig


@dataclass
class MOTABConfig(OPDConfig):
    r"""
    Configuration for [`MOTABTrainer`] (MOTAB, arXiv 2605.19433; see docs/methods.md, section MOTAB).

    On top of [`OPDConfig`]: the student generates one reasoning segment at a time, the teacher scores each segment
    against an adaptive boundary (a running quantile of recent stray scores), a strayed segment is discarded and the
    teacher writes the next segment from the last safe state. The loss is `D_β` (`divergence`, `beta`) on student
    tokens and `λ_int · KL(p_T || p_S)` on teacher tokens. With the boundary at `+inf` (`fixed_boundary: .inf`) it is
    the `opd` objective exactly.

    Defaults follow the [design] choices in docs/methods.md: delimiter `"\n\n"`, 256 tokens per segment, signal
    `log_ratio`, quantile 0.9 over 4096 segments, 4 backtracks per rollout, `λ_int = 1`, `β = 0.5`.
    """

    beta: float = field(
        default=0.5,
        metadata={
            "help": "β of the generalized JSD on student tokens (0 forward KL, 1 reverse KL). MOTAB's default is 0.5."
        },
    )
    step_delimiter: str = field(
        default="\n\n",
        metadata={"help": "Text that ends a reasoning segment (the student stops after the token completing it)."},
    )
    max_segment_tokens: int = field(
        default=256, metadata={"help": "Longest segment, in tokens, when no delimiter or EOS comes first."}
    )
    monitor_signal: str = field(
        default="log_ratio",
        metadata={
            "help": "Per-token stray signal averaged over a segment: `log_ratio` (log p_S(y) - log p_T(y)), "
            "`teacher_nll` (-log p_T(y)) or `teacher_margin` (max_v log p_T(v) - log p_T(y)).",
            "choices": list(MONITOR_SIGNALS),
        },
    )
    stray_reduction: str = field(
        default="mean",
        metadata={
            "help": "How a segment's per-token signals make its stray score: `mean` (per-token average) or `max` (its "
            "worst token, independent of the segment's length; with `teacher_nll` and `fixed_boundary: 6.9`, a "
            "segment strays when the teacher gives one of its tokens p < 1e-3). Default `mean`: in the lab, `max` "
            "at that threshold lost to it on `arith`, where most segments hold such a token; see docs/methods.md. "
            "[design]",
            "choices": list(STRAY_REDUCTIONS),
        },
    )
    boundary_quantile: float = field(
        default=0.9, metadata={"help": "Quantile q in (0, 1) of recent segment stray scores used as the boundary τ."}
    )
    boundary_window: int = field(
        default=4096, metadata={"help": "Number of recent segment scores (all processes) the running quantile uses."}
    )
    boundary_warmup_steps: int = field(
        default=10,
        metadata={"help": "Optimizer steps during which τ = +inf (no backtracks); scores are still collected."},
    )
    fixed_boundary: float | None = field(
        default=None,
        metadata={
            "help": "A constant τ instead of the running quantile (`.inf` in YAML: never backtrack, the `opd` "
            "reduction). None: adaptive."
        },
    )
    boundary_floor: float | None = field(
        default=None,
        metadata={
            "help": "Lowest value of the adaptive τ, in the monitor signal's units (nats per token for log_ratio): a "
            "segment scoring at most this is never a stray. The running quantile alone declares 1 − q of the "
            "segments strays however well the student does. None: no floor. [design]"
        },
    )
    max_backtracks: int = field(
        default=4, metadata={"help": "Backtracks allowed per rollout; after that the student runs on unmonitored."}
    )
    lambda_int: float = field(
        default=1.0,
        metadata={"help": "λ_int: weight of the forward KL KL(p_T || p_S) on teacher-written (intervention) tokens."},
    )
    train_on_strayed: bool = field(
        default=False,
        metadata={
            "help": "Also apply D_β to the discarded segments, each under its own safe prefix (extra rows in the "
            "batch, only the discarded tokens in the loss). Off by default: on the lab's `long-chains` world it lost "
            "to leaving them out at two code versions (6 seed pairs: greedy +0.055, average@4 +0.113 for off); see "
            "docs/methods.md."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.collapse_repair:
            raise ValueError("collapse_repair is for self-distillation (OPSD/ATESD); MOTAB's teacher repairs strays.")
        if self.max_segment_tokens < 1:
            raise ValueError(f"max_segment_tokens must be >= 1, got {self.max_segment_tokens}")
        if not 0.0 < self.boundary_quantile < 1.0:
            raise ValueError(f"boundary_quantile must be in (0, 1), got {self.boundary_quantile}")
        if not self.step_delimiter:
            raise ValueError("step_delimiter must be a non-empty string")
        if self.monitor_signal not in MONITOR_SIGNALS:
            raise ValueError(f"monitor_signal must be one of {MONITOR_SIGNALS}, got {self.monitor_signal!r}")
        if self.stray_reduction not in STRAY_REDUCTIONS:
            raise ValueError(f"stray_reduction must be one of {STRAY_REDUCTIONS}, got {self.stray_reduction!r}")
        if self.boundary_window < 1:
            raise ValueError(f"boundary_window must be >= 1, got {self.boundary_window}")
        if self.boundary_warmup_steps < 0:
            raise ValueError(f"boundary_warmup_steps must be >= 0, got {self.boundary_warmup_steps}")
        if self.boundary_floor is not None and math.isnan(self.boundary_floor):
            raise ValueError("boundary_floor must be a number or None, got nan")
        if self.max_backtracks < 0:
            raise ValueError(f"max_backtracks must be >= 0, got {self.max_backtracks}")
        if self.lambda_int < 0:
            raise ValueError(f"lambda_int must be >= 0, got {self.lambda_int}")


def check_step_delimiter(tokenizer, delimiter: str) -> list[int]:
    """The token ids of `delimiter`; a `ValueError` when the tokenizer cannot encode it (it would never be seen)."""
    ids = tokenizer.encode(delimiter, add_special_tokens=False)
    decoded = tokenizer.decode(ids) if ids else ""
    if not ids or decoded != delimiter or tokenizer.unk_token_id in ids:
        raise ValueError(
            f"step_delimiter {delimiter!r} cannot be encoded by the tokenizer ({type(tokenizer).__name__}): it gives "
            f"ids {ids} that decode to {decoded!r}. Choose a delimiter the tokenizer round-trips, e.g. '\\n\\n'."
        )
    return ids
