# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""The policy-gradient ("K1", Tinker/TRL style) form of on-policy distillation."""

from __future__ import annotations

import torch


def k1_advantage(student_logp: torch.Tensor, teacher_logp: torch.Tensor) -> torch.Tensor:
    """Per-token advantage `A_t = sg(log p_T(y_t) − log p_S(y_t))`, i.e. minus the k1 estimate. `(B, T) -> (B, T)`."""
    return (teacher_logp - student_logp).detach()


def k1_policy_gradient_loss(
    student_logp: torch.Tensor,
    teacher_logp: torch.Tensor,
    old_student_logp: torch.Tensor | None = None,
    importance_clip: float | None = None,
) -> torch.Tensor:
    """Per-token K1 loss `ℓ_t = −A_t · w_t · log p_S(y_t)`. `(B, T) -> (B, T)`; reduce with a masked global mean.

    `A_t` is [`k1_advantage`]. Without `old_student_logp` the weight is `w_t = 1`. With it (the sampling policy's
    log-probs, e.g. from vLLM), `w_t = sg(min(p_S/p_old, importance_clip))` corrects for the gap between the sampler
    and the trained policy (truncated importance sampling, TRL GRPO's `token_truncate`); a NaN `old_student_logp`
    (a token the sampler did not write, e.g. a teacher prefix) has `w_t = 1`. The gradient of `Σ ℓ_t` equals the
    gradient of the k1 reverse-KL estimate's policy gradient: `−Σ_t A_t ∇ log p_S(y_t)`.
    """
    advantage = k1_advantage(student_logp, teacher_logp)
    if old_student_logp is not None:
        old = old_student_logp.to(student_logp.dtype)
        weight = torch.exp(student_logp.detach() - old)
        if importance_clip is not None:
            weight = weight.clamp(max=importance_clip)
        advantage = advantage * torch.where(old.isnan(), torch.ones_like(weight), weight)
    return -advantage * student_logp
