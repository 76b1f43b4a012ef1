# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""[`EGRSDTrainer`]'s statistics over the global batch (every process's loss tokens, one gather each) and its logs."""

from __future__ import annotations

import torch

from ..ops.egrsd import delta_gap_sums, masked_median


class EGRSDStatsMixin:
    """Means and medians over the loss tokens of every process's batch, and the `egrsd/*` metrics built from them.
    Needs the trainer's `accelerator`, `model` and `_metrics`."""

    def _global_masked_mean(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean of `values` over the loss tokens of every process's generation batch."""
        keep = mask.bool()
        sums = torch.stack([values[keep].sum(), keep.sum().to(values.dtype)]).unsqueeze(0)
        total, count = self.accelerator.gather(sums).sum(0)
        return total / count.clamp(min=1.0)

    def _global_median(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Median of `values` over the loss tokens of every process's generation batch."""
        if self.accelerator.num_processes > 1:
            values = self.accelerator.gather(self.accelerator.pad_across_processes(values, dim=1))
            mask = self.accelerator.gather(self.accelerator.pad_across_processes(mask, dim=1))
        return masked_median(values, mask)

    def _log_weights(self, weights, raw_gate, teacher_entropy, delta, mask) -> None:
        """Global means over the loss tokens: the raw gate (its mean, spread and share below 0.5), the share of
        tokens whose gate the lookahead changed, the teacher entropy, and (unless deferred to the loss: `delta` None)
        the magnitude and `Δ`; and `τ_H`."""
        names = ("gate_mean", "gate_sq", "gate_below_half", "lookahead_changed", "teacher_entropy")
        values = (raw_gate, raw_gate.square(), (raw_gate < 0.5).float(), weights["lookahead_changed"], teacher_entropy)
        if delta is not None:
            names, values = (*names, "magnitude_mean", "delta_mean"), (*values, weights["magnitude"], delta)
        means = self._global_token_means(dict(zip(names, values, strict=True)), mask)
        means["gate_std"] = max(means.pop("gate_sq") - means["gate_mean"] ** 2, 0.0) ** 0.5
        mode = "train" if self.model.training else "eval"
        for name, value in means.items():
            self._metrics[mode][f"egrsd/{name}"].append(value)
        self._metrics[mode]["egrsd/tau_H"].append(float(weights["tau"]))

    def _log_magnitude(self, magnitude, delta, mask) -> None:
        """`egrsd/magnitude_mean` and `egrsd/delta_mean` of a loss micro-batch (the magnitude deferred to the loss)."""
        mode = "train" if self.model.training else "eval"
        means = self._global_token_means({"magnitude_mean": magnitude, "delta_mean": delta}, mask)
        for name, value in means.items():
            self._metrics[mode][f"egrsd/{name}"].append(value)

    def _log_delta_gap(self, delta, advantages, mask) -> None:
        """`egrsd/delta_gap`: mean `Δ` over the loss tokens of rewarded rollouts minus over penalised ones, over every
        process's batch ([`~trl_opd.ops.egrsd.delta_gap_sums`]); not logged for a batch without both."""
        sums = self.accelerator.gather(delta_gap_sums(delta.float(), advantages, mask).unsqueeze(0)).sum(0)
        rewarded, n_rewarded, penalised, n_penalised = sums.tolist()
        if n_rewarded > 0 and n_penalised > 0:
            mode = "train" if self.model.training else "eval"
            self._metrics[mode]["egrsd/delta_gap"].append(rewarded / n_rewarded - penalised / n_penalised)

    def _global_token_means(self, values: dict[str, torch.Tensor], mask: torch.Tensor) -> dict[str, float]:
        """Each tensor's mean over the loss tokens of every process's batch, in one gather."""
        keep = mask.bool()
        sums = torch.stack([v[keep].float().sum() for v in values.values()] + [keep.sum().float()])
        *totals, count = self.accelerator.gather(sums.unsqueeze(0)).sum(0).tolist()
        return {name: total / max(count, 1.0) for name, total in zip(values, totals, strict=True)}
