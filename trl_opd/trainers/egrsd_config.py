# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""Configuration of [`EGRSDTrainer`]: entropy-guided reinforced self-distillation (EGRSD / CL-EGRSD)."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import GRPOConfig

from ..runtime import CPUSafeConfigMixin
from ..teacher import SELF_TEACHER_MARGIN, SELF_TEACHER_NLL_SHARE
from .prompts import PromptLimitConfigMixin


EGRSD_SELF_TEACHER_KINDS = ("frozen", "live")
GATE_NORMALIZATIONS = ("mean", "none")
GATE_TAUS = ("median", "mean")
WEIGHT_NORMALIZATIONS = ("none", "rollout")
TEACHER_ROLLOUTS = ("all", "penalized")
MAGNITUDE_TRUSTS = ("none", "rank")
EGRSD_SELF_TEACHER_CHECKS = ("fallback", "warn", "error", "off")


@dataclass
class EGRSDConfig(CPUSafeConfigMixin, PromptLimitConfigMixin, GRPOConfig):
    r"""
    Configuration for [`EGRSDTrainer`]: TRL's [`~trl.GRPOConfig`] plus the EGRSD token weighting (arXiv 2605.13255).

    Each completion token's advantage is `Â_t = A_i · m_t · g_t`: the group-normalised verifiable reward `A_i`, the
    teacher/student likelihood-ratio magnitude `m_t = clip(exp(sign(A_i)·Δ_t), 1−ε_w, 1+ε_w)` and the teacher-entropy
    gate `g_t = g_min + (1−g_min)·exp(−H_t/τ_H)` (`τ_H` the batch median of the teacher entropy). The teacher is the
    student's own weights seeing the reference solution (privileged context), frozen at initialisation by default.
    `entropy_lookahead > 0` is CL-EGRSD: the gate reads the minimum teacher entropy over the next `L` tokens.

    Reductions: `g_min=1` is RLSD; `g_min=1` with `epsilon_w=0` is plain GRPO (`trl.GRPOTrainer`), exactly.

    On a machine without a GPU, `bf16` and gradient checkpointing are switched off (one log line).
    """

    g_min: float = field(
        default=0.2,
        metadata={
            "help": "Floor of the teacher-entropy gate `g = g_min + (1 - g_min) exp(-H / tau_H)`, in [0, 1]; "
            "1 switches the gate off (RLSD)."
        },
    )
    epsilon_w: float = field(
        default=0.2,
        metadata={
            "help": "Clip range of the likelihood-ratio magnitude `clip(exp(sign(A) Δ), 1 - ε_w, 1 + ε_w)`, in [0, 1]; "
            "0 switches the magnitude off (with `g_min: 1`, plain GRPO)."
        },
    )
    delta_centering: str = field(
        default="none",
        metadata={
            "help": "`none`: the magnitude reads `Δ = log p_T − log p_S` as is (RLSD). `mean`: minus its mean over the "
            "loss tokens of the global batch, so a teacher that is uniformly less sure than the student (e.g. a "
            "self-teacher that cannot use the reference) does not shrink every rewarded token to `1 − ε_w` and grow "
            "every penalised one to `1 + ε_w`.",
            "choices": ["none", "mean"],
        },
    )
    entropy_lookahead: int = field(
        default=0,
        metadata={
            "help": "CL-EGRSD causal lookahead `L` (tokens): the gate uses the minimum teacher entropy over "
            "`[t, t + L]` within the rollout. 0 is EGRSD; `method: cl-egrsd` sets 32."
        },
    )
    gate_normalization: str = field(
        default="mean",
        metadata={
            "help": "`mean`: divide the gate by its mean over the loss tokens of the global batch, so it reweights "
            "tokens without changing the update's overall size (a raw gate has mean ≤ ~0.75 and shrinks the step, "
            "which confounds gating with a lower learning rate); `none`: the raw gate, as written in the paper.",
            "choices": list(GATE_NORMALIZATIONS),
        },
    )
    weight_normalization: str = field(
        default="none",
        metadata={
            "help": "`rollout`: divide each token's teacher weight `m_t g_t` by its mean over the rollout's loss "
            "tokens, so the verifiable reward alone decides how far each rollout moves (its summed advantage is "
            "GRPO's) and the teacher only decides which of its tokens carry it; a teacher that is uniformly less "
            "sure than the student, or a gate that is small everywhere, then changes nothing. Replaces "
            "`gate_normalization` (moot then); the magnitude is computed at generation (one no-grad student "
            "forward). `none`: the weights as they are (RLSD's and the paper's form).",
            "choices": list(WEIGHT_NORMALIZATIONS),
        },
    )
    gate_tau: str = field(
        default="median",
        metadata={
            "help": "The gate's entropy scale `tau_H` over the loss tokens of the global batch: `median` (the paper's; "
            "half the tokens are then 'uncertain' by construction, even when the teacher is near-certain on almost "
            "all of them) or `mean` (dominated by the few high-entropy tokens, so only those are gated down).",
            "choices": list(GATE_TAUS),
        },
    )
    teacher_rollouts: str = field(
        default="all",
        metadata={
            "help": "Which rollouts take the teacher's token weights `m_t g_t`. `all`: every one (RLSD's and the "
            "paper's form). `penalized`: only those with `A_i < 0`, where the teacher says which tokens to blame; "
            "a rewarded rollout keeps GRPO's uniform `A_i` on every token, since each of its tokens led to a right "
            "answer, including those where the student took a valid path the reference did not (the gate's mean "
            "is then taken over the penalised rollouts' tokens).",
            "choices": list(TEACHER_ROLLOUTS),
        },
    )
    magnitude_trust: str = field(
        default="none",
        metadata={
            "help": "`rank`: each step, scale `ε_w` by `max(0, D)`, the self-teacher's agreement with the reward: "
            "Somers' `D` (`2·AUC − 1`) of the rollouts' mean `Δ`, rewarded (`A_i > 0`) against penalised (`A_i < 0`) "
            "rollouts of the global batch (logged as `egrsd/magnitude_trust`). A self-teacher whose `Δ` ranks the "
            "rollouts no better than chance leaves GRPO's advantages (the gate aside); one that ranks them as the "
            "reward does keeps the full magnitude. The magnitude is then computed at generation (one no-grad "
            "student forward). `none`: `ε_w` as set (RLSD's and the paper's form).",
            "choices": list(MAGNITUDE_TRUSTS),
        },
    )
    teacher_collapse_logp: float | None = field(
        default=None,
        metadata={
            "help": "Guard against the privileged self-teacher's collapse: after the first sampled token whose teacher "
            "log-prob is below this (e.g. -6.9 for p_T < 1e-3: the teacher has stopped following the student's path "
            "and goes back to the reference's), the rest of the rollout keeps its plain GRPO advantage A_i (magnitude "
            "and gate 1) instead of the teacher's token weights. None: off."
        },
    )
    self_teacher: str = field(
        default="frozen",
        metadata={
            "help": "Which weights the self-teacher uses: `frozen` (the initial weights: the PEFT adapter switched "
            "off, or a frozen copy without PEFT) or `live` (the current weights, no gradient).",
            "choices": list(EGRSD_SELF_TEACHER_KINDS),
        },
    )

    self_teacher_check: str = field(
        default="fallback",
        metadata={
            "help": "At the start of training, score the reference solutions of the first `self_teacher_check_rows` "
            "training rows under the self-teacher with no and with the full reference in its prompt (logged as "
            "`egrsd/self_teacher_logp_none|full`). If the reference does not raise the mean log-prob per solution "
            f"token by more than {SELF_TEACHER_MARGIN} nats, nor remove {SELF_TEACHER_NLL_SHARE:.0%} of its "
            "negative log-likelihood, the teacher cannot use it and its token weights are "
            "noise: `fallback` (default) warns in one line and trains as plain GRPO (every weight 1, the teacher no "
            "longer runs); `warn` warns and keeps the teacher's weights (the paper's behaviour); `error` stops "
            "before any optimizer step; `off` skips the check. Run only when the teacher runs.",
            "choices": list(EGRSD_SELF_TEACHER_CHECKS),
        },
    )
    self_teacher_check_rows: int = field(
        default=8, metadata={"help": "Training rows the self-teacher check scores (>= 1; the first ones)."}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.self_teacher_check not in EGRSD_SELF_TEACHER_CHECKS:
            raise ValueError(
                f"self_teacher_check must be one of {EGRSD_SELF_TEACHER_CHECKS}, got {self.self_teacher_check!r}"
            )
        if self.self_teacher_check_rows < 1:
            raise ValueError(f"self_teacher_check_rows must be >= 1, got {self.self_teacher_check_rows}")
        if not 0.0 <= self.g_min <= 1.0:
            raise ValueError(f"g_min must be in [0, 1], got {self.g_min}")
        if not 0.0 <= self.epsilon_w <= 1.0:
            raise ValueError(f"epsilon_w must be in [0, 1], got {self.epsilon_w}")
        if self.delta_centering not in ("none", "mean"):
            raise ValueError(f"delta_centering must be 'none' or 'mean', got {self.delta_centering!r}")
        if self.entropy_lookahead < 0:
            raise ValueError(f"entropy_lookahead must be >= 0 tokens, got {self.entropy_lookahead}")
        if self.gate_normalization not in GATE_NORMALIZATIONS:
            raise ValueError(
                f"gate_normalization must be one of {GATE_NORMALIZATIONS}, got {self.gate_normalization!r}"
            )
        if self.weight_normalization not in WEIGHT_NORMALIZATIONS:
            raise ValueError(
                f"weight_normalization must be one of {WEIGHT_NORMALIZATIONS}, got {self.weight_normalization!r}"
            )
        if self.teacher_rollouts not in TEACHER_ROLLOUTS:
            raise ValueError(f"teacher_rollouts must be one of {TEACHER_ROLLOUTS}, got {self.teacher_rollouts!r}")
        if self.magnitude_trust not in MAGNITUDE_TRUSTS:
            raise ValueError(f"magnitude_trust must be one of {MAGNITUDE_TRUSTS}, got {self.magnitude_trust!r}")
        if self.gate_tau not in GATE_TAUS:
            raise ValueError(f"gate_tau must be one of {GATE_TAUS}, got {self.gate_tau!r}")
        if self.teacher_collapse_logp is not None and not self.teacher_collapse_logp <= 0.0:
            raise ValueError(f"teacher_collapse_logp is a log-probability (<= 0), got {self.teacher_collapse_logp}")
        if self.self_teacher not in EGRSD_SELF_TEACHER_KINDS:
            raise ValueError(f"self_teacher must be one of {EGRSD_SELF_TEACHER_KINDS}, got {self.self_teacher!r}")
