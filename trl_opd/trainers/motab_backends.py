# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""Generation backends of MOTAB's segment-wise rollout ([`~trl_opd.trainers.motab_rollout.SegmentRollout`]).

- [`HFStepBackend`]: a transformers model with one batched `DynamicCache` of the accepted prefixes. Every row advances
  in the same cache slots; a token a row does not write is a *hole* (attention mask 0), positions are per row. A
  backtrack masks the row's tentative slots (no recomputation) and crops the slots no row uses any more
  (`DynamicCache.crop`); finished rows leave the batch (`batch_select_indices`); when holes dominate, the cache is
  compacted by a gather. The accepted prefix is never re-encoded.
- [`VLLMStudentBackend`]: the student through TRL's `VLLMGeneration` (colocate or server), one request per row and
  round with the delimiter as stop string; vLLM's prefix cache reuses the prefix. Rounds are kept in lockstep across
  processes (every process sends one request per row every round), as TRL's gathers require.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinPLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from ..heads import logit_head
from ..ops.motab import project_logits, token_logprob_and_best
from .motab_rollout import Segment, SegmentStopper


def sample_categorical(probs: torch.Tensor) -> torch.Tensor:
    """One token per row of `probs` `(b, V)` -> `(b,)`, by inverting the cumulative distribution: the first token
    whose cumulative probability (float64) exceeds `u · total`, `u ~ U[0, 1)`, one uniform per row. Zero-probability
    tokens span no interval and are never drawn. Several times cheaper than `torch.multinomial` on a CPU (one uniform
    per row instead of its setup per call); the distribution is the same."""
    cdf = probs.double().cumsum(dim=-1)  # (b, V)
    total = cdf[:, -1:]  # (b, 1)
    u = torch.rand(total.shape, dtype=cdf.dtype, device=cdf.device) * total
    last = (cdf < total).sum(dim=-1, keepdim=True)  # the last token of positive probability (rounding of u · total)
    return torch.searchsorted(cdf, u, right=True).clamp_(max=last).squeeze(-1)


class HFStepBackend:
    """A transformers causal LM as a [`StepBackend`], with one batched KV cache of the accepted prefixes.

    Sampling: `softmax(z / T)` after top-k / top-p / min-p filtering; the returned log-probs are those of
    `softmax(z / T)` (before filtering), the same distribution the loss uses. Scores (`extend`) are computed from
    hidden states in position chunks ([`~trl_opd.ops.motab.token_logprob_and_best`]).

    Args:
        model: a `PreTrainedModel` (or PEFT model) whose decoder accepts `past_key_values` and `position_ids`.
        pad_token_id: id fed into holes.
        compact_ratio, compact_slack: compact the cache when its length exceeds `compact_ratio x` the longest row plus
            `compact_slack` slots.
        any_process: lockstep across processes (see the module docstring): called with the local "still sampling"
            flag before every decoding step, returns whether any process still samples (an all-reduce). While it
            does, a process with nothing to decode runs an idle forward; `extend` with no rows runs one too. `None`:
            one process, no idle work.
        weight: the `lm_head` weight to project with (default: the model's; a whole copy of a ZeRO-3-partitioned
            one, see `MOTABTrainer._rollout_backends`).
    """

    def __init__(
        self,
        model,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        min_p=0.0,
        pad_token_id=0,
        compact_ratio=2.0,
        compact_slack=64,
        any_process: Callable[[bool], bool] | None = None,
        weight: torch.Tensor | None = None,
    ):
        self.model, self.temperature, self.pad_token_id = model, temperature, pad_token_id
        self.any_process, self.lockstep = any_process or bool, any_process is not None
        self.compact_ratio, self.compact_slack = compact_ratio, compact_slack
        self.decoder = model.get_decoder()
        self.weight = model.get_output_embeddings().weight if weight is None else weight
        self.head = logit_head(model)
        warpers = [TopKLogitsWarper(top_k)] if top_k else []
        warpers += [TopPLogitsWarper(top_p)] if top_p is not None and top_p < 1.0 else []
        warpers += [MinPLogitsWarper(min_p)] if min_p else []
        self.warpers = LogitsProcessorList(warpers)
        self.num_forwards = self.num_crops = self.num_compactions = self.num_tokens_fed = self.num_idle_forwards = 0

    # -- batch bookkeeping
    def _idx(self, rows: Sequence[int]) -> torch.Tensor:
        return torch.tensor([self._pos[r] for r in rows], dtype=torch.long, device=self.slot_mask.device)

    def start(self, prompts: Sequence[Sequence[int]]) -> None:
        device = self.weight.device
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[self.pad_token_id] * (width - len(p)) + list(p) for p in prompts], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        self.rows = list(range(len(prompts)))
        self._pos = {r: i for i, r in enumerate(self.rows)}
        self.cache = DynamicCache(config=self.model.config)
        self.slot_mask = torch.zeros((len(prompts), 0), dtype=torch.long, device=device)
        self.n_valid = torch.zeros(len(prompts), dtype=torch.long, device=device)
        hidden = self._forward(ids, mask)
        self.next_logits = self._logits(hidden[:, -1])
        self.commit_slot = torch.zeros_like(self.n_valid)
        self.committed_valid, self.committed_logits = self.n_valid.clone(), self.next_logits.clone()
        self.commit(self.rows)

    def _forward(self, ids: torch.Tensor, new_mask: torch.Tensor) -> torch.Tensor:
        """Append `(b, n)` tokens (holes where `new_mask` is 0) for every row in the batch. `-> (b, n, H)`."""
        positions = (self.n_valid[:, None] + new_mask.cumsum(1) - 1).clamp(min=0)
        attention = torch.cat([self.slot_mask, new_mask], dim=1)
        out = self.decoder(
            input_ids=ids, attention_mask=attention, position_ids=positions, past_key_values=self.cache, use_cache=True
        )
        self.slot_mask, self.n_valid = attention, self.n_valid + new_mask.sum(1)
        self.num_forwards += 1
        self.num_tokens_fed += int(new_mask.sum())
        return out.last_hidden_state

    def _idle_forward(self) -> None:
        """One forward of a single pad token, no cache: the same collectives (layer all-gathers) as a real step."""
        ids = torch.full((1, 1), self.pad_token_id, dtype=torch.long, device=self.weight.device)
        self.decoder(input_ids=ids, use_cache=False)
        self.num_idle_forwards += 1

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return project_logits(hidden, self.weight, self.head) / self.temperature

    def sample(self, rows: Sequence[int], budgets: Sequence[int], stopper: SegmentStopper) -> list[Segment]:
        if not rows:
            while self.lockstep and self.any_process(False):
                self._idle_forward()
            return []
        b = len(self.rows)
        idx = self._idx(rows)
        live = torch.zeros(b, dtype=torch.bool, device=idx.device)
        live[idx] = True
        live_list, budget_list = live.tolist(), [0] * b  # host copies: the loop decides on them, once per token
        for i, budget in zip(idx.tolist(), budgets, strict=True):
            budget_list[i] = budget
        segments = {r: Segment([]) for r in rows}
        stopper.start(rows)
        while self.any_process(any(live_list)):
            if not any(live_list):  # done here, others still decode
                self._idle_forward()
                continue
            log_probs = torch.log_softmax(self.next_logits, dim=-1)
            probs = (
                torch.softmax(self.warpers(None, self.next_logits.clone()), -1) if self.warpers else log_probs.exp()
            )
            tokens = sample_categorical(probs)
            picked = log_probs.gather(-1, tokens[:, None]).squeeze(-1)
            stop = self._record(live_list, tokens.tolist(), picked.tolist(), budget_list, segments, stopper)
            tokens = torch.where(live, tokens, self.pad_token_id)
            hidden = self._forward(tokens[:, None], live[:, None].long())
            self.next_logits = torch.where(live[:, None], self._logits(hidden[:, 0]), self.next_logits)
            live_list = [is_live and not stops for is_live, stops in zip(live_list, stop, strict=True)]
            live = torch.tensor(live_list, dtype=torch.bool, device=live.device)
        return [segments[r] for r in rows]

    def _record(self, live, tokens, picked, budget, segments, stopper) -> list[bool]:
        """Append each live row's sampled token and log-prob to its segment (host lists: one transfer per tensor and
        decoded token); returns which rows stop."""
        stop = [False] * len(live)
        for i, is_live in enumerate(live):
            if not is_live:
                continue
            segment, tok = segments[self.rows[i]], tokens[i]
            segment.tokens.append(tok)
            segment.logps.append(picked[i])
            stop[i] = stopper.step(self.rows[i], tok) or len(segment.tokens) >= budget[i]
        return stop

    def extend(self, rows: Sequence[int], tokens: Sequence[Sequence[int]], score: bool = True):
        if not rows:
            if self.lockstep:
                self._idle_forward()
            return ([], []) if score else None
        b, width = len(self.rows), max(len(t) for t in tokens)
        device = self.slot_mask.device
        ids = torch.full((b, width), self.pad_token_id, dtype=torch.long, device=device)
        mask = torch.zeros((b, width), dtype=torch.long, device=device)
        lengths = torch.zeros(b, dtype=torch.long, device=device)
        for i, toks in zip(self._idx(rows).tolist(), tokens, strict=True):
            ids[i, : len(toks)] = torch.tensor(list(toks), device=device)
            mask[i, : len(toks)] = 1
            lengths[i] = len(toks)
        first = self.next_logits
        hidden = self._forward(ids, mask)
        has = lengths > 0
        last = hidden[torch.arange(b, device=device), (lengths - 1).clamp(min=0)]
        self.next_logits = torch.where(has[:, None], self._logits(last), self.next_logits)
        if not score:
            return None
        # position j is predicted by the state before it: the previous next-token logits for j = 0, hidden j-1 after
        log_first = torch.log_softmax(first, -1)
        logp0, best0 = log_first.gather(-1, ids[:, :1]).squeeze(-1), log_first.amax(-1)
        rest = mask[:, 1:].bool()
        logp_rest, best_rest = token_logprob_and_best(
            hidden[:, :-1][rest], self.weight, ids[:, 1:][rest], self.temperature, head=self.head
        )
        logp, best = torch.zeros((b, width), device=device), torch.zeros((b, width), device=device)
        logp[:, 0], best[:, 0] = logp0, best0
        logp[:, 1:][rest], best[:, 1:][rest] = logp_rest, best_rest
        out = [(logp[i, : lengths[i]].tolist(), best[i, : lengths[i]].tolist()) for i in self._idx(rows).tolist()]
        return [o[0] for o in out], [o[1] for o in out]

    # -- accept / backtrack / finish
    def commit(self, rows: Sequence[int]) -> None:
        if not len(rows):
            return
        idx = self._idx(rows)
        self.commit_slot[idx] = self.slot_mask.size(1)
        self.committed_valid[idx] = self.n_valid[idx]
        self.committed_logits[idx] = self.next_logits[idx]

    def rollback(self, rows: Sequence[int]) -> None:
        """Forget everything written since each row's last commit: mask its slots, restore its next-token state."""
        if not len(rows):
            return
        idx = self._idx(rows)
        slots = torch.arange(self.slot_mask.size(1), device=idx.device)
        self.slot_mask[idx] = self.slot_mask[idx] * (slots[None] < self.commit_slot[idx, None])
        self.n_valid[idx] = self.committed_valid[idx]
        self.next_logits[idx] = self.committed_logits[idx]
        self._trim()

    def _trim(self) -> None:
        """Crop the trailing slots that no row uses (`DynamicCache.crop`)."""
        used = self.slot_mask.any(0).nonzero()
        keep = int(used.max()) + 1 if used.numel() else 0
        if keep < self.slot_mask.size(1):
            self.cache.crop(keep - self.slot_mask.size(1))
            self.slot_mask = self.slot_mask[:, :keep]
            self.commit_slot.clamp_(max=keep)
            self.num_crops += 1

    def drop(self, rows: Sequence[int]) -> None:
        """Remove finished rows from the batch, then trim and, if holes dominate, compact the cache."""
        if rows:
            keep_rows = [r for r in self.rows if r not in set(rows)]
            if keep_rows:
                keep = self._idx(keep_rows)
                self.cache.batch_select_indices(keep)
                for name in (
                    "slot_mask",
                    "n_valid",
                    "next_logits",
                    "commit_slot",
                    "committed_valid",
                    "committed_logits",
                ):
                    setattr(self, name, getattr(self, name)[keep])
            self.rows = keep_rows
            self._pos = {r: i for i, r in enumerate(self.rows)}
        if not self.rows:
            self.cache = DynamicCache(config=self.model.config)
            return
        self._trim()
        if self.slot_mask.size(1) > self.compact_ratio * int(self.n_valid.max()) + self.compact_slack:
            self._compact()

    def _compact(self) -> None:
        """Gather each row's valid slots to the right end (left holes); positions are baked into the keys."""
        if not all(type(layer) is DynamicLayer for layer in self.cache.layers):
            return
        width = int(self.n_valid.max())
        order = torch.sort(self.slot_mask, dim=1, stable=True).indices[:, -width:]  # (b, width): valid slots last
        for layer in self.cache.layers:
            if layer.keys is None or layer.keys.numel() == 0:
                continue
            index = order[:, None, :, None].expand(-1, layer.keys.size(1), -1, layer.keys.size(-1))
            layer.keys, layer.values = layer.keys.gather(2, index), layer.values.gather(2, index)
        self.slot_mask = self.slot_mask.gather(1, order)
        self.commit_slot = torch.full_like(self.commit_slot, width)
        self.num_compactions += 1


class VLLMStudentBackend:
    """The student through TRL's `VLLMGeneration`: one `generate` call per round for every row given to `start`.

    Rows that do not sample this round (or have finished) send a one-token dummy request, so every process makes
    the same calls (TRL's server and tensor-parallel paths gather across processes). The delimiter is vLLM's stop
    string; outputs are cut again with the [`SegmentStopper`] and the row's budget. Log-probs are vLLM's sampled-
    token log-probs. `extend` only appends the teacher's tokens to the prefix (no scoring).
    """

    def __init__(self, vllm_generation, delimiter: str, pad_token_id: int):
        self.vllm, self.delimiter, self.pad_token_id = vllm_generation, delimiter, pad_token_id

    def start(self, prompts: Sequence[Sequence[int]]) -> None:
        self.prefix = [list(p) for p in prompts]
        self.committed = [len(p) for p in prompts]

    def sample(self, rows: Sequence[int], budgets: Sequence[int], stopper: SegmentStopper) -> list[Segment]:
        wanted = dict(zip(rows, budgets, strict=True))
        requests = [self.prefix[r] if r in wanted else [self.pad_token_id] for r in range(len(self.prefix))]
        saved = (self.vllm.max_completion_length, self.vllm.logprobs, self.vllm.generation_kwargs)
        self.vllm.max_completion_length = max(budgets, default=1)
        self.vllm.logprobs = 0
        self.vllm.generation_kwargs = {**saved[2], "stop": [self.delimiter], "include_stop_str_in_output": True}
        try:
            _, completions, logprobs, _ = self.vllm.generate(prompts=requests, images=None, num_generations=1)
        finally:
            self.vllm.max_completion_length, self.vllm.logprobs, self.vllm.generation_kwargs = saved
        segments = []
        for r in rows:
            tokens = list(completions[r])[: wanted[r]]
            tokens = tokens[: stopper.cut(r, tokens)]
            logps = [float(lp[0]) for lp in logprobs[r][: len(tokens)]] if logprobs is not None else []
            self.prefix[r].extend(tokens)
            segments.append(Segment(tokens, logps))
        return segments

    def extend(self, rows: Sequence[int], tokens: Sequence[Sequence[int]], score: bool = True):
        if score:
            raise NotImplementedError("the vLLM student backend does not score forced tokens")
        for r, toks in zip(rows, tokens, strict=True):
            self.prefix[r].extend(toks)

    def commit(self, rows: Sequence[int]) -> None:
        for r in rows:
            self.committed[r] = len(self.prefix[r])

    def rollback(self, rows: Sequence[int]) -> None:
        for r in rows:
            del self.prefix[r][self.committed[r] :]

    def drop(self, rows: Sequence[int]) -> None:
        """Finished rows keep sending dummy requests (see the class docstring)."""
