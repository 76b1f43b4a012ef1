# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""The chunked top-k forward KL (`ops/chunked_topk.py`) against the dense computation on full logits: values and
gradients (hidden, head, head bias), several chunk sizes, both student paths (gathered rows, dense tile), tail bucket
on and off, a softcapped/scaled head with a bias, the log-normalisers given by the fused pass or computed here."""

import pytest
import torch

import trl_opd.ops.chunked as chunked
import trl_opd.ops.chunked_topk as chunked_topk
from trl_opd.ops import chunked_topk_forward_kl, fused_distillation_stats, topk_forward_kl
from trl_opd.ops.chunked import PLAIN_HEAD, LogitHead, apply_logit_head
from trl_opd.ops.chunked_topk import GatheredLogitsFunction, teacher_topk


N, HS, HT, V, K = 13, 6, 9, 45, 6
STUDENT_PATHS = {"gathered": 0, "dense": 10**6}  # DENSE_ROWS_PER_ID


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


@pytest.mark.parametrize("path", STUDENT_PATHS)
@pytest.mark.parametrize("token_chunk_size", [4, 64])
def test_gathered_logits_equal_dense(path, token_chunk_size, monkeypatch):
    monkeypatch.setattr(chunked_topk, "DENSE_ROWS_PER_ID", STUDENT_PATHS[path])
    h_s, w_s, _, _, s_bias, _ = _inputs(1, bias=True)
    idx = torch.randint(0, V, (N, K), generator=torch.Generator().manual_seed(1))
    got = GatheredLogitsFunction.apply(h_s, w_s, s_bias, idx, token_chunk_size)
    want = (h_s @ w_s.T + s_bias).gather(-1, idx)
    torch.testing.assert_close(got, want)
    u = torch.randn(N, K)
    grads = torch.autograd.grad((u * got).sum(), (h_s, w_s, s_bias))
    for name, a, b in zip(
        ("hidden", "weight", "bias"), grads, torch.autograd.grad((u * want).sum(), (h_s, w_s, s_bias))
    ):
        torch.testing.assert_close(a, b, msg=name)


@pytest.mark.parametrize("path", STUDENT_PATHS)
@pytest.mark.parametrize("tail_bucket", [True, False], ids=["tail", "renormalised"])
@pytest.mark.parametrize("head", ["plain", "softcap"])
@pytest.mark.parametrize("log_z", ["fused", "own"])
@pytest.mark.parametrize("token_chunk_size", [4, 64])
def test_chunked_topk_kl_equals_dense(path, tail_bucket, head, log_z, token_chunk_size, monkeypatch):
    """`KL` over the teacher's top-k (tail bucket or renormalised) on softcapped, scaled, biased logits at `T = 0.7`;
    gradients through the gathered logits and, with the tail bucket, the student's log-normaliser."""
    monkeypatch.setattr(chunked, "VOCAB_CHUNK_SIZE", 16)
    monkeypatch.setattr(chunked_topk, "DENSE_ROWS_PER_ID", STUDENT_PATHS[path])
    h_s, w_s, h_t, w_t, s_bias, t_bias = _inputs(2, bias=head != "plain")
    s_head, t_head = (
        (PLAIN_HEAD, PLAIN_HEAD) if head == "plain" else (LogitHead(s_bias, 1.0, 3.0), LogitHead(t_bias, 0.5, 2.0))
    )
    temperature = 0.7
    log_zs = {}
    if log_z == "fused":  # the normalisers as the trainer passes them: differentiable student, constant teacher
        stats = fused_distillation_stats(
            h_s, w_s, h_t, w_t, torch.zeros(N, dtype=torch.long), 0.0, temperature, s_head, t_head
        )
        log_zs = {"student_log_z": stats["student_log_z"], "teacher_log_z": stats["teacher_log_z"]}
    got = chunked_topk_forward_kl(
        h_s, w_s, h_t, w_t, K, temperature, token_chunk_size, s_head, t_head, tail_bucket, **log_zs
    )
    want = topk_forward_kl(
        _logits(h_t, w_t, t_head, temperature), _logits(h_s, w_s, s_head, temperature), K, tail_bucket=tail_bucket
    )
    torch.testing.assert_close(got, want)
    params = (h_s, w_s) if s_bias is None else (h_s, w_s, s_bias)
    u = torch.rand(N)
    for a, b in zip(torch.autograd.grad((u * got).sum(), params), torch.autograd.grad((u * want).sum(), params)):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b)


def test_chunked_topk_kl_keeps_batch_shape_and_checks_k():
    h_s, w_s, h_t, w_t, _, _ = _inputs(3, bias=False)
    got = chunked_topk_forward_kl(h_s.view(1, N, HS), w_s, h_t.view(1, N, HT), w_t, K, tail_bucket=True)
    assert got.shape == (1, N)
    with pytest.raises(ValueError, match="k must be"):
        chunked_topk_forward_kl(h_s, w_s, h_t, w_t, V + 1)
