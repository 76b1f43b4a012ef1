# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""Masked reductions normalised by the global count of loss tokens.

TRL counts the loss tokens of the whole generation batch over every process (`num_items_in_batch`, summed over the
gradient-accumulation micro-batches and gathered over ranks) and divides it by the number of processes, because DDP
averages gradients. Dividing each micro-batch's masked *sum* by that count makes the accumulated gradient equal to the
gradient of the mean over all loss tokens of the global batch, whatever the split into micro-batches and ranks.
"""

from __future__ import annotations

import torch


def masked_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`Σ values·mask`, with masked positions contributing exactly 0 even when `values` is inf/NaN there. `(B, T) -> ()`."""
    return torch.where(mask.bool(), values, torch.zeros_like(values)).sum()


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Local mean over the unmasked positions (0 when none), for logging. `(B, T) -> ()`."""
    return masked_sum(values, mask) / mask.sum().clamp(min=1)


def global_token_normalizer(num_items_in_batch: torch.Tensor | int | None, mask: torch.Tensor) -> torch.Tensor:
    """The `N` of `L = (1/N) Σ_t ℓ_t`: the trainer's global per-process count, or the local count when absent. `-> ()`."""
    if num_items_in_batch is None:
        return mask.sum().clamp(min=1).to(torch.float32)
    return torch.as_tensor(num_items_in_batch, dtype=torch.float32, device=mask.device).clamp(min=1e-8)


def masked_global_mean(
    values: torch.Tensor, mask: torch.Tensor, num_items_in_batch: torch.Tensor | int | None
) -> torch.Tensor:
    """`(1/N) Σ_t mask_t·values_t` with `N` from [`global_token_normalizer`]. `(B, T), (B, T) -> ()`."""
    return masked_sum(values, mask) / global_token_normalizer(num_items_in_batch, mask)


def after_collapse_weights(
    teacher_logp: torch.Tensor, mask: torch.Tensor, log_threshold: float, after_weight: float = 0.0
) -> torch.Tensor:
    r"""Per-token weights that stop trusting a teacher once it no longer follows the student's path.

    $$w_t = \begin{cases} 1 & t \le t^* \\ w_{\text{after}} & t > t^* \end{cases},\qquad
    t^* = \min\{t : \mathrm{mask}_t = 1,\ \log p_T(y_t) < \log\theta\}$$

    The first collapsed token itself keeps weight 1 (there the teacher's signal, "not this token", is right); every
    later token of the completion gets `after_weight`. No collapse: all ones. Masked positions get 0.
    `(B, T), (B, T) -> (B, T)`.
    """
    keep = mask.bool()
    collapsed = (teacher_logp.detach() < log_threshold) & keep
    before = collapsed.long().cumsum(-1) - collapsed.long()  # collapses strictly before t
    weights = torch.where(before > 0, torch.full_like(teacher_logp, after_weight), torch.ones_like(teacher_logp))
    return torch.where(keep, weights, torch.zeros_like(weights)).float()


def first_collapse_index(teacher_logp: torch.Tensor, mask: torch.Tensor, log_threshold: float) -> torch.Tensor:
    r"""The first collapsed position of each row, `t^* = \min\{t : \mathrm{mask}_t = 1,\ \log p_T(y_t) < \log\theta\}`
    (the token [`after_collapse_weights`] still trusts), or `-1` where the teacher never collapses. `(B, T), (B, T) ->
    (B,)` long."""
    collapsed = (teacher_logp.detach() < log_threshold) & mask.bool()
    first = collapsed.float().argmax(-1)  # argmax returns the first of equal maxima
    return torch.where(collapsed.any(-1), first, torch.full_like(first, -1))
