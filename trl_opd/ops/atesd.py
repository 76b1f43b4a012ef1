# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""Pure math of the ATESD exposure controller: Beta policy, discounted reward, REINFORCE loss.

Tensors in, tensors out; no controller state, configs or logging (those live in
[`~trl_opd.controllers.exposure.ExposureController`]).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def beta_parameters(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Beta parameters from the policy network's two outputs: `a, b = 1 + softplus(raw)`.

    `(..., 2) -> (...), (...)`. Both are > 1, so the Beta density is unimodal and vanishes at 0 and 1.
    """
    ab = 1.0 + F.softplus(raw)
    return ab[..., 0], ab[..., 1]


def beta_raw_for(mean: float, concentration: float) -> torch.Tensor:
    """The raw policy outputs `(2,)` that [`beta_parameters`] maps to the Beta of this `mean` and `concentration`:
    `a = mean·c`, `b = (1−mean)·c`, `raw = softplus⁻¹(a−1), softplus⁻¹(b−1)` with `softplus⁻¹(y) = log(eᵞ − 1)`.

    Needs `a > 1` and `b > 1` (the only Betas `beta_parameters` can produce); a `ValueError` otherwise.
    """
    a, b = mean * concentration, (1.0 - mean) * concentration
    if not (a > 1.0 and b > 1.0):
        raise ValueError(
            f"Beta(mean={mean}, concentration={concentration}) has a={a:.3g}, b={b:.3g}; the policy needs both > 1 "
            f"(raise the concentration above {1.0 / min(mean, 1.0 - mean):.3g} or move the mean from 0 and 1)"
        )
    ab = torch.tensor([a, b], dtype=torch.float64) - 1.0
    return torch.log(torch.expm1(ab)).float()


def beta_log_prob(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`log Beta(x; a, b) = (a−1) log x + (b−1) log(1−x) − log B(a, b)`, with `log B = lgamma(a) + lgamma(b) −
    lgamma(a+b)`. `(...), (...), (...) -> (...)`; differentiable in `a` and `b`. `x` must lie in (0, 1)."""
    log_norm = torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)
    return (a - 1.0) * torch.log(x) + (b - 1.0) * torch.log1p(-x) - log_norm


def beta_entropy(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Differential entropy of Beta(a, b):
    `log B(a, b) − (a−1)ψ(a) − (b−1)ψ(b) + (a+b−2)ψ(a+b)`. `(...), (...) -> (...)`; ≤ 0, with 0 at Beta(1, 1)."""
    log_norm = torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)
    return (
        log_norm - (a - 1.0) * torch.digamma(a) - (b - 1.0) * torch.digamma(b) + (a + b - 2.0) * torch.digamma(a + b)
    )


def beta_mean_concentration(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean `a/(a+b)` and concentration `a+b` of Beta(a, b). `(...), (...) -> (...), (...)`."""
    return a / (a + b), a + b


def discounted_learning_progress(probe_nll: torch.Tensor, discount: float) -> torch.Tensor:
    """`G_lp = Σ_{i=1..L} γ^{i−1} · (ℓ_{i−1} − ℓ_i)`: the discounted net decrease of the probe NLL.

    `(L+1,) -> ()`. `probe_nll[0]` is the NLL when the decision was made, `probe_nll[i]` the NLL `i` steps later.
    An increase counts against the decision, so a probe that only fluctuates earns about 0 (with `max(0, ·)` it
    earned its noise: every rise was free and every fall paid). With `γ = 1` it is `ℓ_0 − ℓ_L`.
    """
    gains = probe_nll[:-1] - probe_nll[1:]
    weights = discount ** torch.arange(gains.numel(), dtype=gains.dtype, device=gains.device)
    return (weights * gains).sum()


def discounted_reward(
    probe_nll: torch.Tensor, grounding: torch.Tensor, discount: float, lambda_gt: float
) -> torch.Tensor:
    """Reward of one exposure decision over its `L`-step window:
    `R = Σ_{i=1..L} γ^{i−1} · [(ℓ_{i−1} − ℓ_i) + λ_gt · g_i]`.

    `(L+1,), (L,) -> ()`. `g_i` is the mean log-prob the exposed teacher gives the reference answer at step `i` of the
    window (the teacher-grounded term).
    """
    weights = discount ** torch.arange(grounding.numel(), dtype=grounding.dtype, device=grounding.device)
    return discounted_learning_progress(probe_nll, discount) + lambda_gt * (weights * grounding).sum()


def normalize_rewards(rewards: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Advantages `(R − mean R) / (std R + eps)` over a batch of finished decisions (population std).

    `(B,) -> (B,)`. Equal rewards (or a single decision) give zero advantages.
    """
    centred = rewards - rewards.mean()
    return centred / (centred.pow(2).mean().sqrt() + eps)


def excess_entropy_penalty(entropy: torch.Tensor, target: float) -> torch.Tensor:
    """`mean max(0, H − H_target)`: penalises the policy's entropy only where it exceeds the target. `(B,) -> ()`."""
    return (entropy - target).clamp(min=0.0).mean()


def reinforce_loss(
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    entropy: torch.Tensor,
    entropy_target: float,
    entropy_coef: float,
) -> torch.Tensor:
    """Controller loss over `B` finished decisions:
    `L_φ = −(1/B) Σ_j A_j · log π_φ(α_j | s_j) + c_H · (1/B) Σ_j max(0, H(π_φ(·|s_j)) − H_target)`.

    `(B,), (B,), (B,) -> ()`. `advantages` are constants (normalised rewards).
    """
    policy_term = -(advantages.detach() * log_prob).mean()
    return policy_term + entropy_coef * excess_entropy_penalty(entropy, entropy_target)
