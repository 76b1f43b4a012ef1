# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""The self-distillation guard: after the first student token the privileged teacher rejects, the rest of the
completion stops (or mostly stops) counting."""

from __future__ import annotations

import math

import pytest
import torch

from trl_opd.ops.reductions import after_collapse_weights, masked_global_mean
from trl_opd.testing import build_tiny_model, fixed_generation_batch, tiny_training_kwargs
from trl_opd.trainers.opd_config import OPDConfig
from trl_opd.trainers.opd_trainer import OPDTrainer


def test_weights_by_hand():
    log_p = torch.tensor(
        [[-0.1, -9.0, -0.2, -0.1, -9.0], [-0.1, -0.2, -0.3, -0.4, -0.5], [-9.0, -0.1, -0.1, 0.0, 0.0]]
    )
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])
    weights = after_collapse_weights(log_p, mask, math.log(1e-3), after_weight=0.25)
    assert weights.tolist() == [
        [1, 1, 0.25, 0.25, 0.25],  # the collapsed token keeps its weight, the ones after it don't
        [1, 1, 1, 1, 0],  # no collapse, padding 0
        [1, 0.25, 0.25, 0, 0],
    ]


@pytest.mark.parametrize("after_weight", [0.0, 0.5])
def test_trainer_loss_is_the_dense_weighted_loss(after_weight, tmp_path, tiny_tokenizer, arithmetic_dataset):
    """Loss and gradients equal the unguarded per-token losses weighted by the op's weights from the teacher's
    log-probs (computed densely here), at a threshold that collapses some rows part-way."""
    inputs = fixed_generation_batch(tiny_tokenizer, batch=4, completion_len=6)

    def trainer(**extra):
        return OPDTrainer(
            model=build_tiny_model(tiny_tokenizer, "student", seed=0),
            teacher_model=build_tiny_model(tiny_tokenizer, "teacher", seed=1),
            args=OPDConfig(**tiny_training_kwargs(tmp_path), beta=0.0, **extra),
            train_dataset=arithmetic_dataset,
            processing_class=tiny_tokenizer,
        )

    plain, guarded = (
        trainer(),
        trainer(teacher_collapse_logp=math.log(1.0 / len(tiny_tokenizer)), teacher_collapse_weight=after_weight),
    )
    seen = {}
    token_losses = plain.token_losses

    def capture(stats, batch):
        seen["losses"], seen["teacher_logp"] = token_losses(stats, batch), stats["teacher_logp"].detach()
        return seen["losses"]

    plain.token_losses = capture
    plain.model.train(), guarded.model.train()
    plain.compute_loss(plain.model, dict(inputs))
    mask = inputs["completion_mask"]
    weights = after_collapse_weights(seen["teacher_logp"], mask, math.log(1.0 / len(tiny_tokenizer)), after_weight)
    assert 0 < (weights[mask.bool()] != 1).sum() < mask.sum()  # some tokens after a collapse, not all
    want = masked_global_mean(seen["losses"] * weights, mask, None)
    got = guarded.compute_loss(guarded.model, dict(inputs))
    torch.testing.assert_close(got, want)
    (g_got,) = torch.autograd.grad(got, guarded.model.lm_head.weight)
    (g_want,) = torch.autograd.grad(want, plain.model.lm_head.weight)
    torch.testing.assert_close(g_got, g_want, atol=1e-6, rtol=1e-4)
    assert guarded._metrics["train"]["guard/after_collapse"][-1] > 0


def test_bad_guard_values(tmp_path):
    with pytest.raises(ValueError, match="teacher_collapse_logp"):
        OPDConfig(**tiny_training_kwargs(tmp_path), teacher_collapse_logp=0.5)
    with pytest.raises(ValueError, match="teacher_collapse_weight"):
        OPDConfig(**tiny_training_kwargs(tmp_path), teacher_collapse_weight=1.5)
