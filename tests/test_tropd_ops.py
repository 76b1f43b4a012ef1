# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""TrOPD's pure math and config checks: trust ratio/mask, loss routing, top-k KL, schedules, bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from trl_opd.ops import chunked_topk_forward_kl, k1_policy_gradient_loss, masked_global_mean, topk_forward_kl
from trl_opd.ops.tropd import (
    linear_decay,
    prefix_length,
    provenance_mask,
    tropd_token_losses,
    trust_mask,
    trust_ratio,
)
from trl_opd.testing import tiny_training_kwargs
from trl_opd.trainers.tropd_config import TrOPDConfig


LOG = math.log


def test_trust_ratio_and_threshold_mask_on_hand_built_logprobs():
    # columns: p_T → 0, equal probabilities, teacher more confident, teacher half as confident, padding (NaN/inf)
    student = torch.tensor([[LOG(0.5), LOG(0.3), LOG(0.2), LOG(0.4), float("nan")]])
    teacher = torch.tensor([[-1e30, LOG(0.3), LOG(0.6), LOG(0.2), float("-inf")]])
    ratio = trust_ratio(student, teacher)
    torch.testing.assert_close(ratio, torch.tensor([[0.0, 1.0, 1.0, 0.5, 0.0]]))
    assert not ratio.requires_grad
    assert trust_mask(ratio, "threshold", 1.0).tolist() == [[0.0, 1.0, 1.0, 0.0, 0.0]]
    assert trust_mask(ratio, "threshold", 0.5).tolist() == [[0.0, 1.0, 1.0, 1.0, 0.0]]
    assert trust_mask(ratio, "threshold", 0.0).tolist() == [[1.0] * 5]  # δ = 0 trusts everything, p_T → 0 included


def test_stochastic_trust_mask_is_bernoulli_of_the_ratio():
    ratio = torch.tensor([0.0, 0.25, 1.0]).expand(20000, 3)
    drawn = trust_mask(ratio, "stochastic", generator=torch.Generator().manual_seed(0))
    assert set(drawn.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(drawn.mean(0), torch.tensor([0.0, 0.25, 1.0]), atol=0.015, rtol=0)
    with pytest.raises(ValueError, match="mode"):
        trust_mask(ratio, "sometimes")


def test_token_routing_and_weights():
    k1 = torch.tensor([[1.0, 2.0, 3.0, 4.0, float("nan")]])
    outlier_kl = torch.tensor([[10.0, 20.0, 30.0, 40.0, float("inf")]])
    prefix_div = torch.tensor([[100.0, 200.0, 300.0, 400.0, float("nan")]])
    trusted = torch.tensor([[1.0, 0.0, 1.0, 0.0, 1.0]])
    prefix = torch.tensor([[0, 0, 1, 1, 0]])
    parts = tropd_token_losses(k1, outlier_kl, prefix_div, trusted, prefix, lambda_out=0.5, lambda_off=2.0)
    # the last token (padding, with NaN/inf inputs) is trusted and on-policy: only its K1 value reaches it
    assert parts["trust_region"][0, :4].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert parts["outlier"][0, :4].tolist() == [0.0, 20.0, 0.0, 0.0]
    assert parts["prefix"][0, :4].tolist() == [0.0, 0.0, 300.0, 400.0]
    assert parts["total"][0, :4].tolist() == [1.0, 10.0, 600.0, 800.0]
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    assert masked_global_mean(parts["total"], mask, None).item() == pytest.approx((1 + 10 + 600 + 800) / 4)


def test_routing_reduces_to_k1_when_everything_is_trusted():
    student = torch.randn(3, 7, requires_grad=True)
    teacher = torch.randn(3, 7)
    k1 = k1_policy_gradient_loss(student, teacher)
    parts = tropd_token_losses(k1, torch.full_like(k1, 5.0), torch.zeros(3, 7), torch.ones(3, 7), torch.zeros(3, 7))
    torch.testing.assert_close(parts["total"], k1)
    (g,) = torch.autograd.grad(parts["total"].sum(), student)
    torch.testing.assert_close(g, -(teacher - student).detach())  # −A_t, the K1 policy gradient


def test_topk_kl_matches_a_dense_renormalised_reference():
    torch.manual_seed(0)
    vocab, k = 50, 8
    h_s, h_t = torch.randn(10, 6, requires_grad=True), torch.randn(10, 10)
    w_s, w_t = torch.randn(vocab, 6, requires_grad=True), torch.randn(vocab, 10)
    chunked = chunked_topk_forward_kl(h_s, w_s, h_t, w_t, k, temperature=1.0)
    # independent reference: dense logits, renormalise the teacher's top-k, torch's KL
    z_s, z_t = h_s @ w_s.t(), h_t @ w_t.t()
    top_t, idx = z_t.topk(k, dim=-1)
    dense = F.kl_div(z_s.gather(-1, idx).log_softmax(-1), top_t.log_softmax(-1), log_target=True, reduction="none")
    torch.testing.assert_close(chunked, dense.sum(-1))
    grads = torch.autograd.grad(chunked.sum(), (h_s, w_s))
    ref_grads = torch.autograd.grad(dense.sum(), (h_s, w_s))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)


def test_schedules_at_chosen_steps():
    # defaults: 0.5 → 0 linearly over the first 40% of 100 steps
    values = [linear_decay(s, 100, 0.5, 0.4) for s in (0, 10, 20, 40, 41, 100)]
    assert values == pytest.approx([0.5, 0.375, 0.25, 0.0, 0.0, 0.0])
    assert linear_decay(50, 100, 1.0, 1.0) == pytest.approx(0.5)
    assert linear_decay(7, 0, 0.3, 0.4) == 0.3  # unknown length: constant
    with pytest.raises(ValueError, match="share"):
        linear_decay(0, 10, 0.5, 0.0)


def test_prefix_length_and_provenance_mask():
    assert prefix_length(10, 0.5, ends_with_eos=False) == 5
    assert prefix_length(7, 0.5, ends_with_eos=False) == 3
    assert prefix_length(10, 1.0, ends_with_eos=True) == 9  # the student writes at least the EOS
    assert prefix_length(10, 1.0, ends_with_eos=False) == 10
    assert prefix_length(1, 0.9, ends_with_eos=True) == 0
    assert provenance_mask([0, 2, 4], 3).tolist() == [[0, 0, 0], [1, 1, 0], [1, 1, 1]]


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"trust_threshold": -0.1}, "trust_threshold"),
        ({"trust_threshold": 1.5}, "trust_threshold"),
        ({"outlier_top_k": 0}, "outlier_top_k"),
        ({"guidance_prob_decay_share": 0.0}, "guidance_prob_decay_share"),
        ({"guidance_rho_decay_share": 1.2}, "guidance_rho_decay_share"),
        ({"guidance_prob_start": 1.5}, "guidance_prob_start"),
        ({"trust_mode": "soft"}, "trust_mode"),
        ({"lambda_out": -1.0}, "lambda_out"),
        ({"divergence": "jsd"}, "divergence"),
    ],
)
def test_bad_config_fails_at_config_time(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        TrOPDConfig(**tiny_training_kwargs(tmp_path), **overrides)


def test_defaults_are_the_specified_ones(tmp_path):
    config = TrOPDConfig(**tiny_training_kwargs(tmp_path))
    assert (config.trust_mode, config.trust_threshold, config.outlier_top_k) == ("threshold", 1.0, 64)
    assert config.trust_region_loss == "k1"
    assert config.outlier_tail_bucket
    assert (config.lambda_out, config.lambda_off, config.beta, config.divergence) == (1.0, 1.0, 0.0, "k1")
    assert (config.guidance_prob_start, config.guidance_rho_start) == (0.5, 0.5)
    assert (config.guidance_prob_decay_share, config.guidance_rho_decay_share) == (0.4, 0.4)
    assert config.guidance_enabled


def test_chunked_topk_kl_equals_the_dense_one_and_its_gradients():
    torch.manual_seed(1)
    vocab, k, temperature = 40, 5, 0.7
    h_s, h_t = torch.randn(13, 6, requires_grad=True), torch.randn(13, 9)
    w_s, w_t = torch.randn(vocab, 6, requires_grad=True), torch.randn(vocab, 9)
    ours = chunked_topk_forward_kl(h_s, w_s, h_t, w_t, k, temperature)
    core = topk_forward_kl(h_t @ w_t.T / temperature, h_s @ w_s.T / temperature, k)
    torch.testing.assert_close(ours, core)
    for g, r in zip(torch.autograd.grad(ours.sum(), (h_s, w_s)), torch.autograd.grad(core.sum(), (h_s, w_s))):
        torch.testing.assert_close(g, r)
    with pytest.raises(ValueError, match="k must be"):
        chunked_topk_forward_kl(h_s, w_s, h_t, w_t, vocab + 1)


@pytest.mark.parametrize("token_chunk_size", [3, 64])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_topk_kl_with_tail_bucket_equals_the_dense_one(token_chunk_size, temperature, monkeypatch):
    """Values and gradients (hidden and head) against the dense tail-bucket KL, several chunk sizes."""
    import trl_opd.ops.chunked as chunked

    monkeypatch.setattr(chunked, "VOCAB_CHUNK_SIZE", 16)  # several vocabulary tiles in the student's normaliser
    torch.manual_seed(2)
    vocab, k = 45, 6
    h_s, h_t = torch.randn(11, 6, requires_grad=True), torch.randn(11, 9)
    w_s, w_t = torch.randn(vocab, 6, requires_grad=True), torch.randn(vocab, 9)
    monkeypatch.setattr(chunked, "TOKEN_CHUNK_SIZE", token_chunk_size)
    ours = chunked_topk_forward_kl(h_s, w_s, h_t, w_t, k, temperature, tail_bucket=True)
    dense = topk_forward_kl(h_t @ w_t.T / temperature, h_s @ w_s.T / temperature, k, tail_bucket=True)
    torch.testing.assert_close(ours, dense)
    for g, r in zip(torch.autograd.grad(ours.sum(), (h_s, w_s)), torch.autograd.grad(dense.sum(), (h_s, w_s))):
        torch.testing.assert_close(g, r)


def test_tail_bucket_pushes_the_student_off_a_token_the_teacher_rejects():
    """The case from review: p_S(y) ≈ 0.996, p_T(y) ≈ 1e-6. Renormalised over the teacher's top-k the loss has no
    gradient on the student's logit of y; with the tail bucket it has one, and a step along it lowers p_S(y)."""
    vocab, k, y = 32, 4, 31
    w = torch.eye(vocab)  # hidden state = logits
    teacher = torch.zeros(vocab)
    teacher[0], teacher[y] = 6.0, -8.0  # a confident teacher that rejects y: p_T(y) ~ 1e-6
    student = torch.zeros(vocab)
    student[y] = 8.9  # p_S(y) ~ 0.996
    student = student.requires_grad_()
    p_s = student.softmax(-1)[y].item()
    assert p_s > 0.99 and teacher.softmax(-1)[y].item() < 1e-5
    renormalised = chunked_topk_forward_kl(student[None], w, teacher[None], w, k)
    (g_renorm,) = torch.autograd.grad(renormalised.sum(), student)
    assert g_renorm[y].item() == 0.0
    tail = chunked_topk_forward_kl(student[None], w, teacher[None], w, k, tail_bucket=True)
    (g_tail,) = torch.autograd.grad(tail.sum(), student)
    assert g_tail[y].item() > 0.5  # descent lowers the logit of y
    stepped = (student - 0.5 * g_tail).softmax(-1)[y].item()
    assert stepped < p_s
