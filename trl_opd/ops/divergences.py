# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""Per-token divergences between a student and a teacher next-token distribution, and sampled-token estimators.

Every function takes log-probabilities over the last (vocabulary) axis and returns one value per position:
`(..., V) -> (...)`. They are the dense references; the chunked, memory-bounded versions used in training live in
[`trl_opd.ops.chunked`] and are tested against these.
"""

from __future__ import annotations

import math

import torch


def forward_kl(teacher_logp: torch.Tensor, student_logp: torch.Tensor) -> torch.Tensor:
    """`KL(p_T || p_S) = Σ_v p_T(v) (log p_T(v) − log p_S(v))`. `(..., V), (..., V) -> (...)`."""
    return torch.sum(teacher_logp.exp() * (teacher_logp - student_logp), dim=-1)


def reverse_kl(teacher_logp: torch.Tensor, student_logp: torch.Tensor) -> torch.Tensor:
    """`KL(p_S || p_T) = Σ_v p_S(v) (log p_S(v) − log p_T(v))`. `(..., V), (..., V) -> (...)`."""
    return torch.sum(student_logp.exp() * (student_logp - teacher_logp), dim=-1)


def generalized_jsd(teacher_logp: torch.Tensor, student_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """Generalized Jensen-Shannon divergence as in TRL's GKD/Distillation trainers. `(..., V) x2 -> (...)`.

    `JSD_β = β KL(p_T || m) + (1 − β) KL(p_S || m)` with the mixture `m = (1 − β) p_S + β p_T`; the end points are
    taken as the plain KLs, as TRL does: `β = 0` is the forward `KL(p_T || p_S)` and `β = 1` the reverse
    `KL(p_S || p_T)`.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if beta == 0.0:
        return forward_kl(teacher_logp, student_logp)
    if beta == 1.0:
        return reverse_kl(teacher_logp, student_logp)
    log_m = torch.logaddexp(student_logp + math.log(1 - beta), teacher_logp + math.log(beta))
    kl_teacher = torch.sum(teacher_logp.exp() * (teacher_logp - log_m), dim=-1)
    kl_student = torch.sum(student_logp.exp() * (student_logp - log_m), dim=-1)
    return beta * kl_teacher + (1 - beta) * kl_student


def skew_kl(p_logp: torch.Tensor, q_logp: torch.Tensor, alpha: float) -> torch.Tensor:
    """Skew KL `KL(p || α p + (1 − α) q)`, bounded for `α > 0`. `(..., V) x2 -> (...)`.

    With `p = p_T, q = p_S` it is the skew forward KL; swap the arguments for the skew reverse KL. `α = 0` is the
    plain `KL(p || q)`.
    """
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"alpha must be in [0, 1), got {alpha}")
    log_mix = q_logp if alpha == 0.0 else torch.logaddexp(p_logp + math.log(alpha), q_logp + math.log(1 - alpha))
    return torch.sum(p_logp.exp() * (p_logp - log_mix), dim=-1)


def k1_estimator(student_token_logp: torch.Tensor, teacher_token_logp: torch.Tensor) -> torch.Tensor:
    """k1 estimate of the reverse KL on the sampled token: `log p_S(y_t) − log p_T(y_t)`. `(...) -> (...)`."""
    return student_token_logp - teacher_token_logp


def k3_estimator(student_token_logp: torch.Tensor, teacher_token_logp: torch.Tensor) -> torch.Tensor:
    """k3 estimate of the reverse KL: `r − 1 − log r` with `r = p_T(y_t)/p_S(y_t)`; unbiased and ≥ 0. `(...) -> (...)`."""
    log_ratio = teacher_token_logp - student_token_logp
    return torch.expm1(log_ratio) - log_ratio


def topk_forward_kl(
    teacher_logits: torch.Tensor, student_logits: torch.Tensor, k: int, tail_bucket: bool = False
) -> torch.Tensor:
    """Forward KL over the teacher's top-k tokens. `(..., V), (..., V) -> (...)`.

    Both distributions are restricted to the teacher's `k` most likely tokens `K` and renormalised over them:
    `KL(p̄_T || p̄_S)` with `p̄(v) = p(v) / Σ_{u∈K} p(u)`. With `tail_bucket=True` they are not renormalised; the
    mass outside `K` is one extra bucket instead: `Σ_{v∈K} p_T log(p_T/p_S) + p_T(¬K) log(p_T(¬K)/p_S(¬K))`.
    """
    if k < 1 or k > teacher_logits.size(-1):
        raise ValueError(f"k must be in [1, {teacher_logits.size(-1)}], got {k}")
    top_t, idx = teacher_logits.topk(k, dim=-1)
    top_s = student_logits.gather(-1, idx)
    if not tail_bucket:
        return forward_kl(top_t.log_softmax(-1), top_s.log_softmax(-1))
    t_in = top_t - teacher_logits.logsumexp(-1, keepdim=True)
    s_in = top_s - student_logits.logsumexp(-1, keepdim=True)
    t_tail = log1mexp(t_in.logsumexp(-1))
    s_tail = log1mexp(s_in.logsumexp(-1))
    tail = t_tail.exp() * (t_tail - s_tail)
    return forward_kl(t_in, s_in) + torch.nan_to_num(tail, nan=0.0)


def log1mexp(log_p: torch.Tensor) -> torch.Tensor:
    """`log(1 − exp(x))` for `x ≤ 0`, stable at both ends. `(...) -> (...)`."""
    log_p = log_p.clamp(max=-1e-7)
    return torch.where(log_p > -math.log(2), torch.log(-torch.expm1(log_p)), torch.log1p(-torch.exp(log_p)))
