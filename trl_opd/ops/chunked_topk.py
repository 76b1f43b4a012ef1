# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""The forward KL over the teacher's top-k (TrOPD's outlier loss), inside the fused pass, without full logits.

[`FusedOutlierKL`] rides on [`~trl_opd.ops.fused_distillation_stats`]: on the positions it selects (outside the trust
region), the teacher's top-k ids and logits come from the pass's own fp32 tile when one tile holds the vocabulary
(otherwise from [`teacher_topk`]'s `[token_chunk_size, VOCAB_CHUNK_SIZE]` tiles), both log-normalisers from the pass,
and its gradient joins the pass's backward tiles: no student `(n, V)` tile is ever computed for it.
"""

from __future__ import annotations

import torch
from trl.kernels.chunked_divergence import _project

from .chunked import (
    PLAIN_HEAD,
    LogitHead,
    _transform_tile_,
    apply_logit_head,
    fused_distillation_stats,
    vocab_chunk_size,
)
from .divergences import forward_kl, log1mexp
from .tropd import trust_ratio, within_cutoff


def topk_kl_parts(
    teacher_top: torch.Tensor,
    student_top: torch.Tensor,
    teacher_log_z: torch.Tensor,
    student_log_z: torch.Tensor,
    tail_bucket: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The forward KL over the teacher's top-k ids `K` and its gradient with respect to the student's logits `z_S`.

    `(m, k), (m, k), (m,), (m,) -> kl (m,), a (m,), w (m, k)`, from both models' logits on `K` and their full
    log-normalisers. Renormalised: `KL(p̄_T || p̄_S)`, `p̄(v) = p(v)/Σ_{u∈K} p(u)`; with `tail_bucket`:
    `Σ_{v∈K} p_T(v) log(p_T(v)/p_S(v)) + p_T(¬K) log(p_T(¬K)/p_S(¬K))` (see [`~trl_opd.ops.topk_forward_kl`]).
    The gradient is `∂kl/∂z_S(u) = a·p_S(u) + 1[u∈K]·w(u)` over the whole vocabulary:
    tail bucket `a = 1 − r`, `w = r·p_S − p_T` with `r = p_T(¬K)/p_S(¬K)` (so `p_S − p_T` on `K`, `(1 − r)·p_S` off
    it); renormalised `a = 0`, `w = p̄_S − p̄_T`.
    """
    t_in = teacher_top - teacher_log_z.unsqueeze(-1)  # log p_T(v), v ∈ K
    s_in = student_top - student_log_z.unsqueeze(-1)  # log p_S(v), v ∈ K
    if not tail_bucket:
        t_bar, s_bar = teacher_top.log_softmax(-1), student_top.log_softmax(-1)
        return forward_kl(t_bar, s_bar), torch.zeros_like(t_in[..., 0]), s_bar.exp() - t_bar.exp()
    t_tail, s_tail = log1mexp(t_in.logsumexp(-1)), log1mexp(s_in.logsumexp(-1))
    tail = torch.nan_to_num(t_tail.exp() * (t_tail - s_tail), nan=0.0)
    r = torch.nan_to_num((t_tail - s_tail).exp(), nan=0.0)
    return forward_kl(t_in, s_in) + tail, 1.0 - r, r.unsqueeze(-1) * s_in.exp() - t_in.exp()


class FusedOutlierKL:
    """TrOPD's outlier loss as an add-on of the fused pass ([`~trl_opd.ops.fused_distillation_stats`]); one per call.

    Position `n` is an outlier when `eligible[n]` and its trust ratio `P = min(p_T(y)/p_S(y), 1)`
    ([`~trl_opd.ops.tropd.trust_ratio`] of the pass's log-probs) is below `cutoff[n]` (the threshold `δ`, or a
    uniform draw for the stochastic mask: [`~trl_opd.ops.tropd.trust_cutoff`]). On outliers the pass returns
    [`topk_kl_parts`]'s KL over the teacher's top-`k` (tail bucket or renormalised), elsewhere 0; this object keeps
    the gradient's parts between the forward and the backward. `eligible`, `cutoff`: `(...)`, flattened like the pass.
    With `with_kl=False` only the mask is computed (the KL stays 0).
    """

    def __init__(self, k: int, tail_bucket: bool, eligible: torch.Tensor, cutoff: torch.Tensor, with_kl: bool = True):
        if k < 1:
            raise ValueError(f"k must be ≥ 1, got {k}")
        self.k, self.tail_bucket, self.with_kl = k, tail_bucket, with_kl
        self.eligible, self.cutoff = eligible.reshape(-1).bool(), cutoff.reshape(-1).float()
        self._dense = torch.zeros(self.eligible.shape, device=self.eligible.device)  # a (N,)
        self._rows, self._ids, self._weights = [], [], []  # per chunk: (m,) global rows, (m, k) ids, (m, k) w
        self._saved = None  # the three concatenated, and the largest id, at the first backward tile

    def forward_chunk(self, sl: slice, stats, tiles, models, heads: tuple[LogitHead, LogitHead], inv_t: float):
        """One token chunk `sl` of `n` positions: `stats = (log p_S(y), log p_T(y), log Z_S, log Z_T)` each `(n,)`,
        `tiles` the chunk's whole-vocabulary `(zs, zt)` logits `(n, V)` or None, `models = (h_s, W_s, h_t, W_t)`
        -> outlier KL `(n,)`, outlier mask `(n,)` bool."""
        s_logp, t_logp, s_log_z, t_log_z = stats
        outlier = self.eligible[sl] & ~within_cutoff(trust_ratio(s_logp, t_logp), self.cutoff[sl])
        kl = torch.zeros_like(s_logp)
        local = outlier.nonzero().squeeze(-1)
        if local.numel() == 0 or not self.with_kl:
            return kl, outlier
        h_s, s_weight, h_t, t_weight = models
        if self.k > t_weight.size(0):
            raise ValueError(f"k must be in [1, {t_weight.size(0)}], got {self.k}")
        if tiles is not None:
            zs, zt = tiles
            teacher_top, ids = zt[local].topk(self.k, dim=-1, sorted=False)
            student_top = zs[local.unsqueeze(-1), ids]  # (m, k), without copying the rows
        else:
            teacher_top, ids, _ = teacher_topk(h_t[local], t_weight, self.k, 1.0 / inv_t, heads[1], local.numel())
            student_top = logits_at(h_s[local], s_weight, ids, heads[0]) * inv_t
        values, dense, sparse = topk_kl_parts(
            teacher_top, student_top, t_log_z[local], s_log_z[local], self.tail_bucket
        )
        kl[local] = values
        rows = local + sl.start
        self._dense[rows] = dense
        self._rows.append(rows)
        self._ids.append(ids)
        self._weights.append(sparse)
        return kl, outlier

    def dense_coefficient(self, g_out: torch.Tensor, sl: slice) -> torch.Tensor:
        """`(n,)`: `g_out·a` on the chunk, the outlier KL's share of the `p_S` coefficient in the backward tile."""
        return g_out[sl].float() * self._dense[sl]

    def add_sparse_grad_(self, grad: torch.Tensor, g_out: torch.Tensor, sl: slice, v0: int, v1: int) -> None:
        """Add `g_out·w` on the teacher's top-k ids inside the tile `[v0, v1)` of chunk `sl` to `grad` `(n, v1 − v0)`."""
        if not self._rows:
            return
        if self._saved is None:  # the forward's chunks, concatenated once per backward
            rows, ids, weights = (torch.cat(x) for x in (self._rows, self._ids, self._weights))
            self._saved = (rows, ids, weights, int(ids.max()))
        rows, ids, weights, max_id = self._saved
        if sl.start > 0 or sl.stop < self.eligible.numel():  # several token chunks: this one's rows
            lo, hi = torch.searchsorted(rows, torch.tensor([sl.start, sl.stop], device=rows.device)).tolist()
            rows, ids, weights = rows[lo:hi], ids[lo:hi], weights[lo:hi]
        values = g_out.float()[rows].unsqueeze(-1) * weights  # (m, k)
        r = (rows - sl.start).unsqueeze(-1).expand_as(ids)
        if v0 > 0 or v1 <= max_id:  # several vocabulary tiles: this one's ids
            inside = (ids >= v0) & (ids < v1)
            r, ids, values = r[inside], ids[inside], values[inside]
        grad.index_put_((r, ids - v0), values, accumulate=True)


def chunked_topk_forward_kl(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_weight: torch.Tensor,
    k: int,
    temperature: float = 1.0,
    student_head: LogitHead = PLAIN_HEAD,
    teacher_head: LogitHead = PLAIN_HEAD,
    tail_bucket: bool = False,
) -> torch.Tensor:
    """Forward KL over the teacher's top-k at every position (see [`~trl_opd.ops.topk_forward_kl`]), without full
    logits. `(..., H_s), (V, H_s), (..., H_t), (V, H_t) -> (...)`: the fused pass with every position an outlier
    ([`FusedOutlierKL`]); differentiable in the student's hidden states, head and head bias."""
    if k < 1 or k > teacher_weight.size(0):
        raise ValueError(f"k must be in [1, {teacher_weight.size(0)}], got {k}")
    shape = student_hidden.shape[:-1]
    everywhere = torch.ones(shape, dtype=torch.bool, device=student_hidden.device)
    outliers = FusedOutlierKL(k, tail_bucket, everywhere, torch.full(shape, torch.inf, device=everywhere.device))
    targets = torch.zeros(shape, dtype=torch.long, device=everywhere.device)
    stats = fused_distillation_stats(
        student_hidden,
        student_weight,
        teacher_hidden,
        teacher_weight,
        targets,
        0.0,
        temperature,
        student_head,
        teacher_head,
        outliers,
    )
    return stats["outlier_kl"]


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


@torch.no_grad()
def logits_at(
    hidden: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor, head: LogitHead = PLAIN_HEAD
) -> torch.Tensor:
    """The fp32 logits `head(h_n · W[ids[n, j]] + b[ids[n, j]])` of given ids only, before the temperature, from the
    gathered `(n, k, H)` head rows. `(n, H), (V, H), (n, k) -> (n, k)`. No gradient."""
    rows = weight.index_select(0, ids.reshape(-1)).float().view(*ids.shape, weight.size(-1))
    raw = torch.bmm(rows, hidden.float().unsqueeze(-1)).squeeze(-1)
    if head.bias is not None:
        raw = raw + head.bias.float()[ids]
    return apply_logit_head(raw, head)
