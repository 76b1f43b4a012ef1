# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""MOTAB math: per-token monitor signals, segment stray scores, and the provenance-routed per-token loss.

Pure functions: tensors in, tensors out. The teacher-token KL reuses the core's fused chunked pass, so no
`(B, T, V)` logits are materialised.
"""

from __future__ import annotations

import torch

from .chunked import PLAIN_HEAD, LogitHead, apply_logit_head, fused_distillation_stats


MONITOR_SIGNALS = ("log_ratio", "teacher_nll", "teacher_margin")
STRAY_REDUCTIONS = ("mean", "max")


def monitor_signal(
    student_logp: torch.Tensor, teacher_logp: torch.Tensor, teacher_best_logp: torch.Tensor, signal: str
) -> torch.Tensor:
    r"""Per-token stray signal `m_t` (higher = more astray). `3 x (B, n) -> (B, n)`.

    - `log_ratio`: `m_t = log p_S(y_t) − log p_T(y_t)` (the sampled-token reverse-KL estimate),
    - `teacher_nll`: `m_t = −log p_T(y_t)`,
    - `teacher_margin`: `m_t = max_v log p_T(v) − log p_T(y_t) ≥ 0` (how far the token is below the teacher's
      top choice; 0 when the teacher agrees).
    """
    if signal == "log_ratio":
        return student_logp - teacher_logp
    if signal == "teacher_nll":
        return -teacher_logp
    if signal == "teacher_margin":
        return teacher_best_logp - teacher_logp
    raise ValueError(f"signal must be one of {MONITOR_SIGNALS}, got {signal!r}")


def segment_stray_scores(token_signal: torch.Tensor, mask: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    r"""Stray score of each segment over its unmasked tokens (NaN for an empty segment). `(B, n), (B, n) -> (B,)`.

    - `mean`: `S_k = mean_{t∈k} m_t` (a per-token average: one bad token weighs less in a longer segment),
    - `max`: `S_k = max_{t∈k} m_t` (the segment's worst token; with `teacher_nll`, `S_k > τ` reads "the teacher gives
      some token of the segment `p_T < e^{−τ}`", whatever the segment's length).
    """
    keep = mask.bool()
    if reduction == "mean":
        total = torch.where(keep, token_signal, torch.zeros_like(token_signal)).sum(-1)
        return total / keep.to(token_signal.dtype).sum(-1)
    if reduction == "max":
        worst = torch.where(keep, token_signal, torch.full_like(token_signal, -torch.inf)).amax(-1)
        return torch.where(keep.any(-1), worst, torch.full_like(worst, torch.nan))
    raise ValueError(f"reduction must be one of {STRAY_REDUCTIONS}, got {reduction!r}")


@torch.no_grad()
def token_logprob_and_best(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    chunk: int = 256,
    head: LogitHead = PLAIN_HEAD,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""`log p(y_t)` and `max_v log p(v)` at softmax temperature `T`, from hidden states, in position chunks.

    `(N, H), (V, H), (N,) -> (N,), (N,)` with `p = softmax(head(h Wᵀ) / T)` in fp32 ([`LogitHead`]: bias, scale,
    softcap). At most `(chunk, V)` logits are alive at a time. No gradient.
    """
    logp = torch.empty(targets.shape, dtype=torch.float32, device=hidden.device)
    best = torch.empty_like(logp)
    w = weight.float()
    for a in range(0, hidden.size(0), chunk):
        z = project_logits(hidden[a : a + chunk], w, head) / temperature
        log_z = torch.logsumexp(z, dim=-1)
        logp[a : a + chunk] = z.gather(-1, targets[a : a + chunk, None]).squeeze(-1) - log_z
        best[a : a + chunk] = z.amax(-1) - log_z
    return logp, best


def project_logits(hidden: torch.Tensor, weight: torch.Tensor, head: LogitHead = PLAIN_HEAD) -> torch.Tensor:
    """fp32 logits of a model from its hidden states: `head(h·Wᵀ + b)`. `(..., H), (V, H) -> (..., V)`."""
    z = hidden.float() @ weight.float().t()
    return apply_logit_head(z + head.bias.float() if head.bias is not None else z, head)


def teacher_token_forward_kl(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_weight: torch.Tensor,
    targets: torch.Tensor,
    teacher_token_mask: torch.Tensor,
    temperature: float = 1.0,
    student_head: LogitHead = PLAIN_HEAD,
    teacher_head: LogitHead = PLAIN_HEAD,
) -> torch.Tensor:
    r"""Forward KL `KL(p_T,t || p_S,t)` at the teacher-written positions, 0 elsewhere. Differentiable in the student.

    `(B, T, H_s), (V, H_s), (B, T, H_t), (V, H_t), (B, T), (B, T) -> (B, T)`. Only the `N_t` masked positions are
    gathered and sent through [`~trl_opd.ops.fused_distillation_stats`] with `β = 0`, so the extra cost is one fused
    pass over `N_t` tokens.
    """
    flat_mask = teacher_token_mask.reshape(-1).bool()
    out = torch.zeros(flat_mask.shape, dtype=torch.float32, device=student_hidden.device)
    if not flat_mask.any():
        return out.view(targets.shape)
    idx = flat_mask.nonzero().squeeze(-1)
    s_h = student_hidden.reshape(-1, student_hidden.size(-1)).index_select(0, idx)
    t_h = teacher_hidden.reshape(-1, teacher_hidden.size(-1)).index_select(0, idx)
    stats = fused_distillation_stats(
        s_h[None],
        student_weight,
        t_h[None],
        teacher_weight,
        targets.reshape(-1)[idx][None],
        0.0,
        temperature,
        student_head,
        teacher_head,
    )
    return out.index_put((idx,), stats["divergence"][0].float()).view(targets.shape)


def route_token_losses(
    student_token_losses: torch.Tensor, teacher_token_kl: torch.Tensor, teacher_token_mask: torch.Tensor, weight: float
) -> torch.Tensor:
    r"""MOTAB's per-token loss by provenance: `ℓ_t = D_β,t` on student tokens, `λ_int · KL(p_T,t || p_S,t)` on
    teacher tokens. `(B, T), (B, T), (B, T) -> (B, T)`."""
    return torch.where(teacher_token_mask.bool(), weight * teacher_token_kl, student_token_losses)
