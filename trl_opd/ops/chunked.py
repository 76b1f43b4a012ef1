# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""Memory-bounded student/teacher statistics computed from hidden states and `lm_head` weights.

No function here ever materialises the `(B, T, V)` logits of a model: the projection runs on
`[TOKEN_CHUNK_SIZE, VOCAB_CHUNK_SIZE]` tiles (TRL's own tiling, `trl.kernels.chunked_divergence`), and the backward
recomputes the tiles. Inputs are flattened to `N = B·T` positions; callers mask afterwards.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Protocol

import torch
from trl.kernels.chunked_divergence import TOKEN_CHUNK_SIZE, VOCAB_CHUNK_SIZE, _jsd_tile, _project
from trl.kernels.chunked_logprob import ChunkedLogProbFunction
from trl.trainer.utils import maybe_gather_lm_head_ctx


def vocab_chunk_size() -> int:
    """This module's `VOCAB_CHUNK_SIZE`, read at call time (tests shrink it to exercise several vocabulary tiles)."""
    return VOCAB_CHUNK_SIZE


def _divergence_mode(beta: float) -> int:
    return 0 if beta == 0.0 else 1 if beta == 1.0 else 2


class LogitHead(NamedTuple):
    """How a model turns its projection `h·Wᵀ` into logits: `z = c·tanh(s·(h·Wᵀ + b) / c)` (no tanh when `c` is None).

    `bias` `(V,)` is the `lm_head` bias, `scale` `s` a Cohere-style `logit_scale` (Granite: `1 / logits_scaling`),
    `softcap` `c` Gemma's `final_logit_softcapping`: the post-processing `trl.DistillationTrainer` applies.
    """

    bias: torch.Tensor | None = None
    scale: float = 1.0
    softcap: float | None = None


PLAIN_HEAD = LogitHead()


def apply_logit_head(raw: torch.Tensor, head: LogitHead) -> torch.Tensor:
    """`(..., V) -> (..., V)`: scale, then softcap, of logits that already hold the bias (out of place)."""
    z = raw * head.scale if head.scale != 1.0 else raw
    return head.softcap * torch.tanh(z / head.softcap) if head.softcap is not None else z


def _transform_tile_(tile: torch.Tensor, head: LogitHead, inv_t: float) -> None:
    """In place on a projected tile (bias included): scale, softcap, then `1/T`."""
    if head.scale != 1.0:
        tile.mul_(head.scale)
    if head.softcap is not None:
        tile.div_(head.softcap).tanh_().mul_(head.softcap)
    if inv_t != 1.0:
        tile.mul_(inv_t)


def _head_jacobian_(grad: torch.Tensor, z: torch.Tensor, head: LogitHead, inv_t: float) -> torch.Tensor:
    """Chain a gradient with respect to the pre-temperature logits back through the softcap and scale, in place;
    `z` is the transformed tile (`c·tanh(·)/T`), so `tanh = z·T/c`."""
    if head.softcap is not None:
        th = z / (inv_t * head.softcap)
        grad.mul_(1.0 - th * th)
    if head.scale != 1.0:
        grad.mul_(head.scale)
    return grad


class OutlierPass(Protocol):
    """What [`FusedDistillationFunction`] calls to add a loss on selected positions from its own tiles
    ([`~trl_opd.ops.chunked_topk.FusedOutlierKL`], TrOPD's outlier KL)."""

    def forward_chunk(self, sl: slice, stats, tiles, models, heads, inv_t: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss `(n,)` and the mask `(n,)` of one token chunk `sl`."""

    def dense_coefficient(self, g_out: torch.Tensor, sl: slice) -> torch.Tensor:
        """Its gradient's per-row coefficient of `p_S` on chunk `sl`, `(n,)`."""

    def add_sparse_grad_(self, grad: torch.Tensor, g_out: torch.Tensor, sl: slice, v0: int, v1: int) -> None:
        """Add the rest of its gradient to the logit-gradient tile `grad` `(n, v1 − v0)`."""


class _Online:
    """Online log-sum-exp statistics of one model over the vocabulary tiles of a token chunk of `n` positions.

    Holds `max`, `Σe`, `Σe·z` (for the entropy), `Σe·gap` (for the KL) and the target's logit, each `(n,)`.
    """

    def __init__(self, n: int, device: torch.device):
        self.max = torch.full((n,), -math.inf, device=device)
        self.sum = torch.zeros(n, device=device)
        self.x_sum = torch.zeros(n, device=device)
        self.gap = torch.zeros(n, device=device)
        self.target = torch.zeros(n, device=device)

    def fold(self, z: torch.Tensor, gap: torch.Tensor, local_targets: torch.Tensor) -> None:
        """Fold one tile `z` `(n, v)` with `gap = z_other − z` `(n, v)`; `local_targets` `(n,)` index into the tile."""
        new_max = torch.maximum(self.max, z.amax(-1))
        rescale = torch.exp(self.max - new_max)
        e = torch.exp(z - new_max.unsqueeze(-1))
        self.sum.mul_(rescale).add_(e.sum(-1))
        self.x_sum.mul_(rescale).add_((e * z).sum(-1))
        self.gap.mul_(rescale).add_((e * gap).sum(-1))
        self.max = new_max
        inside = (local_targets >= 0) & (local_targets < z.size(-1))
        picked = z.gather(-1, local_targets.clamp(0, z.size(-1) - 1).unsqueeze(-1)).squeeze(-1)
        self.target = torch.where(inside, picked, self.target)

    def log_z(self) -> torch.Tensor:
        return self.max + torch.log(self.sum)

    def entropy(self) -> torch.Tensor:
        return self.log_z() - self.x_sum / self.sum

    def expected_gap(self) -> torch.Tensor:
        """`E_p[z_other − z]`, so that `KL(p || p_other) = log Z_other − log Z − E_p[z_other − z]`."""
        return self.gap / self.sum


class FusedDistillationFunction(torch.autograd.Function):
    """Per-token generalized JSD_β, both models' sampled-token log-probs and both entropies, in one tiled pass.

    `(N, H_s), (V, H_s), (V,)?, (N, H_t), (V, H_t), (V,)?, (N,) -> 9 x (N,)`: divergence, `log p_S(y)`, `log p_T(y)`,
    `H(p_S)`, `H(p_T)`, both log-normalisers `log Z_S`, `log Z_T`, then the outlier KL and the outlier mask (zeros
    without `outliers`), all at softmax temperature `temperature`, on logits post-processed as each model's
    [`LogitHead`] says (bias, scale, softcap). Gradients flow to the student's hidden states, `lm_head` weight and bias
    through the divergence, `log p_S(y)`, `log Z_S` (`∂ log Z_S / ∂z = p_S`) and the outlier KL; the teacher outputs,
    the entropies and the mask are constants. `outliers` ([`~trl_opd.ops.chunked_topk.FusedOutlierKL`], one per call)
    adds TrOPD's top-k forward KL on the positions it selects, from this pass's own tiles and backward.
    """

    @staticmethod
    def forward(
        ctx,
        s_hidden,
        s_weight,
        s_bias,
        t_hidden,
        t_weight,
        t_bias,
        targets,
        beta,
        temperature,
        s_post,
        t_post,
        outliers,
    ):  # noqa: D102
        ctx.set_materialize_grads(False)
        n_tok, device = s_hidden.size(0), s_hidden.device
        inv_t, mode = 1.0 / temperature, _divergence_mode(beta)
        heads = (LogitHead(s_bias, *s_post), LogitHead(t_bias, *t_post))
        # div, s_logp, t_logp, s_ent, t_ent, s_log_z, t_log_z, aux, outlier KL, outlier mask
        outputs = torch.zeros((10, n_tok), device=device)
        with maybe_gather_lm_head_ctx(s_weight, t_weight, s_bias, t_bias):  # ZeRO-3: heads read outside forward
            for a in range(0, n_tok, TOKEN_CHUNK_SIZE):
                sl = slice(a, min(a + TOKEN_CHUNK_SIZE, n_tok))
                models = (s_hidden[sl], s_weight, t_hidden[sl], t_weight)
                outputs[:, sl] = _forward_chunk(models, targets[sl], beta, inv_t, heads, outliers, sl)
        divergence, s_logp, t_logp, s_entropy, t_entropy, s_log_z, t_log_z, aux, outlier_kl, outlier = outputs
        ctx.save_for_backward(s_hidden, s_weight, s_bias, t_hidden, t_weight, t_bias, targets, s_log_z, t_log_z, aux)
        ctx.beta, ctx.mode, ctx.inv_t, ctx.posts, ctx.outliers = beta, mode, inv_t, (s_post, t_post), outliers
        ctx.mark_non_differentiable(t_logp, s_entropy, t_entropy, t_log_z, outlier)
        outs = (divergence, s_logp, t_logp, s_entropy, t_entropy, s_log_z, t_log_z, outlier_kl, outlier)
        return tuple(o.clone() for o in outs)

    @staticmethod
    def backward(ctx, g_div, g_logp, _t_logp, _s_entropy, _t_entropy, g_log_z, _t_log_z, g_out, _mask):  # noqa: D102
        s_hidden, s_weight, s_bias, t_hidden, t_weight, t_bias, targets, s_log_z, t_log_z, aux = ctx.saved_tensors
        none = (None,) * 12
        g_out = g_out if ctx.outliers is not None else None
        if g_div is None and g_logp is None and g_log_z is None and g_out is None:
            return none
        need_h, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        heads = (LogitHead(s_bias, *ctx.posts[0]), LogitHead(t_bias, *ctx.posts[1]))
        with maybe_gather_lm_head_ctx(s_weight, t_weight, s_bias, t_bias):  # shapes known once gathered (ZeRO-3)
            grads = _StudentGrads(
                torch.zeros_like(s_hidden, dtype=torch.float32) if need_h else None,
                torch.zeros_like(s_weight, dtype=torch.float32) if need_w else None,
                torch.zeros(s_weight.size(0), device=s_weight.device) if need_b else None,
            )
            rows = max(1, min(s_hidden.size(0), TOKEN_CHUNK_SIZE))
            s_buf = torch.empty((rows, min(s_weight.size(0), VOCAB_CHUNK_SIZE)), device=s_hidden.device)
            _backward_tiles(
                ctx,
                (s_hidden, s_weight, t_hidden, t_weight, targets),
                heads,
                (s_log_z, t_log_z, aux),
                (g_div, g_logp, g_log_z, g_out),
                grads,
                s_buf,
                torch.empty_like(s_buf),
            )
        return (
            grads.hidden.to(s_hidden.dtype) if grads.hidden is not None else None,
            grads.weight.to(s_weight.dtype) if grads.weight is not None else None,
            grads.bias.to(s_bias.dtype) if grads.bias is not None else None,
            *none[:9],
        )


class _StudentGrads(NamedTuple):
    """fp32 accumulators of the student's gradients (None where not needed)."""

    hidden: torch.Tensor | None
    weight: torch.Tensor | None
    bias: torch.Tensor | None


def _backward_tiles(ctx, tensors, heads, stats, output_grads, grads: _StudentGrads, s_buf, t_buf) -> None:
    """Accumulate the student's hidden-state, head and bias gradients tile by tile, recomputing each tile."""
    s_hidden, s_weight, t_hidden, t_weight, targets = tensors
    s_log_z, t_log_z, aux = stats
    g_div, g_logp, g_log_z, g_out = output_grads
    n_tok, vocab = s_hidden.size(0), s_weight.size(0)
    for a in range(0, n_tok, TOKEN_CHUNK_SIZE):
        sl = slice(a, min(a + TOKEN_CHUNK_SIZE, n_tok))
        h_s = s_hidden[sl]
        for v0 in range(0, vocab, VOCAB_CHUNK_SIZE):
            v1 = min(v0 + VOCAB_CHUNK_SIZE, vocab)
            zs, zt = _tiles(s_buf, t_buf, h_s, s_weight, t_hidden[sl], t_weight, v0, v1, ctx.inv_t, heads)
            grad = _logit_grad(
                ctx,
                zs,
                zt,
                s_log_z[sl],
                t_log_z[sl],
                aux[sl],
                targets[sl] - v0,
                None if g_div is None else g_div[sl],
                None if g_logp is None else g_logp[sl],
                None if g_log_z is None else g_log_z[sl],
                None if g_out is None else (g_out, sl, v0, v1),
            )
            grad = _head_jacobian_(grad, zs, heads[0], ctx.inv_t)
            if grads.hidden is not None:
                grads.hidden[sl].addmm_(grad, s_weight[v0:v1].float())
            if grads.weight is not None:
                grads.weight[v0:v1].addmm_(grad.t(), h_s.float())
            if grads.bias is not None:
                grads.bias[v0:v1] += grad.sum(0)


def _forward_chunk(models, targets, beta, inv_t, heads, outliers: OutlierPass | None, sl) -> torch.Tensor:
    """Statistics of one token chunk `sl`, `models = (h_s (n, H_s), W_s (V, H_s), h_t (n, H_t), W_t (V, H_t))`,
    `targets (n,) -> (10, n)`: divergence, both target log-probs, both entropies, both log-normalisers, the backward's
    auxiliary term, the outlier KL and mask (from `outliers`, with this pass's tiles when one tile holds the vocabulary).
    """
    h_s, s_weight, h_t, t_weight = models
    n, vocab, device = h_s.size(0), s_weight.size(0), h_s.device
    s_buf = torch.empty((n, min(vocab, VOCAB_CHUNK_SIZE)), device=device)
    t_buf = torch.empty_like(s_buf)
    s, t = _Online(n, device), _Online(n, device)
    for v0 in range(0, vocab, VOCAB_CHUNK_SIZE):
        v1 = min(v0 + VOCAB_CHUNK_SIZE, vocab)
        zs, zt = _tiles(s_buf, t_buf, h_s, s_weight, h_t, t_weight, v0, v1, inv_t, heads)
        s.fold(zs, zt - zs, targets - v0)
        t.fold(zt, zs - zt, targets - v0)
    s_log_z, t_log_z = s.log_z(), t.log_z()
    mode = _divergence_mode(beta)
    if mode == 0:
        div = -t.expected_gap() - t_log_z + s_log_z
        aux = div
    elif mode == 1:
        div = -s.expected_gap() - s_log_z + t_log_z
        aux = div
    else:  # the mixture needs both normalisers: a second pass, TRL's own torch tile
        div, aux = torch.zeros(n, device=device), torch.zeros(n, device=device)
        for v0 in range(0, vocab, VOCAB_CHUNK_SIZE):
            v1 = min(v0 + VOCAB_CHUNK_SIZE, vocab)
            zs, zt = _tiles(s_buf, t_buf, h_s, s_weight, h_t, t_weight, v0, v1, inv_t, heads)
            _jsd_tile(
                zs, 0, zt, 0, s_log_z, t_log_z, div, aux, v1 - v0, beta, 1.0, 1.0, 1.0, 1.0, 1.0, False, False, 0
            )
    s_logp, t_logp = s.target - s_log_z, t.target - t_log_z
    outlier_kl = outlier = torch.zeros(n, device=device)
    if outliers is not None:
        tiles = (zs, zt) if vocab <= VOCAB_CHUNK_SIZE else None  # the last tiles hold the whole vocabulary
        outlier_kl, outlier = outliers.forward_chunk(
            sl, (s_logp, t_logp, s_log_z, t_log_z), tiles, models, heads, inv_t
        )
    return torch.stack(
        [div, s_logp, t_logp, s.entropy(), t.entropy(), s_log_z, t_log_z, aux, outlier_kl, outlier.to(div.dtype)]
    )


def _tiles(s_buf, t_buf, h_s, s_weight, h_t, t_weight, v0, v1, inv_t, heads):
    """Project one `(n, v1 − v0)` tile of both models into the fp32 buffers (bias, scale, softcap as each model's
    [`LogitHead`]), then scale by `1/T`; returns views."""
    n = h_s.size(0)
    s_tile, t_tile = s_buf[:n, : v1 - v0], t_buf[:n, : v1 - v0]
    for tile, hidden, weight, head in ((s_tile, h_s, s_weight, heads[0]), (t_tile, h_t, t_weight, heads[1])):
        _project(tile, hidden, weight, head.bias, v0, v1, hidden.dtype)
        _transform_tile_(tile, head, inv_t)
    return s_tile, t_tile


def _logit_grad(ctx, zs, zt, s_log_z, t_log_z, aux, local_targets, g_div, g_logp, g_log_z=None, outlier=None):
    """Gradient of `g_div·D + g_logp·log p_S(y) + g_log_z·log Z_S (+ g_out·KL_out)` with respect to the raw student
    logits of one tile. `(n, v)`. The terms that are `p_S` times a per-row coefficient ([`_ps_coefficient`]) cost one
    pass; the outlier KL's other term sits on the teacher's top-k ids only (`outlier = (g_out, sl, v0, v1)`)."""
    log_ps = zs - s_log_z.unsqueeze(-1)
    keep_log_ps = g_div is not None and ctx.mode != 0  # the reverse KL and the mixture need log p_S again
    ps = log_ps.exp() if keep_log_ps else log_ps.exp_()
    coef = _ps_coefficient(ctx.mode, g_div, g_logp, g_log_z)
    if outlier is not None:
        extra = ctx.outliers.dense_coefficient(outlier[0], outlier[1])  # (n,)
        coef = extra if coef is None else coef + extra
    if coef is None:
        grad = torch.zeros_like(zs)
    else:
        grad = ps * coef.unsqueeze(-1) if keep_log_ps else ps.mul_(coef.unsqueeze(-1))
    if g_div is not None:
        g = g_div.float().unsqueeze(-1)
        log_pt = zt - t_log_z.unsqueeze(-1)
        if ctx.mode == 0:  # ∂D/∂z = p_S − p_T; the p_S part is in `coef`
            grad.addcmul_(log_pt.exp_(), g, value=-1.0)
        elif ctx.mode == 1:
            grad += ps * (log_ps - log_pt - aux.unsqueeze(-1)) * g
        else:
            log_m = torch.logaddexp(log_ps + math.log(1 - ctx.beta), log_pt + math.log(ctx.beta))
            grad += (1 - ctx.beta) * ps * (log_ps - log_m - aux.unsqueeze(-1)) * g
    if g_logp is not None:
        inside = (local_targets >= 0) & (local_targets < zs.size(-1))
        rows = inside.nonzero().squeeze(-1)
        grad[rows, local_targets[rows]] += g_logp.float()[rows]
    if outlier is not None:
        ctx.outliers.add_sparse_grad_(grad, *outlier)
    return grad.mul_(ctx.inv_t) if ctx.inv_t != 1.0 else grad


def _ps_coefficient(mode, g_div, g_logp, g_log_z) -> torch.Tensor | None:
    """`(n,)`: the coefficient of `p_S` in [`_logit_grad`], `g_log_z − g_logp` (`+ g_div` for the forward KL, whose
    gradient is `p_S − p_T`); None when no term has one."""
    terms = [g.float() for g in (g_log_z, g_div if mode == 0 else None) if g is not None]
    if g_logp is not None:
        terms.append(-g_logp.float())
    return sum(terms[1:], terms[0]) if terms else None


def fused_distillation_stats(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_weight: torch.Tensor,
    targets: torch.Tensor,
    beta: float,
    temperature: float = 1.0,
    student_head: LogitHead = PLAIN_HEAD,
    teacher_head: LogitHead = PLAIN_HEAD,
    outliers: OutlierPass | None = None,
) -> dict[str, torch.Tensor]:
    """Per-token student/teacher statistics for on-policy distillation, without full logits.

    `(B, T, H_s), (V, H_s), (B, T, H_t), (V, H_t), (B, T) -> dict of (B, T)` with keys `divergence` (JSD_β, `β=0`
    forward KL, `β=1` reverse KL), `student_logp` and `teacher_logp` (of `targets`), `student_entropy`,
    `teacher_entropy`, `student_log_z` (differentiable: `log Σ_v exp(z_S[v])`) and `teacher_log_z` (a constant).
    Logits are `z = softcap(scale·(h·Wᵀ + b))/T` per model ([`LogitHead`]). The student's hidden states, head and head
    bias receive gradients through `divergence`, `student_logp` and `student_log_z`. The teacher inputs should be
    detached. With `outliers` ([`~trl_opd.ops.chunked_topk.FusedOutlierKL`], a fresh one per call) the dict also
    holds `outlier_kl` (differentiable, 0 off the outliers) and `outlier` (the float mask of the positions it covers).
    """
    shape = targets.shape
    out = FusedDistillationFunction.apply(
        student_hidden.reshape(-1, student_hidden.size(-1)),
        student_weight,
        student_head.bias,
        teacher_hidden.reshape(-1, teacher_hidden.size(-1)),
        teacher_weight,
        teacher_head.bias,
        targets.reshape(-1),
        float(beta),
        float(temperature),
        (float(student_head.scale), student_head.softcap),
        (float(teacher_head.scale), teacher_head.softcap),
        outliers,
    )
    names = (
        "divergence",
        "student_logp",
        "teacher_logp",
        "student_entropy",
        "teacher_entropy",
        "student_log_z",
        "teacher_log_z",
        "outlier_kl",
        "outlier",
    )
    stats = {name: value.view(shape) for name, value in zip(names, out)}
    if outliers is None:
        del stats["outlier_kl"], stats["outlier"]
    return stats


def token_logprobs_and_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    head: LogitHead = PLAIN_HEAD,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of `targets` and the entropy of one model, chunked with TRL's `ChunkedLogProbFunction`.

    `(B, T, H), (V, H), (B, T) -> (B, T), (B, T)`, on logits `softcap(scale·(h·Wᵀ + b))/T` ([`LogitHead`]).
    Differentiable through the log-probs (and the entropy).
    """
    shape = targets.shape
    logp, entropy, *_ = ChunkedLogProbFunction.apply(
        hidden.reshape(-1, hidden.size(-1)),
        weight,
        head.bias,
        targets.reshape(-1),
        temperature,
        VOCAB_CHUNK_SIZE,
        head.softcap,
        float(head.scale),
        ("entropy",),
    )
    return logp.view(shape), entropy.view(shape)
