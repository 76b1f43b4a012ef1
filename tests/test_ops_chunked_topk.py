# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""The top-k forward KL inside the fused pass (`ops/chunked_topk.py`) against the dense computation on full logits:
the outlier mask, values and gradients (hidden, head, head bias), several token-chunk sizes, the teacher's top-k read
off the pass's tile or projected again over several vocabulary tiles, tail bucket on and off, a softcapped/scaled head
with a bias, every divergence mode of the pass."""

import pytest
import torch

import trl_opd.ops.chunked as chunked
from trl_opd.ops import chunked_topk_forward_kl, fused_distillation_stats, topk_forward_kl
from trl_opd.ops.chunked import PLAIN_HEAD, LogitHead, apply_logit_head
from trl_opd.ops.chunked_topk import FusedOutlierKL, logits_at, teacher_topk
from trl_opd.ops.tropd import trust_cutoff, trust_ratio


N, HS, HT, V, K = 13, 6, 9, 45, 6


def _inputs(seed: int, bias: bool):
    g = torch.Generator().manual_seed(seed)
    h_s = torch.randn(N, HS, generator=g).requires_grad_()
    w_s = torch.randn(V, HS, generator=g).requires_grad_()
    h_t, w_t = torch.randn(N, HT, generator=g), torch.randn(V, HT, generator=g)
    s_bias = torch.randn(V, generator=g).requires_grad_() if bias else None
    t_bias = torch.randn(V, generator=g) if bias else None
    return h_s, w_s, h_t, w_t, s_bias, t_bias


def _logits(hidden, weight, head: LogitHead, temperature: float) -> torch.Tensor:
    raw = hidden @ weight.T + (head.bias if head.bias is not None else 0.0)
    return apply_logit_head(raw, head) / temperature


@pytest.mark.parametrize("vocab_tile", [16, 32768])
@pytest.mark.parametrize("token_chunk_size", [4, 256])
def test_teacher_topk_equals_dense(vocab_tile, token_chunk_size, monkeypatch):
    monkeypatch.setattr(chunked, "VOCAB_CHUNK_SIZE", vocab_tile)  # several vocabulary tiles, the last one ragged
    _, _, h_t, w_t, _, t_bias = _inputs(0, bias=True)
    head = LogitHead(t_bias, 0.5, 2.0)
    values, ids, log_z = teacher_topk(h_t, w_t, K, 0.7, head, token_chunk_size, with_log_z=True)
    dense = _logits(h_t, w_t, head, 0.7)
    want_values, want_ids = dense.topk(K, dim=-1)
    order = values.argsort(dim=-1, descending=True)
    torch.testing.assert_close(values.gather(-1, order), want_values)
    assert torch.equal(ids.gather(-1, order), want_ids)
    torch.testing.assert_close(log_z, dense.logsumexp(-1))
    assert teacher_topk(h_t, w_t, K, 0.7, head, token_chunk_size)[2] is None


def test_logits_at_equal_dense():
    h_s, w_s, _, _, s_bias, _ = _inputs(1, bias=True)
    idx = torch.randint(0, V, (N, K), generator=torch.Generator().manual_seed(1))
    head = LogitHead(s_bias, 0.5, 2.0)
    torch.testing.assert_close(logits_at(h_s, w_s, idx, head), _logits(h_s, w_s, head, 1.0).gather(-1, idx))


@pytest.mark.parametrize("vocab_tile", [16, 32768], ids=["tiles", "one-tile"])
@pytest.mark.parametrize("tail_bucket", [True, False], ids=["tail", "renormalised"])
@pytest.mark.parametrize("head", ["plain", "softcap"])
@pytest.mark.parametrize("beta", [0.0, 0.5])
@pytest.mark.parametrize("token_chunk_size", [4, 4096])
def test_fused_outlier_kl_equals_dense(vocab_tile, tail_bucket, head, beta, token_chunk_size, monkeypatch):
    """The fused pass's outlier KL over the teacher's top-k (tail bucket or renormalised) on softcapped, scaled, biased
    logits at `T = 0.7`, on the positions a dense trust ratio puts below the cutoff: the mask, the values, and the
    gradients (hidden, head, bias) of a loss that mixes it with the pass's other outputs, against dense logits; the
    teacher's top-k read off the pass's own tile (one tile) or projected again (several)."""
    monkeypatch.setattr(chunked, "VOCAB_CHUNK_SIZE", vocab_tile)
    monkeypatch.setattr(chunked, "TOKEN_CHUNK_SIZE", token_chunk_size)
    h_s, w_s, h_t, w_t, s_bias, t_bias = _inputs(2, bias=head != "plain")
    s_head, t_head = (
        (PLAIN_HEAD, PLAIN_HEAD) if head == "plain" else (LogitHead(s_bias, 1.0, 3.0), LogitHead(t_bias, 0.5, 2.0))
    )
    g = torch.Generator().manual_seed(3)
    targets, eligible = torch.randint(0, V, (N,), generator=g), torch.rand(N, generator=g) > 0.2
    cutoff = trust_cutoff(eligible, "stochastic", generator=g)
    outliers = FusedOutlierKL(K, tail_bucket, eligible, cutoff)
    stats = fused_distillation_stats(h_s, w_s, h_t, w_t, targets, beta, 0.7, s_head, t_head, outliers)
    z_s, z_t = _logits(h_s, w_s, s_head, 0.7), _logits(h_t, w_t, t_head, 0.7)
    pick = targets.unsqueeze(-1)
    ratio = trust_ratio(z_s.log_softmax(-1).gather(-1, pick), z_t.log_softmax(-1).gather(-1, pick)).squeeze(-1)
    want_mask = eligible & (ratio < cutoff)
    assert 0 < want_mask.sum() < N
    assert torch.equal(stats["outlier"].bool(), want_mask)
    dense = topk_forward_kl(z_t, z_s, K, tail_bucket=tail_bucket)
    want = torch.where(want_mask, dense, torch.zeros_like(dense))
    torch.testing.assert_close(stats["outlier_kl"], want, rtol=2e-5, atol=1e-5)
    plain = fused_distillation_stats(h_s, w_s, h_t, w_t, targets, beta, 0.7, s_head, t_head)
    u = torch.rand(3, N, generator=g)

    def mixed(kl, s):
        return (u[0] * kl + u[1] * s["divergence"] + u[2] * s["student_log_z"] + s["student_logp"]).sum()

    params = (h_s, w_s) if s_bias is None else (h_s, w_s, s_bias)
    got = torch.autograd.grad(mixed(stats["outlier_kl"], stats), params)
    for a, b in zip(got, torch.autograd.grad(mixed(want, plain), params)):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_fused_outlier_kl_without_outliers_or_kl():
    """No eligible position, or `with_kl=False`: the KL is 0 and the gradients are the plain pass's; the mask stays."""
    h_s, w_s, h_t, w_t, _, _ = _inputs(4, bias=False)
    targets = torch.zeros(N, dtype=torch.long)
    plain = fused_distillation_stats(h_s, w_s, h_t, w_t, targets, 0.0)
    want = torch.autograd.grad(plain["divergence"].sum(), (h_s, w_s))
    for eligible, with_kl in ((torch.zeros(N, dtype=torch.bool), True), (torch.ones(N, dtype=torch.bool), False)):
        outliers = FusedOutlierKL(K, True, eligible, torch.full((N,), 2.0), with_kl)
        stats = fused_distillation_stats(h_s, w_s, h_t, w_t, targets, 0.0, outliers=outliers)
        assert stats["outlier"].bool().tolist() == eligible.tolist()
        assert not stats["outlier_kl"].any()
        got = torch.autograd.grad((stats["divergence"] + stats["outlier_kl"]).sum(), (h_s, w_s))
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b)


def test_chunked_topk_kl_keeps_batch_shape_and_checks_k():
    h_s, w_s, h_t, w_t, _, _ = _inputs(3, bias=False)
    got = chunked_topk_forward_kl(h_s.view(1, N, HS), w_s, h_t.view(1, N, HT), w_t, K, tail_bucket=True)
    assert got.shape == (1, N)
    torch.testing.assert_close(got[0], topk_forward_kl(h_t @ w_t.T, h_s @ w_s.T, K, tail_bucket=True))
    with pytest.raises(ValueError, match="k must be"):
        chunked_topk_forward_kl(h_s, w_s, h_t, w_t, V + 1)
