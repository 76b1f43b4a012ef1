# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""MOTAB math and boundary: against numpy's quantile and dense torch computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trl_opd.controllers.boundary import AdaptiveBoundary
from trl_opd.ops.motab import (
    monitor_signal,
    route_token_losses,
    segment_stray_scores,
    teacher_token_forward_kl,
    token_logprob_and_best,
)


def test_boundary_running_quantile_window_warmup_and_state():
    boundary = AdaptiveBoundary(quantile=0.9, window=5, warmup_steps=2)
    assert boundary.threshold(0) == math.inf  # nothing seen
    boundary.update([3.0, 1.0, float("nan"), 2.0], num_backtracks=1)
    assert boundary.threshold(1) == math.inf  # warm-up
    boundary.update([5.0, 4.0, 0.0, 7.0])
    assert list(boundary.scores) == [2.0, 5.0, 4.0, 0.0, 7.0]
    assert boundary.threshold(2) == pytest.approx(np.quantile([2.0, 5.0, 4.0, 0.0, 7.0], 0.9))
    restored = AdaptiveBoundary(quantile=0.9, window=5, warmup_steps=2)
    restored.load_state_dict(boundary.state_dict())
    assert restored.state_dict() == boundary.state_dict() and restored.threshold(9) == boundary.threshold(9)
    assert (restored.num_segments, restored.num_backtracks, restored.num_updates) == (7, 1, 2)
    assert AdaptiveBoundary(fixed=math.inf).threshold(100) == math.inf
    with pytest.raises(ValueError, match="quantile"):
        AdaptiveBoundary(quantile=1.0)


def test_boundary_floor_bounds_the_running_quantile_from_below():
    """`τ = max(quantile, floor)` against numpy; the floor waits for the warm-up and yields to a fixed boundary."""
    scores = [0.0, -0.2, 0.05, 0.1, -0.1, 0.0, 0.3, -0.05]
    floored = AdaptiveBoundary(quantile=0.9, window=16, warmup_steps=1, floor=0.25)
    floored.update(scores)
    assert floored.threshold(0) == math.inf
    assert np.quantile(scores, 0.9) < 0.25 and floored.threshold(1) == 0.25
    floored.update([2.0, 3.0, 4.0])
    assert floored.threshold(1) == pytest.approx(np.quantile([*scores, 2.0, 3.0, 4.0], 0.9))  # above the floor
    assert AdaptiveBoundary(fixed=-1.0, floor=0.25).threshold(5) == -1.0
    assert floored.state_dict()["floor"] == 0.25
    with pytest.raises(ValueError, match="floor"):
        AdaptiveBoundary(floor=float("nan"))


def test_monitor_signals_and_segment_scores():
    s, t, best = (
        torch.tensor([[-1.0, -2.0, 0.0]]),
        torch.tensor([[-3.0, -2.5, -9.0]]),
        torch.tensor([[-0.5, -1.0, 0.0]]),
    )
    mask = torch.tensor([[1, 1, 0]])
    assert segment_stray_scores(monitor_signal(s, t, best, "log_ratio"), mask).item() == pytest.approx(1.25)
    assert segment_stray_scores(monitor_signal(s, t, best, "teacher_nll"), mask).item() == pytest.approx(2.75)
    assert segment_stray_scores(monitor_signal(s, t, best, "teacher_margin"), mask).item() == pytest.approx(2.0)


def test_max_stray_score_is_the_worst_unmasked_token():
    """`max` against a dense per-row reference: masked tokens never count, an empty segment scores NaN."""
    torch.manual_seed(0)
    signal = torch.randn(5, 7, dtype=torch.float64)
    mask = (torch.rand(5, 7) < 0.6).long()
    mask[0] = 0  # empty segment
    mask[1, 3] = 1
    got = segment_stray_scores(signal, mask, "max")
    assert got[0].isnan()
    for row in range(1, 5):
        assert got[row].item() == max(v for v, m in zip(signal[row].tolist(), mask[row].tolist()) if m)
    # one bad token: `mean` dilutes it with the segment's length, `max` does not
    short, long = torch.tensor([[0.0, 9.0]]), torch.tensor([[0.0] * 9 + [9.0]])
    assert segment_stray_scores(short, torch.ones_like(short), "max") == segment_stray_scores(
        long, torch.ones_like(long), "max"
    )
    assert segment_stray_scores(long, torch.ones_like(long)) < segment_stray_scores(short, torch.ones_like(short))
    with pytest.raises(ValueError, match="reduction"):
        segment_stray_scores(short, torch.ones_like(short), "median")


def test_logprob_and_best_match_dense():
    torch.manual_seed(0)
    hidden, weight, targets = torch.randn(7, 8), torch.randn(50, 8), torch.randint(0, 50, (7,))
    logp, best = token_logprob_and_best(hidden, weight, targets, temperature=0.7, chunk=3)
    dense = (hidden @ weight.t() / 0.7).log_softmax(-1)
    torch.testing.assert_close(logp, dense.gather(-1, targets[:, None]).squeeze(-1))
    torch.testing.assert_close(best, dense.amax(-1))


def test_teacher_token_kl_and_routing_match_dense():
    torch.manual_seed(0)
    hs = torch.randn(2, 5, 8, requires_grad=True)
    ws = torch.randn(40, 8, requires_grad=True)
    ht, wt = torch.randn(2, 5, 6), torch.randn(40, 6)
    targets, mask = torch.randint(0, 40, (2, 5)), torch.tensor([[0, 1, 1, 0, 0], [1, 0, 0, 0, 1]])
    kl = teacher_token_forward_kl(hs, ws, ht, wt, targets, mask, temperature=1.3)
    log_s, log_t = (hs @ ws.t() / 1.3).log_softmax(-1), (ht @ wt.t() / 1.3).log_softmax(-1)
    dense = torch.nn.functional.kl_div(log_s, log_t, log_target=True, reduction="none").sum(-1) * mask
    torch.testing.assert_close(kl, dense, rtol=1e-5, atol=1e-6)
    student_losses = torch.full((2, 5), 3.0)
    routed = route_token_losses(student_losses, kl, mask, 0.5)
    torch.testing.assert_close(routed, torch.where(mask.bool(), 0.5 * dense, student_losses))
    (grad_h, grad_w) = torch.autograd.grad(kl.sum(), (hs, ws))
    (ref_h, ref_w) = torch.autograd.grad(dense.sum(), (hs, ws))
    torch.testing.assert_close(grad_h, ref_h, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grad_w, ref_w, rtol=1e-4, atol=1e-6)
    zero = teacher_token_forward_kl(hs, ws, ht, wt, targets, torch.zeros_like(mask))
    assert zero.abs().sum() == 0
