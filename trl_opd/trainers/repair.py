# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""Collapse repair for self-distillation with privileged context (`collapse_repair`).

Where the privileged teacher stops following the student's path (its log-prob of the student's token falls below
`teacher_collapse_logp`), it no longer scores the student's continuation: it goes back to the reference's. The guard
(`teacher_collapse_weight`) drops those tokens and with them most of the rollout. Repair keeps the rollout instead:
the student's tokens before the collapse stay, and the teacher, from that last safe prefix and its own prompt, writes
the rest greedily, as MOTAB's teacher writes a segment after a stray. The per-position divergence then trains the
student on the teacher's continuation (states the teacher can score) and still on the collapsed position itself,
whose loss depends on its prefix only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from transformers import GenerationConfig
from trl.models.utils import disable_gradient_checkpointing


def splice_completions(
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    cut: torch.Tensor,
    continuations: dict[int, list[int]],
    pad_token_id: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row `b` in `continuations` keeps its first `cut[b]` tokens, then `continuations[b]`; the other rows are
    unchanged. Returns right-padded `completion_ids`, `completion_mask` and `teacher_written` (1 on spliced-in
    tokens), `(B, C')` with `C'` the longest row. `(B, C), (B, C), (B,) -> 3 × (B, C')`."""
    rows = []
    for b in range(completion_ids.size(0)):
        own = completion_ids[b, : int(completion_mask[b].sum())].tolist()
        if b in continuations:
            rows.append((own[: int(cut[b])], continuations[b]))
        else:
            rows.append((own, []))
    width = max(len(a) + len(t) for a, t in rows)
    ids = torch.full((len(rows), width), pad_token_id, dtype=completion_ids.dtype)
    mask = torch.zeros((len(rows), width), dtype=completion_mask.dtype)
    written = torch.zeros((len(rows), width), dtype=completion_mask.dtype)
    for b, (kept, written_tokens) in enumerate(rows):
        n, m = len(kept), len(written_tokens)
        ids[b, : n + m] = torch.tensor(kept + written_tokens, dtype=completion_ids.dtype)
        mask[b, : n + m] = 1
        written[b, n : n + m] = 1
    device = completion_ids.device
    return ids.to(device), mask.to(device), written.to(device)


@torch.no_grad()
def greedy_continuations(
    model, prefixes: Sequence[Sequence[int]], budgets: Sequence[int], eos_token_ids: Sequence[int], pad_token_id: int
) -> list[list[int]]:
    """`model`'s greedy continuation of each prefix (left-padded into one batch), cut at its budget and after its
    first EOS token (kept, as a completion keeps it)."""
    device = next(model.parameters()).device
    width = max(len(p) for p in prefixes)
    ids = torch.tensor([[pad_token_id] * (width - len(p)) + list(p) for p in prefixes], device=device)
    attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prefixes], device=device)
    config = GenerationConfig(
        max_new_tokens=max(budgets),
        do_sample=False,
        eos_token_id=list(eos_token_ids),
        pad_token_id=pad_token_id,
        temperature=None,
        top_p=None,
        top_k=None,
    )
    was_training = model.training
    checkpointing = bool(getattr(model, "is_gradient_checkpointing", False))
    model.eval()  # the student scoring as its own teacher is in train mode; generate with its cache, no checkpointing
    try:
        with disable_gradient_checkpointing(model) if checkpointing else contextlib.nullcontext():
            out = model.generate(input_ids=ids, attention_mask=attention, generation_config=config)[:, width:]
    finally:
        model.train(was_training)
    eos = set(eos_token_ids)
    continuations = []
    for row, budget in zip(out.tolist(), budgets, strict=True):
        row = row[:budget]
        end = next((i + 1 for i, tok in enumerate(row) if tok in eos), len(row))
        continuations.append(row[:end])
    return continuations
