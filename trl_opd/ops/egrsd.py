# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""EGRSD token weights: likelihood-ratio magnitude, teacher-entropy gate, causal lookahead minimum.

Pure tensor functions (tensors in, tensors out). `mask` is the loss mask of the completion tokens (1 = a token of the
rollout that is trained on, 0 = padding after EOS or a tool-output token); values at masked positions are defined
(finite) but meaningless.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def lookahead_min(values: torch.Tensor, mask: torch.Tensor, lookahead: int) -> torch.Tensor:
    r"""Causal lookahead minimum of a per-token signal within each rollout.

    $$\tilde{H}_t = \min_{j \in [t,\, t+L],\; \mathrm{mask}_j = 1} H_j$$

    The window is clipped at the end of the sequence and skips masked positions (padding, tool tokens), so a token
    never borrows from another rollout's padding. `L = 0` returns `values` unchanged. Masked positions return their
    own value. `(B, T), (B, T) -> (B, T)`.
    """
    if lookahead < 0:
        raise ValueError(f"lookahead must be >= 0, got {lookahead}")
    if lookahead == 0 or values.size(-1) == 0:
        return values
    keep = mask.bool()
    filled = torch.where(keep, values, torch.full_like(values, float("inf")))
    # a max-pool of the negated signal over [t, t+L]: pad L positions of +inf on the right
    padded = F.pad(-filled.unsqueeze(1), (0, lookahead), value=-float("inf"))  # (B, 1, T + L)
    window_min = -F.max_pool1d(padded, kernel_size=lookahead + 1, stride=1).squeeze(1)  # (B, T)
    return torch.where(keep, window_min, values)


def masked_median(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Median of `values` over the unmasked positions (the lower one of the two middle values, as `torch.median`);
    0 when every position is masked. `(...), (...) -> ()`."""
    selected = values[mask.bool()]
    if selected.numel() == 0:
        return values.new_zeros(())
    return selected.median()


def entropy_gate(entropy: torch.Tensor, tau: torch.Tensor | float, g_min: float) -> torch.Tensor:
    r"""Teacher-entropy confidence gate.

    $$g_t = g_{\min} + (1 - g_{\min})\,\exp(-H_t / \tau_H)$$

    `g = 1` where the teacher is certain (`H = 0`), falling towards `g_min` as its entropy grows past `τ_H`. `g_min = 1`
    switches the gate off. `τ_H` is floored at 1e-8. `(B, T), () -> (B, T)`.
    """
    if not 0.0 <= g_min <= 1.0:
        raise ValueError(f"g_min must be in [0, 1], got {g_min}")
    tau = torch.as_tensor(tau, dtype=entropy.dtype, device=entropy.device).clamp(min=1e-8)
    return g_min + (1.0 - g_min) * torch.exp(-entropy.detach() / tau)


def likelihood_ratio_magnitude(
    advantages: torch.Tensor,
    teacher_logp: torch.Tensor,
    student_logp: torch.Tensor,
    epsilon_w: float,
    delta_offset: torch.Tensor | float = 0.0,
) -> torch.Tensor:
    r"""Reward-directed teacher/student likelihood-ratio magnitude (RLSD).

    $$m_t = \mathrm{clip}\big(\exp(\mathrm{sign}(A_i)\,(\Delta_t - c)),\; 1 - \epsilon_w,\; 1 + \epsilon_w\big),\qquad
    \Delta_t = \mathrm{sg}(\log p_T(y_t) - \log p_S(y_t))$$

    A rewarded rollout (`A > 0`) is pushed harder where the teacher likes the token more than the student, a
    penalised one (`A < 0`) where the teacher likes it less; `A = 0` gives `m = 1`. `ε_w = 0` gives `m = 1`.
    `c = delta_offset` (0 in RLSD; a trainer may pass the batch mean of `Δ`, so that a teacher that is uniformly
    less sure than the student does not shrink every rewarded token and grow every penalised one).
    `(B,), (B, T), (B, T), () -> (B, T)`.
    """
    if not 0.0 <= epsilon_w <= 1.0:
        raise ValueError(f"epsilon_w must be in [0, 1], got {epsilon_w}")
    delta = (teacher_logp - student_logp).detach() - torch.as_tensor(delta_offset).detach()
    signed = torch.sign(advantages).unsqueeze(-1).to(delta.dtype) * delta
    return torch.exp(signed).clamp(1.0 - epsilon_w, 1.0 + epsilon_w)


def token_advantages(
    advantages: torch.Tensor, magnitude: torch.Tensor, gate: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    r"""EGRSD token advantages $\hat{A}_t = A_i \cdot m_t \cdot g_t$, exactly 0 at masked positions.

    `(B,), (B, T), (B, T), (B, T) -> (B, T)`.
    """
    values = advantages.unsqueeze(-1) * magnitude * gate
    return torch.where(mask.bool(), values, torch.zeros_like(values))


def egrsd_token_advantages(
    advantages: torch.Tensor,
    teacher_logp: torch.Tensor,
    student_logp: torch.Tensor,
    teacher_entropy: torch.Tensor,
    mask: torch.Tensor,
    g_min: float = 0.2,
    epsilon_w: float = 0.2,
    lookahead: int = 0,
    tau: torch.Tensor | float | None = None,
    delta_offset: torch.Tensor | float = 0.0,
) -> dict[str, torch.Tensor]:
    r"""The whole EGRSD / CL-EGRSD token weighting from the group advantages and the teacher statistics.

    $$\hat{A}_t = A_i\, m_t\, g_t,\quad g_t = g_{\min} + (1 - g_{\min})\exp(-\tilde{H}_t/\tau_H)$$

    with `H̃ = H` (EGRSD) or its causal lookahead minimum over `L` tokens (CL-EGRSD), and `τ_H` the median of `H`
    over the loss tokens unless given (a trainer passes the median over the global batch); `delta_offset` is the
    magnitude's `c` ([`likelihood_ratio_magnitude`]).
    `(B,), (B, T), (B, T), (B, T), (B, T) -> dict of (B, T)`: `advantages`, `magnitude`, `gate`,
    `lookahead_changed` (1 where the lookahead lowered the entropy the gate reads), and `tau` `()`.
    """
    teacher_entropy = teacher_entropy.detach()
    tau = masked_median(teacher_entropy, mask) if tau is None else torch.as_tensor(tau).detach()
    gated_entropy = lookahead_min(teacher_entropy, mask, lookahead)
    gate = entropy_gate(gated_entropy, tau, g_min)
    magnitude = likelihood_ratio_magnitude(advantages, teacher_logp, student_logp, epsilon_w, delta_offset)
    return {
        "advantages": token_advantages(advantages, magnitude, gate, mask),
        "magnitude": magnitude,
        "gate": gate,
        "lookahead_changed": (gated_entropy < teacher_entropy).to(teacher_entropy.dtype),
        "tau": tau,
    }


def rollout_means(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    r"""Each rollout's mean of `values` over its loss tokens, $\bar{v}_i = \sum_t M_{i,t} v_{i,t} / \sum_t M_{i,t}$;
    0 for a row without loss tokens. `(B, T), (B, T) -> (B,)`."""
    keep = mask.to(values.dtype)
    return (values * keep).sum(-1) / keep.sum(-1).clamp(min=1.0)


def normalize_per_rollout(weights: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    r"""Token weights rescaled to mean 1 over each rollout's loss tokens: they only move credit between the tokens of
    a rollout, and its total, $\sum_t A_i \tilde{w}_{i,t} = A_i\, n_i$, is GRPO's (the reward's alone).

    $$\tilde{w}_{i,t} = w_{i,t} \Big/ \Big(\tfrac{1}{n_i} \sum_{t'} M_{i,t'}\, w_{i,t'}\Big),\qquad
    n_i = \sum_{t'} M_{i,t'}$$

    The mean is floored at 1e-8; a row without loss tokens keeps its weights. `(B, T), (B, T) -> (B, T)`.
    """
    count = mask.sum(-1, keepdim=True)  # (B, 1)
    mean = rollout_means(weights, mask).unsqueeze(-1)  # (B, 1)
    return torch.where(count > 0, weights / mean.clamp(min=1e-8), weights)


def normalize_gate(weights: dict[str, torch.Tensor], gate_mean: torch.Tensor | float) -> dict[str, torch.Tensor]:
    r"""Rescale the gate to mean 1 over the loss tokens, so that it reweights tokens without shrinking the update.

    $$\tilde{g}_t = g_t / \bar{g},\qquad \hat{A}_t = A_i\, m_t\, \tilde{g}_t$$

    `ḡ` is the mean gate over the loss tokens (of the global batch, in a trainer); floored at 1e-8. The raw gate is kept
    as `raw_gate`. At `g_min = 1` every `g_t = ḡ = 1` and nothing changes. `dict of (B, T), () -> dict of (B, T)`.
    """
    scale = torch.as_tensor(gate_mean, dtype=weights["gate"].dtype, device=weights["gate"].device).clamp(min=1e-8)
    return {
        **weights,
        "advantages": weights["advantages"] / scale.to(weights["advantages"].dtype),
        "gate": weights["gate"] / scale,
        "raw_gate": weights["gate"],
    }


def penalized_rollout_mask(advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    r"""1 at the loss tokens of rollouts with a negative advantage, 0 elsewhere: where EGRSD's
    `teacher_rollouts: penalized` applies the teacher's token weights ($\hat{A}_t = A_i$ on the other rows).

    $$P_{i,t} = \mathbb{1}[A_i < 0]\, M_{i,t}$$

    `(B,), (B, T) -> (B, T)` in `mask`'s dtype.
    """
    return (advantages < 0).unsqueeze(-1).to(mask.dtype) * mask


def delta_gap_sums(delta: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    r"""The sums behind the gap between the teacher's disagreement on rewarded and on penalised rollouts,

    $$\bar{\Delta}_{+} - \bar{\Delta}_{-},\qquad \bar{\Delta}_{\pm} = \frac{\sum_{i: \pm A_i > 0} \sum_t M_{i,t}\,
    \Delta_{i,t}}{\sum_{i: \pm A_i > 0} \sum_t M_{i,t}}$$

    as `[ΣΔ₊, n₊, ΣΔ₋, n₋]`, so that a trainer can add them over processes before dividing. A gap near 0 says the
    teacher disagrees as much with what the reward credits as with what it penalises: its token weights then carry no
    more than the reward does. `(B, T), (B,), (B, T) -> (4,)`.
    """
    rewarded = penalized_rollout_mask(-advantages, mask).to(delta.dtype)  # (B, T): A > 0
    penalised = penalized_rollout_mask(advantages, mask).to(delta.dtype)  # (B, T): A < 0
    return torch.stack([(delta * rewarded).sum(), rewarded.sum(), (delta * penalised).sum(), penalised.sum()])


def rank_agreement(scores: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    r"""How well `scores` rank the rollouts the reward credits above those it penalises: Somers' `D`, `2·AUC − 1`.

    $$D = \frac{1}{n_+ n_-} \sum_{i: A_i > 0} \sum_{j: A_j < 0} \mathrm{sign}(s_i - s_j)$$

    `D = 1`: every rewarded rollout scores above every penalised one; `D = 0`: no better than chance (or no pair:
    rollouts with `A = 0` take no part); `D = −1`: reversed. Dense over the `n₊·n₋` pairs. `(B,), (B,) -> ()`.
    """
    rewarded, penalised = scores[advantages > 0], scores[advantages < 0]
    if rewarded.numel() == 0 or penalised.numel() == 0:
        return scores.new_zeros(())
    return torch.sign(rewarded.unsqueeze(1) - penalised.unsqueeze(0)).mean()
