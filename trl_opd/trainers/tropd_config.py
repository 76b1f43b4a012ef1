# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""Configuration of [`TrOPDTrainer`]: trust-region on-policy distillation (arXiv 2606.01249)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..ops.tropd import TRUST_MODES
from .opd_config import OPDConfig


TRUST_REGION_LOSSES = ("k1", "divergence")


@dataclass
class TrOPDConfig(OPDConfig):
    r"""
    Configuration for [`TrOPDTrainer`]: [`OPDConfig`] plus TrOPD's trust region, outlier loss and teacher-prefix
    guidance.

    The loss is `L = L_TR + lambda_out·L_OUT + lambda_off·L_OFF`: the paper's K1 policy-gradient loss
    (`trust_region_loss="k1"`, the default) or the dense JSD_`beta` (`"divergence"`) on student tokens
    inside the trust region (`min(p_T/p_S, 1) ≥ trust_threshold`, or a Bernoulli draw with `trust_mode="stochastic"`),
    the forward KL over the teacher's `outlier_top_k` tokens (with a tail bucket, or renormalised) on the other student tokens, and the
    teacher-forced divergence JSD_`beta` (forward KL with the default `beta=0`) on teacher-written prefix tokens.

    Guidance: with probability `p_guide(step)` a prompt starts from the first `rho(step)` share of a teacher rollout
    and the student continues; both decay linearly from `guidance_prob_start` / `guidance_rho_start` to 0 over the
    first `guidance_prob_decay_share` / `guidance_rho_decay_share` of training.

    Collapse repair (`teacher_collapse_logp`, `collapse_repair`, on by default): after the first student token the
    teacher all but rules out, the teacher samples the rest of the rollout, trained like a guidance prefix.

    With `trust_threshold=0`, `guidance_prob_start=0`, `teacher_collapse_logp=None` and `collapse_repair=False` it is
    the `opd` baseline: with `divergence="k1"` (the default in-region loss), or with `divergence="jsd"` and the same
    `beta` (`trust_region_loss="divergence"`).
    Defaults are the ones in `docs/methods.md` (the thresholds, weights and schedules are our design).
    """

    divergence: str = field(
        default="k1",
        metadata={
            "help": "The parent's field, not read by TrOPD's loss (its in-region loss is `trust_region_loss`); only "
            "`k1` is accepted.",
            "choices": ["k1"],
        },
    )
    beta: float = field(
        default=0.0,
        metadata={
            "help": "JSD_β of the teacher-forced loss on teacher-prefix tokens (and of the logged `divergence`): "
            "0.0 = forward KL (TrOPD's L_OFF), 1.0 = reverse KL."
        },
    )
    trust_region_loss: str = field(
        default="k1",
        metadata={
            "help": "Loss on student tokens inside the trust region: `k1` (the paper's K1 policy-gradient loss; the "
            "default: with the collapse repair it beat `divergence` on every seed of `arith` and tied on `mismatch` "
            "in the lab, see docs/methods.md) or `divergence` (the fused pass's dense JSD_`beta` over the "
            "vocabulary, the `opd` baseline's per-token loss). At `trust_threshold: 0` with guidance off TrOPD is "
            "`opd` with this loss.",
            "choices": list(TRUST_REGION_LOSSES),
        },
    )
    trust_mode: str = field(
        default="threshold",
        metadata={
            "help": "How the trust mask is drawn from the trust ratio `P_t = min(p_T(y_t)/p_S(y_t), 1)`: `threshold` "
            "(`P_t ≥ trust_threshold`) or `stochastic` (`Bernoulli(P_t)`).",
            "choices": list(TRUST_MODES),
        },
    )
    trust_threshold: float = field(
        default=1.0,
        metadata={
            "help": "δ in [0, 1]: a student token is trusted when `P_t ≥ δ`. 0 trusts every token (plain OPD), 1 "
            "only tokens the teacher likes at least as much as the student. Used with `trust_mode=threshold`."
        },
    )
    outlier_top_k: int = field(
        default=64,
        metadata={
            "help": "k of the outlier loss: forward KL over the teacher's top-k tokens (see `outlier_tail_bucket`). "
            "Must be in [1, vocabulary size]."
        },
    )
    outlier_tail_bucket: bool = field(
        default=True,
        metadata={
            "help": "Outlier loss over the teacher's top-k plus one bucket for the rest of the vocabulary, for both "
            "models (true), or renormalised over the top-k (false, the paper's form). Renormalised, the loss does not "
            "see the student's mass outside the top-k: a token the teacher rejects gets no gradient pushing it down."
        },
    )
    teacher_collapse_logp: float | None = field(
        default=-6.9,
        metadata={
            "help": "TrOPD's default -6.9 (p_T < 1e-3): a student token the teacher all but rules out ends the "
            "rollout's stay on the teacher's support; with `collapse_repair` the teacher writes the rest from there, "
            "otherwise the later tokens get weight `teacher_collapse_weight`. None: off (the paper's TrOPD)."
        },
    )
    collapse_repair: bool = field(
        default=True,
        metadata={
            "help": "TrOPD's default: where the rollout collapses (`teacher_collapse_logp`), the teacher continues it "
            "from the student's tokens before, sampled through the generation layer the guidance uses (transformers "
            "`generate`, also under ZeRO-3/FSDP, or the teacher's vLLM engine/server), and its tokens get the "
            "teacher-forced loss like a guidance prefix. In the lab it lifts TrOPD on `mismatch` and `arith` "
            "(docs/methods.md). Not with tools."
        },
    )
    lambda_out: float = field(default=1.0, metadata={"help": "Weight of the outlier loss L_OUT (≥ 0)."})
    lambda_off: float = field(default=1.0, metadata={"help": "Weight of the teacher-prefix loss L_OFF (≥ 0)."})
    guidance_prob_start: float = field(
        default=0.5,
        metadata={
            "help": "p_guide at step 0: probability that a prompt starts from a teacher prefix. 0 = no guidance."
        },
    )
    guidance_prob_decay_share: float = field(
        default=0.4,
        metadata={"help": "Share of training steps in (0, 1] over which p_guide decays linearly to 0."},
    )
    guidance_rho_start: float = field(
        default=0.5,
        metadata={"help": "ρ at step 0: share in [0, 1] of the teacher rollout given to the student as a prefix."},
    )
    guidance_rho_decay_share: float = field(
        default=0.4,
        metadata={"help": "Share of training steps in (0, 1] over which ρ decays linearly to 0."},
    )
    teacher_vllm_mode: str | None = field(
        default=None,
        metadata={
            "help": "With `use_vllm`, how guidance rollouts of the teacher are generated: `colocate` (a second "
            "in-process vLLM engine holding the teacher) or `server` (a `trl vllm-serve --model <teacher>` server). "
            "None uses `vllm_mode`.",
            "choices": [None, "colocate", "server"],
        },
    )
    teacher_vllm_server_base_url: str | None = field(
        default=None,
        metadata={
            "help": "Base URL of the teacher's vLLM server (`teacher_vllm_mode=server`), e.g. http://host:8001."
        },
    )
    teacher_vllm_server_port: int = field(
        default=8001, metadata={"help": "Port of the teacher's vLLM server when no base URL is given."}
    )
    teacher_vllm_group_port: int = field(
        default=51217, metadata={"help": "Weight-update group port of the teacher's vLLM server (never synced)."}
    )
    teacher_vllm_gpu_memory_utilization: float = field(
        default=0.3,
        metadata={"help": "GPU memory share of the colocated teacher vLLM engine (`teacher_vllm_mode=colocate`)."},
    )

    def __post_init__(self):
        super().__post_init__()
        checks = [
            (
                self.divergence == "k1",
                f"divergence is the parent's field, unused by TrOPD (whose in-region loss is trust_region_loss): it must "
                f"be 'k1', got {self.divergence!r}",
            ),
            (
                self.trust_region_loss in TRUST_REGION_LOSSES,
                f"trust_region_loss must be one of {TRUST_REGION_LOSSES}, got {self.trust_region_loss!r}",
            ),
            (self.trust_mode in TRUST_MODES, f"trust_mode must be one of {TRUST_MODES}, got {self.trust_mode!r}"),
            (0.0 <= self.trust_threshold <= 1.0, f"trust_threshold must be in [0, 1], got {self.trust_threshold}"),
            (self.outlier_top_k >= 1, f"outlier_top_k must be ≥ 1, got {self.outlier_top_k}"),
            (self.lambda_out >= 0.0, f"lambda_out must be ≥ 0, got {self.lambda_out}"),
            (self.lambda_off >= 0.0, f"lambda_off must be ≥ 0, got {self.lambda_off}"),
            (
                0.0 <= self.guidance_prob_start <= 1.0,
                f"guidance_prob_start must be in [0, 1], got {self.guidance_prob_start}",
            ),
            (
                0.0 <= self.guidance_rho_start <= 1.0,
                f"guidance_rho_start must be in [0, 1], got {self.guidance_rho_start}",
            ),
            (
                0.0 < self.guidance_prob_decay_share <= 1.0,
                f"guidance_prob_decay_share must be in (0, 1], got {self.guidance_prob_decay_share}",
            ),
            (
                0.0 < self.guidance_rho_decay_share <= 1.0,
                f"guidance_rho_decay_share must be in (0, 1], got {self.guidance_rho_decay_share}",
            ),
            (
                self.teacher_vllm_mode in (None, "colocate", "server"),
                f"teacher_vllm_mode must be None, 'colocate' or 'server', got {self.teacher_vllm_mode!r}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def collapse_repair_supports_sharding(self) -> bool:
        """TrOPD's repairs are sampled through the generation layer its guidance uses (ZeRO-3, FSDP and vLLM too)."""
        return True

    @property
    def teacher_tokens_get_divergence(self) -> bool:
        """TrOPD routes every teacher-written token (a guidance prefix or a `collapse_repair` continuation) to the
        teacher-forced JSD_`beta`, whatever the in-region loss."""
        return True

    @property
    def guidance_enabled(self) -> bool:
        """Whether any prompt can be guided by a teacher prefix."""
        return self.guidance_prob_start > 0.0 and self.guidance_rho_start > 0.0
