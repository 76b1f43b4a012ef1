# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""Configuration of [`OPDTrainer`], the on-policy distillation base every DistillationTrainer-based method extends."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import DistillationConfig

from ..runtime import CPUSafeConfigMixin, launched_sharded
from ..teacher import QUANTIZATION_CHOICES, SELF_TEACHER_KINDS
from .prompts import PromptLimitConfigMixin


@dataclass
class OPDConfig(CPUSafeConfigMixin, PromptLimitConfigMixin, DistillationConfig):
    r"""
    Configuration for [`OPDTrainer`]: TRL's [`~trl.DistillationConfig`] plus the shared teacher layer.

    With the defaults it is `trl.DistillationTrainer`'s objective exactly (generalized JSD with `beta`). Added:
    the K1 policy-gradient form of the loss, a teacher with its own chat-template settings or quantisation, and a
    self-teacher (the student's own weights) that can see the reference solution as privileged context.

    On a machine without a GPU, `bf16` and gradient checkpointing are switched off (one log line).
    """

    _VALID_DICT_FIELDS = DistillationConfig._VALID_DICT_FIELDS + ["teacher_chat_template_kwargs"]

    divergence: str = field(
        default="jsd",
        metadata={
            "help": "Per-token objective on student tokens: `jsd` (generalized JSD with `beta`, as TRL's "
            "DistillationTrainer: 0 forward KL, 1 reverse KL) or `k1` (policy-gradient form "
            "`-sg(log p_T(y) - log p_S(y)) log p_S(y)`).",
            "choices": ["jsd", "k1"],
        },
    )
    teacher_chat_template_kwargs: dict | str | None = field(
        default=None,
        metadata={
            "help": 'Chat-template kwargs for the teacher\'s prompt, e.g. `{"enable_thinking": true}`; None uses the '
            "student's `chat_template_kwargs`."
        },
    )
    teacher_quantization: str | None = field(
        default=None,
        metadata={
            "help": "Load the external teacher in `4bit` (NF4) or `8bit` with bitsandbytes, independently of the "
            "student.",
            "choices": list(QUANTIZATION_CHOICES),
        },
    )
    self_teacher: str = field(
        default="frozen",
        metadata={
            "help": "When no teacher checkpoint is given, the teacher is the student's own weights: `frozen` "
            "(initial weights; the PEFT adapter switched off, or a frozen copy), `live`, or `ema`.",
            "choices": list(SELF_TEACHER_KINDS),
        },
    )
    teacher_ema_decay: float = field(
        default=0.99, metadata={"help": "Decay of the EMA self-teacher (`self_teacher: ema`)."}
    )
    teacher_collapse_logp: float | None = field(
        default=None,
        metadata={
            "help": "Guard for self-distillation with privileged context: after the first student token whose teacher "
            "log-prob is below this (e.g. -6.9 for p_T < 1e-3: the teacher no longer follows the student's path, it "
            "goes back to the reference's), the rest of the completion gets weight `teacher_collapse_weight`. "
            "None: off (OPSD as published)."
        },
    )
    teacher_collapse_weight: float = field(
        default=0.0,
        metadata={"help": "Weight of the tokens after a collapse (`teacher_collapse_logp`), in [0, 1]; 0 drops them."},
    )
    collapse_repair: bool = field(
        default=False,
        metadata={
            "help": "With `teacher_collapse_logp`, in training: where the teacher collapses, it rewrites the rest of "
            "the completion greedily from the student's tokens before that point and its own prompt, and the loss "
            "covers the student's prefix and the teacher's continuation (instead of `teacher_collapse_weight` on the "
            "student's later tokens). One extra teacher forward and a teacher generation per batch. Needs the JSD "
            "divergence; not with tools, ZeRO-3 or FSDP (TrOPD's repair runs there)."
        },
    )
    privileged_context: bool = field(
        default=False,
        metadata={
            "help": "Show the teacher the reference solution (`solution` column) as privileged context (OPSD style); "
            "the student sees only the problem."
        },
    )
    vllm_importance_sampling_correction: bool = field(
        default=False,
        metadata={
            "help": "K1 with vLLM rollouts (`use_vllm`): weight each sampled token's K1 loss by the truncated "
            "importance ratio `min(p_train(y)/p_vLLM(y), vllm_importance_sampling_clip_max)` (detached) against the "
            "sampler's log-probs, for the gap between vLLM's and the trainer's numerics (TRL GRPO's "
            "`token_truncate`). Applies where a K1 loss is used: `divergence: k1`, TrOPD's trust-region tokens with "
            "`trust_region_loss: k1`. Off: no correction (TRL's DistillationTrainer has none)."
        },
    )
    vllm_importance_sampling_clip_max: float = field(
        default=3.0,
        metadata={"help": "Upper bound of the importance ratio (`vllm_importance_sampling_correction`)."},
    )
    resume_ignore_method_state: bool = field(
        default=False,
        metadata={
            "help": "Experts only: resume from a checkpoint whose method state (MOTAB boundary, ATESD controller, EMA "
            "teacher) is missing, unreadable or of another method or configuration, starting that state afresh. "
            "Off: such a checkpoint is refused."
        },
    )

    @property
    def teacher_tokens_get_divergence(self) -> bool:
        """Whether teacher-written completion tokens (`collapse_repair`) are trained with the per-position JSD_β, which
        the repair needs: with `divergence: k1` they would be scored as if the student had sampled them."""
        return self.divergence == "jsd"

    @property
    def collapse_repair_supports_sharding(self) -> bool:
        """Whether `collapse_repair` runs under ZeRO-3 / FSDP: not here (greedy `generate` on whole weights); TrOPD
        writes its repairs through its generation layer, which does."""
        return False

    def __post_init__(self):
        super().__post_init__()
        if self.teacher_collapse_logp is not None and self.teacher_collapse_logp > 0:
            raise ValueError(f"teacher_collapse_logp is a log-probability (<= 0), got {self.teacher_collapse_logp}")
        if not 0.0 <= self.teacher_collapse_weight <= 1.0:
            raise ValueError(f"teacher_collapse_weight must be in [0, 1], got {self.teacher_collapse_weight}")
        if self.divergence not in ("jsd", "k1"):
            raise ValueError(f"divergence must be 'jsd' or 'k1', got {self.divergence!r}")
        sharding = launched_sharded()
        if self.collapse_repair and sharding and not self.collapse_repair_supports_sharding:
            raise ValueError(
                f"collapse_repair is not supported under {sharding} (the teacher writes its repair with whole "
                "weights): launch with ddp or zero2 (recipes/accelerate_configs/), or set collapse_repair: false."
            )
        if self.collapse_repair and (self.teacher_collapse_logp is None or not self.teacher_tokens_get_divergence):
            raise ValueError(
                "collapse_repair needs teacher_collapse_logp (where the teacher collapses) and divergence 'jsd' (a "
                f"per-position loss), got teacher_collapse_logp={self.teacher_collapse_logp}, "
                f"divergence={self.divergence!r}"
            )
        if self.teacher_quantization not in QUANTIZATION_CHOICES:
            raise ValueError(
                f"teacher_quantization must be one of {QUANTIZATION_CHOICES}, got {self.teacher_quantization!r}"
            )
        if self.self_teacher not in SELF_TEACHER_KINDS:
            raise ValueError(f"self_teacher must be one of {SELF_TEACHER_KINDS}, got {self.self_teacher!r}")
        if self.vllm_importance_sampling_clip_max <= 0:
            raise ValueError(
                f"vllm_importance_sampling_clip_max must be > 0, got {self.vllm_importance_sampling_clip_max}"
            )
        if not 0.0 <= self.teacher_ema_decay < 1.0:
            raise ValueError(f"teacher_ema_decay must be in [0, 1), got {self.teacher_ema_decay}")
