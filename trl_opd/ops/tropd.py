# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""TrOPD's pure math: the per-token trust ratio and trust mask, the loss routing, and the guidance schedules.

Notation as in `docs/methods.md`: `p_S`, `p_T` the student and teacher next-token distributions, `y_t` the token at
position `t`, `P_t` the trust ratio, `M_t` the trust mask, `ρ` the share of a teacher rollout used as a prefix.
"""

from __future__ import annotations

import math

import torch


TRUST_MODES = ("threshold", "stochastic")


def trust_ratio(student_logp: torch.Tensor, teacher_logp: torch.Tensor) -> torch.Tensor:
    """Speculative-decoding acceptance probability `P_t = min(p_T(y_t) / p_S(y_t), 1)`. `(B, T), (B, T) -> (B, T)`.

    Computed in log space, `exp(min(log p_T − log p_S, 0))`, and detached: `P_t → 0` as `p_T(y_t) → 0`, `P_t = 1`
    whenever the teacher gives the token at least the student's probability. NaN inputs give a ratio of 0.
    """
    log_ratio = (teacher_logp - student_logp).detach().clamp(max=0.0)
    return torch.nan_to_num(log_ratio.exp(), nan=0.0)


def trust_cutoff(
    like: torch.Tensor, mode: str = "threshold", threshold: float = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The per-token cutoff `c_t` of the trust mask `M_t = 1[P_t ≥ c_t]`, shaped like `like`. `(B, T) -> (B, T)`.

    `threshold`: `c_t = δ`. `stochastic`: `c_t = 1 − U_t`, `U_t ~ U[0, 1)` drawn with `generator`, so that
    `Pr(M_t = 1) = P_t` (the speculative-decoding accept step). Drawn before the ratio is known, so the fused pass can
    select the outliers itself ([`~trl_opd.ops.chunked_topk.FusedOutlierKL`]).
    """
    if mode == "threshold":
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        return torch.full(like.shape, float(threshold), device=like.device)
    if mode == "stochastic":
        return 1.0 - torch.rand(like.shape, generator=generator, device=like.device)
    raise ValueError(f"mode must be one of {TRUST_MODES}, got {mode!r}")


def trust_mask(
    ratio: torch.Tensor, mode: str = "threshold", threshold: float = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Trusted tokens `M_t = 1[P_t ≥ c_t]` as a float `{0, 1}` tensor, `c_t` from [`trust_cutoff`]. `(B, T) -> (B, T)`.

    `threshold`: `M_t = 1[P_t ≥ δ]` (`δ = 0` trusts every token, `δ = 1` only tokens with `p_T(y_t) ≥ p_S(y_t)`).
    `stochastic`: `M_t ~ Bernoulli(P_t)` (the speculative-decoding accept step), drawn with `generator`.
    """
    return within_cutoff(ratio, trust_cutoff(ratio, mode, threshold, generator)).to(ratio.dtype)


def within_cutoff(ratio: torch.Tensor, cutoff: torch.Tensor) -> torch.Tensor:
    """The trust rule `M_t = 1[P_t ≥ c_t]` as a bool tensor, for [`trust_mask`] and the fused pass's outlier selection
    ([`~trl_opd.ops.chunked_topk.FusedOutlierKL`]). `(B, T), (B, T) -> (B, T)`."""
    return ratio >= cutoff


def tropd_token_losses(
    trust_region_loss: torch.Tensor,
    outlier_kl: torch.Tensor,
    prefix_divergence: torch.Tensor,
    trusted: torch.Tensor,
    prefix_mask: torch.Tensor,
    lambda_out: float = 1.0,
    lambda_off: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Route each token to one of TrOPD's three losses. `5 x (B, T) -> dict of (B, T)`.

    On-policy (student-written, `prefix_mask = 0`) tokens inside the trust region get `trust_region_loss` (the K1
    loss, or a dense divergence), the others the outlier KL; teacher-written prefix tokens get the teacher-forced
    divergence:

    `ℓ_t = (1 − O_t)·[M_t·ℓ^TR_t + λ_out·(1 − M_t)·KL(p̄_T,t || p̄_S,t)] + λ_off·O_t·D_t`, with `O_t` the prefix
    mask. Returns `trust_region`, `outlier`, `prefix` (unweighted parts, zero where not routed) and `total`.
    Values where a part is not routed never reach the result (even if they are inf or NaN).
    """
    on_policy = 1.0 - prefix_mask.to(trust_region_loss.dtype)
    in_region = (on_policy * trusted).bool()
    outlier = (on_policy * (1.0 - trusted)).bool()
    parts = {
        "trust_region": torch.where(in_region, trust_region_loss, torch.zeros_like(trust_region_loss)),
        "outlier": torch.where(outlier, outlier_kl, torch.zeros_like(trust_region_loss)),
        "prefix": torch.where(prefix_mask.bool(), prefix_divergence, torch.zeros_like(trust_region_loss)),
    }
    parts["total"] = parts["trust_region"] + lambda_out * parts["outlier"] + lambda_off * parts["prefix"]
    return parts


def linear_decay(step: int, total_steps: int, start: float, share: float) -> float:
    """Linear schedule from `start` at step 0 to 0 at `share · total_steps`, then 0: `start · max(0, 1 − s/(share·S))`.

    Used for both `p_guide(step)` and `ρ(step)`. With `total_steps ≤ 0` (unknown length) the value stays `start`.
    """
    if not 0.0 < share <= 1.0:
        raise ValueError(f"share must be in (0, 1], got {share}")
    if total_steps <= 0:
        return float(start)
    return float(start) * max(0.0, 1.0 - step / (share * total_steps))


def prefix_length(rollout_length: int, rho: float, ends_with_eos: bool) -> int:
    """Number of teacher tokens given as a prefix: `⌊ρ · L⌋` of a rollout of `L` tokens.

    A rollout that ended with EOS keeps at least its last token for the student (`≤ L − 1`), so the student always
    writes the end of a guided completion.
    """
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"rho must be in [0, 1], got {rho}")
    n = math.floor(rho * rollout_length)
    return max(0, min(n, rollout_length - 1 if ends_with_eos else rollout_length))


def provenance_mask(prefix_lengths: list[int] | torch.Tensor, width: int, device=None) -> torch.Tensor:
    """Teacher-provenance mask `O` of right-padded completions whose first `n_i` tokens are a teacher prefix.

    `(B,) -> (B, width)` with `O[i, t] = 1[t < n_i]` (long, like the completion mask).
    """
    lengths = torch.as_tensor(prefix_lengths, dtype=torch.long, device=device).view(-1, 1)
    return (torch.arange(width, device=lengths.device).view(1, -1) < lengths).long()
