# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""Chunked statistics from hidden states against the dense computation on full logits (values and gradients)."""

import pytest
import torch

import trl_opd.ops.chunked as chunked
from trl_opd.ops import (
    chunked_topk_forward_kl,
    fused_distillation_stats,
    generalized_jsd,
    masked_global_mean,
    token_logprobs_and_entropy,
    topk_forward_kl,
)


B, T, HS, HT, V = 2, 7, 8, 12, 61


@pytest.fixture
def inputs():
    g = torch.Generator().manual_seed(0)
    student_hidden = torch.randn(B, T, HS, generator=g, requires_grad=True)
    student_weight = torch.randn(V, HS, generator=g).mul(0.5).requires_grad_()
    teacher_hidden = torch.randn(B, T, HT, generator=g)
    teacher_weight = torch.randn(V, HT, generator=g).mul(0.5)
    targets = torch.randint(0, V, (B, T), generator=g)
    return student_hidden, student_weight, teacher_hidden, teacher_weight, targets


def dense(student_hidden, student_weight, teacher_hidden, teacher_weight, targets, beta, temperature):
    s = (student_hidden @ student_weight.T / temperature).log_softmax(-1)
    t = (teacher_hidden @ teacher_weight.T / temperature).log_softmax(-1)
    pick = targets.unsqueeze(-1)
    return {
        "student_log_z": (student_hidden @ student_weight.T / temperature).logsumexp(-1),
        "teacher_log_z": (teacher_hidden @ teacher_weight.T / temperature).logsumexp(-1),
        "divergence": generalized_jsd(t, s, beta),
        "student_logp": s.gather(-1, pick).squeeze(-1),
        "teacher_logp": t.gather(-1, pick).squeeze(-1),
        "student_entropy": -(s.exp() * s).sum(-1),
        "teacher_entropy": -(t.exp() * t).sum(-1),
    }


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("small_chunks", [False, True])
def test_fused_stats_equal_dense(inputs, beta, temperature, small_chunks, monkeypatch):
    if small_chunks:  # several token chunks and vocabulary tiles, the last ones ragged
        monkeypatch.setattr(chunked, "TOKEN_CHUNK_SIZE", 5)
        monkeypatch.setattr(chunked, "VOCAB_CHUNK_SIZE", 16)
    got = fused_distillation_stats(*inputs, beta, temperature)
    want = dense(*inputs, beta, temperature)
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=2e-5, rtol=1e-4, msg=key)
    mask = torch.ones(B, T)
    mask[0, :3] = 0  # padding
    w = torch.randn(B, T)
    grads = torch.autograd.grad(
        masked_global_mean(got["divergence"] + w * got["student_logp"], mask, None), inputs[:2]
    )
    ref = torch.autograd.grad(
        masked_global_mean(want["divergence"] + w * want["student_logp"], mask, None), inputs[:2]
    )
    for g, r in zip(grads, ref):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, r, atol=2e-5, rtol=1e-4)


def test_padding_is_ignored(inputs):
    student_hidden, student_weight, teacher_hidden, teacher_weight, targets = inputs
    mask = torch.ones(B, T)
    mask[1, -2:] = 0
    stats = fused_distillation_stats(*inputs, 0.5)
    loss = masked_global_mean(stats["divergence"], mask, None)
    # garbage at the padded positions changes nothing
    noisy_hidden = student_hidden.detach().clone()
    noisy_hidden[1, -2:] = 1e4
    stats2 = fused_distillation_stats(noisy_hidden, student_weight, teacher_hidden, teacher_weight, targets, 0.5)
    torch.testing.assert_close(masked_global_mean(stats2["divergence"], mask, None), loss)


def test_token_logprobs_and_entropy_equal_dense(inputs):
    student_hidden, student_weight, _, _, targets = inputs
    logp, entropy = token_logprobs_and_entropy(student_hidden, student_weight, targets, temperature=0.9)
    dense_logp = (student_hidden @ student_weight.T / 0.9).log_softmax(-1)
    torch.testing.assert_close(logp, dense_logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(entropy, -(dense_logp.exp() * dense_logp).sum(-1), atol=1e-5, rtol=1e-4)


def test_chunked_topk_equals_dense(inputs):
    student_hidden, student_weight, teacher_hidden, teacher_weight, _ = inputs
    got = chunked_topk_forward_kl(student_hidden, student_weight, teacher_hidden, teacher_weight, k=5)
    want = topk_forward_kl(teacher_hidden @ teacher_weight.T, student_hidden @ student_weight.T, 5)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    g1 = torch.autograd.grad(got.sum(), student_hidden)[0]
    g2 = torch.autograd.grad(want.sum(), student_hidden)[0]
    torch.testing.assert_close(g1, g2, atol=1e-5, rtol=1e-4)


def test_masked_global_mean_uses_global_count_and_ignores_nan():
    values = torch.tensor([[1.0, float("nan")], [3.0, 5.0]])
    mask = torch.tensor([[1, 0], [1, 1]])
    assert masked_global_mean(values, mask, None).item() == pytest.approx(3.0)
    assert masked_global_mean(values, mask, torch.tensor(6.0)).item() == pytest.approx(1.5)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize(
    "student_post,teacher_post",
    [((1.0, 3.0), (1.0, 2.5)), ((0.0625, None), (4.0, None)), ((0.5, 2.0), (1.0, None))],
    ids=["softcap", "scale", "both"],
)
def test_fused_stats_with_bias_scale_softcap_equal_dense(inputs, beta, student_post, teacher_post, monkeypatch):
    """Gemma-style softcap, Cohere/Granite-style scale and an `lm_head` bias, as TRL's DistillationTrainer applies
    them: `z = c·tanh(s·(h·Wᵀ + b)/c) / T`; values and gradients (hidden, weight and bias) against full logits."""
    from trl_opd.ops.chunked import LogitHead, apply_logit_head

    monkeypatch.setattr(chunked, "TOKEN_CHUNK_SIZE", 5)
    monkeypatch.setattr(chunked, "VOCAB_CHUNK_SIZE", 16)
    g = torch.Generator().manual_seed(1)
    s_bias = torch.randn(V, generator=g).requires_grad_()
    t_bias = torch.randn(V, generator=g)
    student_head, teacher_head = LogitHead(s_bias, *student_post), LogitHead(t_bias, *teacher_post)
    h_s, w_s, h_t, w_t, targets = inputs
    temperature = 0.8
    got = fused_distillation_stats(h_s, w_s, h_t, w_t, targets, beta, temperature, student_head, teacher_head)
    s = (apply_logit_head(h_s @ w_s.T + s_bias, student_head) / temperature).log_softmax(-1)
    t = (apply_logit_head(h_t @ w_t.T + t_bias, teacher_head) / temperature).log_softmax(-1)
    want = {
        "student_log_z": (apply_logit_head(h_s @ w_s.T + s_bias, student_head) / temperature).logsumexp(-1),
        "teacher_log_z": (apply_logit_head(h_t @ w_t.T + t_bias, teacher_head) / temperature).logsumexp(-1),
        "divergence": generalized_jsd(t, s, beta),
        "student_logp": s.gather(-1, targets.unsqueeze(-1)).squeeze(-1),
        "teacher_logp": t.gather(-1, targets.unsqueeze(-1)).squeeze(-1),
        "student_entropy": -(s.exp() * s).sum(-1),
        "teacher_entropy": -(t.exp() * t).sum(-1),
    }
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=2e-5, rtol=1e-4, msg=key)
    w, u = torch.randn(B, T, generator=g), torch.randn(B, T, generator=g)
    params = (h_s, w_s, s_bias)
    grads = torch.autograd.grad((got["divergence"] + w * got["student_logp"] + u * got["student_log_z"]).sum(), params)
    want_grads = torch.autograd.grad(
        (want["divergence"] + w * want["student_logp"] + u * want["student_log_z"]).sum(), params
    )
    for name, a, b in zip(("hidden", "weight", "bias"), grads, want_grads):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4, msg=name)


def test_token_logprobs_with_bias_scale_softcap_equal_dense(inputs):
    from trl_opd.ops.chunked import LogitHead, apply_logit_head

    h_s, w_s, _, _, targets = inputs
    head = LogitHead(torch.randn(V), 0.5, 2.0)
    logp, entropy = token_logprobs_and_entropy(h_s, w_s, targets, 0.9, head)
    dense_logp = (apply_logit_head(h_s @ w_s.T + head.bias, head) / 0.9).log_softmax(-1)
    torch.testing.assert_close(logp, dense_logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1), atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(entropy, -(dense_logp.exp() * dense_logp).sum(-1), atol=2e-5, rtol=1e-4)
