# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""The forward KL over the teacher's top-k, from hidden states and `lm_head` weights, without full logits.

The teacher's top-k ids and logits come from `[token_chunk_size, VOCAB_CHUNK_SIZE]` fp32 tiles, projected and
post-processed exactly as in the fused pass ([`~trl_opd.ops.chunked`]); the student's logits exist only on those ids,
and its (and the teacher's) log-normaliser can come from the fused pass, so no student `(n, V)` tile is ever computed.
"""

from __future__ import annotations

import torch
from trl.kernels.chunked_divergence import _project
from trl.kernels.chunked_logprob import ChunkedLogProbFunction
from trl.trainer.utils import maybe_gather_lm_head_ctx

from .chunked import PLAIN_HEAD, LogitHead, _transform_tile_, apply_logit_head, vocab_chunk_size
from .divergences import forward_kl, log1mexp


def chunked_topk_forward_kl(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_weight: torch.Tensor,
    k: int,
    temperature: float = 1.0,
    token_chunk_size: int = 256,
    student_head: LogitHead = PLAIN_HEAD,
    teacher_head: LogitHead = PLAIN_HEAD,
    tail_bucket: bool = False,
    student_log_z: torch.Tensor | None = None,
    teacher_log_z: torch.Tensor | None = None,
) -> torch.Tensor:
    """Forward KL over the teacher's top-k, renormalised: `KL(p̄_T || p̄_S)`, `p̄(v) = p(v)/Σ_{u∈K} p(u)` (see
    [`~trl_opd.ops.topk_forward_kl`]), without full logits. `(..., H_s), (V, H_s), (..., H_t), (V, H_t) -> (...)`.

    With `tail_bucket`, nothing is renormalised and the mass outside `K` is one more bucket:
    `Σ_{v∈K} p_T(v) log(p_T(v)/p_S(v)) + p_T(¬K) log(p_T(¬K)/p_S(¬K))`, so a student that puts its mass outside the
    teacher's top-k (e.g. on a token the teacher rejects) is pushed back. It needs both log-normalisers `(...)`:
    `student_log_z` (differentiable) and `teacher_log_z`, e.g. from [`~trl_opd.ops.fused_distillation_stats`]; when
    not given, the student's comes from TRL's `ChunkedLogProbFunction` (`log Z = z_y − log p(y)` at the teacher's
    top-1 id `y`) and the teacher's from its own tiles.

    Logits are `z = head(h·Wᵀ + b)/T` per model ([`LogitHead`]). The teacher's top-k comes from
    [`teacher_topk`] (fp32 tiles, no gradient); the student's logits on those ids from
    [`GatheredLogitsFunction`], which never keeps the gathered `(n, k, H_s)` head rows.
    """
    shape = student_hidden.shape[:-1]
    hs = student_hidden.reshape(-1, student_hidden.size(-1))
    ht = teacher_hidden.reshape(-1, teacher_hidden.size(-1))
    params = (student_weight, teacher_weight, student_head.bias, teacher_head.bias)
    with maybe_gather_lm_head_ctx(*params):  # ZeRO-3: heads read outside their forward
        if k < 1 or k > teacher_weight.size(0):
            raise ValueError(f"k must be in [1, {teacher_weight.size(0)}], got {k}")
        need_log_z = tail_bucket and teacher_log_z is None
        teacher_top, idx, own_log_z = teacher_topk(
            ht, teacher_weight, k, temperature, teacher_head, token_chunk_size, need_log_z
        )
        raw = GatheredLogitsFunction.apply(hs, student_weight, student_head.bias, idx, token_chunk_size)
        student_top = apply_logit_head(raw, student_head) / temperature  # (N, k)
        if tail_bucket and student_log_z is None:
            top1 = teacher_top.argmax(-1, keepdim=True)  # (N, 1)
            student_log_z = _log_z_at(
                hs, student_weight, idx.gather(-1, top1), student_top.gather(-1, top1), temperature, student_head
            )
    if not tail_bucket:
        return forward_kl(teacher_top.log_softmax(-1), student_top.log_softmax(-1)).view(shape)
    teacher_log_z = own_log_z if teacher_log_z is None else teacher_log_z.reshape(-1).float()
    teacher_in = teacher_top - teacher_log_z.unsqueeze(-1)  # log p_T(v), v ∈ K
    student_in = student_top - student_log_z.reshape(-1).unsqueeze(-1)  # log p_S(v), v ∈ K
    teacher_tail, student_tail = log1mexp(teacher_in.logsumexp(-1)), log1mexp(student_in.logsumexp(-1))
    tail = torch.nan_to_num(teacher_tail.exp() * (teacher_tail - student_tail), nan=0.0)
    return (forward_kl(teacher_in, student_in) + tail).view(shape)


@torch.no_grad()
def teacher_topk(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    k: int,
    temperature: float = 1.0,
    head: LogitHead = PLAIN_HEAD,
    token_chunk_size: int = 256,
    with_log_z: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The `k` largest logits `z = head(h·Wᵀ + b)/T` of each position, `(N, H), (V, H) -> (N, k), (N, k), (N,)?`:
    fp32 values (in no particular order), their ids, and `log Σ_v exp z[v]` when `with_log_z`. No gradient.

    The projection runs on `[token_chunk_size, VOCAB_CHUNK_SIZE]` fp32 tiles (the fused pass's tiles) with a running
    top-k over the vocabulary tiles; the head must already be gathered under ZeRO-3.
    """
    n_tok, vocab = hidden.size(0), weight.size(0)
    values = torch.empty((n_tok, k), device=hidden.device)
    ids = torch.empty((n_tok, k), dtype=torch.long, device=hidden.device)
    log_z = torch.empty(n_tok, device=hidden.device) if with_log_z else None
    buf = torch.empty((max(1, min(n_tok, token_chunk_size)), min(vocab, vocab_chunk_size())), device=hidden.device)
    for a in range(0, n_tok, token_chunk_size):
        sl = slice(a, min(a + token_chunk_size, n_tok))
        values[sl], ids[sl], chunk_log_z = _topk_rows(hidden[sl], weight, k, 1.0 / temperature, head, buf, with_log_z)
        if log_z is not None:
            log_z[sl] = chunk_log_z
    return values, ids, log_z


def _topk_rows(hidden, weight, k, inv_t, head, buf, with_log_z):
    """One token chunk of [`teacher_topk`]: `(n, H), (V, H) -> (n, k), (n, k), (n,)?`."""
    n, vocab = hidden.size(0), weight.size(0)
    best, best_ids, log_z = None, None, None
    for v0 in range(0, vocab, vocab_chunk_size()):
        v1 = min(v0 + vocab_chunk_size(), vocab)
        tile = buf[:n, : v1 - v0]
        _project(tile, hidden, weight, head.bias, v0, v1, hidden.dtype)
        _transform_tile_(tile, head, inv_t)
        if with_log_z:
            tile_log_z = tile.logsumexp(-1)
            log_z = tile_log_z if log_z is None else torch.logaddexp(log_z, tile_log_z)
        top, ids = tile.topk(min(k, v1 - v0), dim=-1, sorted=False)
        ids += v0
        if best is not None:  # merge with the running top-k
            top, pick = torch.cat([best, top], -1).topk(min(k, best.size(-1) + top.size(-1)), dim=-1, sorted=False)
            ids = torch.cat([best_ids, ids], -1).gather(-1, pick)
        best, best_ids = top, ids
    return best, best_ids, log_z


#: A head of at most this many rows per gathered id is projected densely per chunk (`n·V·H` multiply-adds) rather
#: than gathered (`n·k·H` scattered reads, recomputed in the backward): measured on CPU, the two cost about the same
#: at `V ≈ 16·k`.
DENSE_ROWS_PER_ID = 16


class GatheredLogitsFunction(torch.autograd.Function):
    """The raw logits of given ids only, `z[n, j] = h_n · W[idx[n, j]] + b[idx[n, j]]` in fp32.

    `(N, H), (V, H), (V,)?, (N, k) -> (N, k)`. Per chunk of `chunk` positions the `(n, k, H)` head rows are gathered
    in the forward and again in the backward (never kept), or, for a narrow head (`V ≤ DENSE_ROWS_PER_ID·k`), the
    `(n, V)` tile is projected and its `k` columns picked; same values either way. Gradients flow to `h`, `W` (a
    dense `(V, H)` tensor, like an embedding's) and `b`. Under ZeRO-3 the head is gathered in both passes.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, idx, chunk):  # noqa: D102
        out = torch.empty(idx.shape, device=hidden.device)
        with maybe_gather_lm_head_ctx(weight, bias):
            dense = weight.size(0) <= DENSE_ROWS_PER_ID * idx.size(-1)
            for sl in _slices(hidden.size(0), chunk):
                if dense:
                    out[sl] = (hidden[sl].float() @ weight.float().t()).gather(-1, idx[sl])
                else:
                    out[sl] = torch.bmm(_rows(weight, idx[sl]), hidden[sl].float().unsqueeze(-1)).squeeze(-1)
            if bias is not None:
                out += bias.float()[idx]
        ctx.save_for_backward(hidden, weight, bias, idx)
        ctx.chunk, ctx.dense = chunk, dense
        return out

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        hidden, weight, bias, idx = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad = grad.float().contiguous()
        g_h = torch.empty(hidden.shape, device=hidden.device) if need_h else None
        with maybe_gather_lm_head_ctx(weight, bias):  # shapes known once gathered (ZeRO-3)
            g_w = torch.zeros(weight.shape, device=weight.device) if need_w else None
            for sl in _slices(hidden.size(0), ctx.chunk):
                step = _dense_grads_ if ctx.dense else _gathered_grads_
                step(grad[sl], hidden[sl], weight, idx[sl], None if g_h is None else g_h[sl], g_w)
            g_b = None
            if need_b:
                g_b = torch.zeros(weight.size(0), device=grad.device).index_add_(0, idx.reshape(-1), grad.reshape(-1))
        return (
            None if g_h is None else g_h.to(hidden.dtype),
            None if g_w is None else g_w.to(weight.dtype),
            None if g_b is None else g_b.to(bias.dtype),
            None,
            None,
        )


def _gathered_grads_(g, hidden, weight, idx, g_h, g_w) -> None:
    """One chunk of [`GatheredLogitsFunction`]'s backward on gathered rows: `g` `(n, k)` into `g_h` `(n, H)` (written)
    and `g_w` `(V, H)` (accumulated), either None."""
    if g_h is not None:
        g_h.copy_(torch.bmm(g.unsqueeze(1), _rows(weight, idx)).squeeze(1))
    if g_w is not None:
        outer = g.unsqueeze(-1) * hidden.float().unsqueeze(1)  # (n, k, H)
        g_w.index_add_(0, idx.reshape(-1), outer.reshape(-1, hidden.size(-1)))


def _dense_grads_(g, hidden, weight, idx, g_h, g_w) -> None:
    """The same on a dense `(n, V)` tile: `g` scattered onto the ids, then two products with the head."""
    tile = torch.zeros((g.size(0), weight.size(0)), device=g.device).scatter_add_(-1, idx, g)
    if g_h is not None:
        torch.mm(tile, weight.float(), out=g_h)
    if g_w is not None:
        g_w.addmm_(tile.t(), hidden.float())


def _slices(n: int, chunk: int) -> list[slice]:
    return [slice(a, min(a + chunk, n)) for a in range(0, n, chunk)]


def _rows(weight: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """`(V, H), (n, k) -> (n, k, H)` fp32 head rows."""
    return weight.index_select(0, idx.reshape(-1)).float().view(*idx.shape, weight.size(-1))


def _log_z_at(hidden, weight, ids, logits, temperature, head) -> torch.Tensor:
    """The student's log-normaliser `(N,)` without a full tile kept: `log Z = z_y − log p(y)` at the ids `y` `(N, 1)`
    (the teacher's top-1: a likely token, so `log p(y)` is accurate), `log p(y)` from TRL's `ChunkedLogProbFunction`;
    `logits` `(N, 1)` holds `z_y` (differentiable)."""
    logp, *_ = ChunkedLogProbFunction.apply(
        hidden,
        weight,
        head.bias,
        ids.squeeze(-1),
        temperature,
        vocab_chunk_size(),
        head.softcap,
        float(head.scale),
        (),
    )
    return logits.squeeze(-1) - logp
