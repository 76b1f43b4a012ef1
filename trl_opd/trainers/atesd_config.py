# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""Configuration of [`ATESDTrainer`]: self-distillation with a learned teacher-exposure controller (and OPSD)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..controllers.exposure import EXPOSURE_POLICIES
from ..ops.atesd import beta_raw_for
from ..teacher import SELF_TEACHER_MARGIN, SELF_TEACHER_NLL_SHARE
from .opd_config import OPDConfig


SELF_TEACHER_CHECKS = ("warn", "error", "off")


@dataclass
class ATESDConfig(OPDConfig):
    r"""
    Configuration for [`ATESDTrainer`] (Adaptive Teacher Exposure for Self-Distillation, arXiv 2605.11458).

    [`OPDConfig`] with a self-teacher (the frozen initial model) that sees the problem plus the first `⌊α·m⌋`
    reasoning segments of the reference solution and its boxed answer; the student sees only the problem and is
    trained with the per-token forward KL (`beta=0.0`). A small Beta-policy controller chooses `α`.

    `exposure_policy: fixed` with `alpha: 1.0` is OPSD (the teacher sees the full reference); `random` is the
    paper's random-exposure ablation. Numeric controller defaults are **[design]** (the paper's were not available).

    Before the first optimizer step the self-teacher is checked (`self_teacher_check`): if the full reference does
    not raise the log-prob it gives the reference answers, self-distillation would train on noise.
    """

    beta: float = field(
        default=0.0,
        metadata={
            "help": "Generalized JSD interpolation of the per-token loss: 0.0 (default) is the forward KL "
            "KL(p_T || p_S) of ATESD/OPSD, 1.0 the reverse KL."
        },
    )
    teacher_collapse_logp: float | None = field(
        default=-0.69,
        metadata={
            "help": "Guard against the privileged teacher's collapse: after the first student token whose teacher "
            "log-prob is below this, the rest of the completion gets weight `teacher_collapse_weight`, or, with "
            "`collapse_repair`, is rewritten by the teacher. ATESD's default -0.69 (p_T < 0.5: the first token the "
            "teacher does not favour) beat -6.9 (p_T < 1e-3, the teacher has gone back to the reference's path) on "
            "every seed of two lab worlds (docs/methods.md). None: off; the `opsd` preset turns it off (OPSD as "
            "published)."
        },
    )
    collapse_repair: bool = field(
        default=True,
        metadata={
            "help": "ATESD's default: where the privileged teacher collapses (`teacher_collapse_logp`), it writes the "
            "rest of the completion greedily from the student's tokens before, and the loss covers both (see "
            "[`OPDConfig`]). On the lab's `privileged` world it is what lifts self-distillation (docs/methods.md). "
            "The `opsd` preset turns it off. Not under ZeRO-3 or FSDP (the recipes launch with ZeRO-2)."
        },
    )
    privileged_context: bool = field(
        default=True,
        metadata={"help": "The teacher sees (part of) the reference solution. Must stay true for ATESD/OPSD."},
    )
    exposure_policy: str = field(
        default="learned",
        metadata={
            "help": "How the exposure α is chosen: `learned` (the Beta-policy controller), `fixed` (always `alpha`; "
            "OPSD with alpha 1.0) or `random` (uniform in [alpha_min, alpha_max], held hold_steps steps).",
            "choices": list(EXPOSURE_POLICIES),
        },
    )
    alpha: float = field(
        default=1.0,
        metadata={"help": "Exposure of the `fixed` policy (share of reasoning segments the teacher sees), in [0, 1]."},
    )
    reference_delimiter: str = field(
        default="\n\n",
        metadata={
            "help": "What separates the reference's reasoning segments for partial exposure: a blank line (default; "
            'any whitespace between the two newlines) or another string, e.g. "\\n" for one step a line.'
        },
    )
    alpha_min: float = field(default=0.05, metadata={"help": "Lower clip of sampled exposures, in [0, 1]."})
    alpha_max: float = field(default=1.0, metadata={"help": "Upper clip of sampled exposures, in [alpha_min, 1]."})
    hold_steps: int = field(default=4, metadata={"help": "H: optimizer steps a sampled α is held."})
    reward_horizon: int = field(
        default=4, metadata={"help": "L: optimizer steps after a decision that its reward looks at."}
    )
    discount: float = field(
        default=1.0,
        metadata={
            "help": "γ: discount of the controller's reward, in (0, 1]. At 1 the reward is the probe's net change over "
            "the window (ℓ at the decision minus ℓ L steps later), so the probe runs only at the windows' ends, once "
            "per decision when hold_steps = reward_horizon, instead of at every step."
        },
    )
    lambda_gt: float = field(
        default=0.1,
        metadata={
            "help": "λ_gt: weight of the teacher-grounded term (log-prob the exposed teacher gives the "
            "reference answer on the probe set); 0 skips its computation."
        },
    )
    controller_batch: int = field(
        default=4, metadata={"help": "B: finished decisions per REINFORCE update of the controller (>= 2)."}
    )
    entropy_target: float = field(
        default=-0.5,
        metadata={
            "help": "Target differential entropy of the controller's Beta policy (<= 0; Beta(1,1) has 0); "
            "only entropy above it is penalised. [design]"
        },
    )
    entropy_coef: float = field(default=0.01, metadata={"help": "Weight of the excess-entropy penalty. [design]"})
    probe_size: int = field(
        default=8,
        metadata={
            "help": "Training rows in the fixed probe set whose reference-answer NLL under the student gives "
            "the controller's learning-progress reward. [design]"
        },
    )
    probe_target: str = field(
        default="answer",
        metadata={
            "help": "What the probe scores: `answer` (default; the NLL of the boxed answer after `The final answer is "
            "\\boxed{`, with no reasoning before it) or `solution` (the NLL per token of each probe row's whole "
            "reference solution after the problem: how well the student models correct reasoning). On the lab's "
            "`privileged` world the answer probe sat near 7.7 nats whatever the student learned; the solution probe "
            "tracked training and led the controller to high exposure, yet ended lower (3 seeds): see "
            "docs/methods.md.",
            "choices": ["answer", "solution"],
        },
    )
    controller_lr: float = field(
        default=0.1,
        metadata={
            "help": "SGD learning rate of the controller. [design] Plain SGD: with Adam the policy walked to α near 0 "
            "or 1 under a reward of pure noise; see docs/methods.md."
        },
    )
    controller_hidden_size: int = field(
        default=32, metadata={"help": "Hidden width of the controller's MLP. [design]"}
    )
    alpha_prior_mean: float | None = field(
        default=0.9,
        metadata={
            "help": "Where the learned policy starts: Beta(alpha_prior_mean, alpha_prior_concentration) at every "
            "state (output layer weights 0, bias set); 0.9 starts near OPSD's full exposure, from where the policy "
            "learns either way from a clean reward, but under a noisy probe it explores too narrowly (about ±0.07) to "
            "learn down within a few hundred steps (docs/methods.md). None: a random "
            "initialisation (Beta mean near 0.55), which learns both ways but spends early training at partial "
            "exposure, where the lab's self-teacher repairs badly."
        },
    )
    alpha_prior_concentration: float = field(
        default=20.0,
        metadata={"help": "Concentration a+b of the starting Beta when `alpha_prior_mean` is set (both a, b > 1)."},
    )
    controller_ema_decay: float = field(
        default=0.9, metadata={"help": "Decay of the controller's state EMAs (α, loss, mismatch, probe NLL). [design]"}
    )
    self_teacher_check: str = field(
        default="warn",
        metadata={
            "help": "At the start of training, score the reference answers of the first `self_teacher_check_rows` "
            "training rows under the teacher with no, half (α=0.5) and the full reference in its prompt (logged as "
            "`atesd/self_teacher_logp_none|partial|full`). If the full reference does not raise the mean log-prob "
            f"per answer token by more than {SELF_TEACHER_MARGIN} nats, nor remove {SELF_TEACHER_NLL_SHARE:.0%} of "
            "its negative log-likelihood, the reference does not help the teacher "
            "and self-distillation trains on noise: `warn` (default) logs one warning line, `error` stops before "
            "any optimizer step, `off` skips the check (no extra forward pass).",
            "choices": list(SELF_TEACHER_CHECKS),
        },
    )
    self_teacher_check_rows: int = field(
        default=8, metadata={"help": "Training rows the self-teacher check scores (>= 1; the first ones)."}
    )

    def __post_init__(self):
        super().__post_init__()
        self.check_exposure()

    def controller_kwargs(self) -> dict:
        """The [`~trl_opd.controllers.exposure.ExposureController`] arguments this config sets (the trainer's one
        mapping from config fields to the controller)."""
        return {
            "policy": self.exposure_policy,
            "alpha": self.alpha,
            "alpha_min": self.alpha_min,
            "alpha_max": self.alpha_max,
            "hold_steps": self.hold_steps,
            "reward_horizon": self.reward_horizon,
            "discount": self.discount,
            "lambda_gt": self.lambda_gt,
            "batch_decisions": self.controller_batch,
            "entropy_target": self.entropy_target,
            "entropy_coef": self.entropy_coef,
            "lr": self.controller_lr,
            "hidden_size": self.controller_hidden_size,
            "ema_decay": self.controller_ema_decay,
            "prior_mean": self.alpha_prior_mean,
            "prior_concentration": self.alpha_prior_concentration,
            "seed": self.seed,
        }

    def check_exposure(self) -> None:
        """Raise one clear `ValueError` for an invalid exposure/controller setting. Also run by the trainer, since a
        config can be changed after it was built."""
        if self.probe_target not in ("solution", "answer"):
            raise ValueError(f"probe_target must be 'solution' or 'answer', got {self.probe_target!r}")
        if self.exposure_policy not in EXPOSURE_POLICIES:
            raise ValueError(f"exposure_policy must be one of {EXPOSURE_POLICIES}, got {self.exposure_policy!r}")
        for name in ("alpha", "alpha_min", "alpha_max"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not self.reference_delimiter:
            raise ValueError("reference_delimiter must not be empty")
        if self.alpha_min > self.alpha_max:
            raise ValueError(f"alpha_min ({self.alpha_min}) must not exceed alpha_max ({self.alpha_max})")
        if not self.privileged_context:
            raise ValueError("ATESD/OPSD needs privileged_context=True: the teacher sees the reference solution.")
        for name, low in (
            ("hold_steps", 1),
            ("reward_horizon", 1),
            ("controller_batch", 2),
            ("probe_size", 1),
            ("controller_hidden_size", 1),
        ):
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)}")
        if not 0.0 < self.discount <= 1.0:
            raise ValueError(f"discount must be in (0, 1], got {self.discount}")
        if not 0.0 <= self.controller_ema_decay < 1.0:
            raise ValueError(f"controller_ema_decay must be in [0, 1), got {self.controller_ema_decay}")
        for name in ("lambda_gt", "entropy_coef"):
            if getattr(self, name) < 0.0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.alpha_prior_mean is not None:
            beta_raw_for(self.alpha_prior_mean, self.alpha_prior_concentration)  # raises one clear ValueError
        if self.controller_lr <= 0.0:
            raise ValueError(f"controller_lr must be > 0, got {self.controller_lr}")
        if self.self_teacher_check not in SELF_TEACHER_CHECKS:
            raise ValueError(
                f"self_teacher_check must be one of {SELF_TEACHER_CHECKS}, got {self.self_teacher_check!r}"
            )
        if self.self_teacher_check_rows < 1:
            raise ValueError(f"self_teacher_check_rows must be >= 1, got {self.self_teacher_check_rows}")
