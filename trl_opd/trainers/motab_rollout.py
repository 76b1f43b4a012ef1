# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""MOTAB's segment-wise rollout engine for a whole batch.

[`SegmentRollout`] drives two "step" backends (student and teacher) through rounds: the student writes one segment
for every unfinished rollout, the teacher scores it (prefill only), strayed segments are rolled back and the teacher
writes one segment from the last safe state instead. A backend is any object with the methods of [`StepBackend`];
tests script them. The backends that generate (a transformers model with a batched KV cache, the student through
vLLM) are in [`~trl_opd.trainers.motab_backends`].

Lockstep across processes. Under ZeRO-3 or FSDP every forward of a sharded model all-gathers its layers, so every
process must call the same forwards in the same order, whatever its data. Given `any_process` (an all-reduce "does
any process still have work?"), [`SegmentRollout`] runs a round while any process has unfinished rows, runs the
teacher's round while any process has a strayed row, and an [`~trl_opd.trainers.motab_backends.HFStepBackend`] keeps
decoding while any process still samples; a process with nothing to do runs an idle forward (one pad token, no cache)
instead. Per round every process
then makes exactly: one student sampling loop of `max_p(segment length)` forwards, one teacher scoring forward, and
(when any process strayed) one teacher sampling loop of `max_p(teacher segment length)` forwards plus one student
forward, each loop step preceded by one all-reduce of a flag. The cost under sharding: every decoded token of the
slowest process is paid by all of them, and each forward of a sharded model gathers all its layers (a 32B teacher
decoded token by token over ZeRO-3 is slow); `ds3_gather_for_generation` (on by default) gathers the teacher's and the
student's full weights once per rollout instead, so no forward communicates, for the memory of one full copy each.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from ..ops.motab import monitor_signal, segment_stray_scores


class SegmentStopper:
    """Decides where a segment ends: after the token that completes `delimiter` (also across tokens), or at EOS.

    Token texts are decoded one id at a time and cached.
    """

    def __init__(self, tokenizer, delimiter: str, eos_token_ids: Sequence[int]):
        self.tokenizer, self.delimiter, self.eos = tokenizer, delimiter, set(int(i) for i in eos_token_ids)
        self._text: dict[int, str] = {}
        self._tail: dict[int, str] = {}

    def text(self, token: int) -> str:
        if token not in self._text:
            self._text[token] = self.tokenizer.decode([token])
        return self._text[token]

    def start(self, rows: Sequence[int]) -> None:
        for r in rows:
            self._tail[r] = ""

    def step(self, row: int, token: int) -> bool:
        """Feed one token of `row`'s segment; `True` when the segment ends with it."""
        if token in self.eos:
            return True
        text = self._tail.get(row, "") + self.text(token)
        self._tail[row] = text[-(len(self.delimiter) - 1) :] if len(self.delimiter) > 1 else ""
        return self.delimiter in text

    def cut(self, row: int, tokens: list[int]) -> int:
        """Length of the segment `tokens` up to and including its stop token (all of it when none)."""
        self.start([row])
        for i, tok in enumerate(tokens):
            if self.step(row, tok):
                return i + 1
        return len(tokens)


@dataclass
class Segment:
    """One segment proposed by a backend: its tokens and the sampler's log-probabilities of them."""

    tokens: list[int]
    logps: list[float] = field(default_factory=list)


class StepBackend(Protocol):
    """What [`SegmentRollout`] needs from a model. Rows are the global row ids given to `start`."""

    def start(self, prompts: Sequence[Sequence[int]]) -> None: ...

    def sample(self, rows: Sequence[int], budgets: Sequence[int], stopper: SegmentStopper) -> list[Segment]: ...

    def extend(self, rows: Sequence[int], tokens: Sequence[Sequence[int]], score: bool = True):
        """Append forced tokens; with `score`, return `(logps, best_logps)`: lists of per-token floats."""

    def commit(self, rows: Sequence[int]) -> None: ...

    def rollback(self, rows: Sequence[int]) -> None: ...

    def drop(self, rows: Sequence[int]) -> None: ...


@dataclass
class RolloutTrace:
    """The history of one rollout: final tokens with provenance, discarded segments, scores and backtracks."""

    tokens: list[int] = field(default_factory=list)
    teacher_mask: list[int] = field(default_factory=list)  # 1 where the teacher wrote the token
    discarded: list[tuple[int, list[int]]] = field(default_factory=list)  # (safe prefix length, discarded tokens)
    segments: list[tuple[str, list[int]]] = field(default_factory=list)  # ("student"|"teacher", tokens), in order
    scores: list[float] = field(default_factory=list)  # stray score of every student segment
    backtracks: int = 0
    done: bool = False


class SegmentRollout:
    r"""
    Monitored segment-wise rollout of a batch (MOTAB).

    Round: every unfinished row's student writes one segment (stop at the delimiter, EOS, `max_segment_tokens` or
    the completion budget); the teacher scores it; `S_k = mean m_t` or `max m_t` ([`~trl_opd.ops.motab.monitor_signal`],
    [`~trl_opd.ops.motab.segment_stray_scores`]). If
    `S_k > τ` and the row has backtracks left, the segment is discarded, both models go back to the last safe state
    and the teacher writes one segment (accepted, teacher-written); else the segment is accepted. After
    `max_backtracks` the student runs on unmonitored. A row finishes at EOS or at `max_new_tokens`.

    Args:
        student, teacher: [`StepBackend`]s.
        stopper: a [`SegmentStopper`].
        max_new_tokens, max_segment_tokens, max_backtracks: budgets.
        signal: `log_ratio`, `teacher_nll` or `teacher_margin`.
        reduction: `mean` or `max` of the signal over a segment.
        any_active: called with a local flag ("unfinished rows left", "a row strayed"), returns whether it holds on
            any process (an all-reduce). Rounds and teacher rounds then run on every process together, as backends
            whose calls are collective need (sharded forwards, vLLM); a process without rows calls them with none.
    """

    def __init__(
        self,
        student: StepBackend,
        teacher: StepBackend,
        stopper: SegmentStopper,
        max_new_tokens: int,
        max_segment_tokens: int = 256,
        max_backtracks: int = 4,
        signal: str = "log_ratio",
        any_active: Callable[[bool], bool] | None = None,
        reduction: str = "mean",
    ):
        self.student, self.teacher, self.stopper = student, teacher, stopper
        self.max_new_tokens, self.max_segment_tokens = max_new_tokens, max_segment_tokens
        self.max_backtracks, self.signal, self.reduction = max_backtracks, signal, reduction
        self.any_active = any_active or bool

    def run(self, prompts: Sequence[Sequence[int]], teacher_prompts: Sequence[Sequence[int]], boundary: float):
        """Roll out every prompt; returns one [`RolloutTrace`] per row. `boundary` is `τ` (`inf`: never stray)."""
        traces = [RolloutTrace() for _ in prompts]
        self.student.start(prompts)
        self.teacher.start(teacher_prompts)
        active = list(range(len(prompts)))
        while self.any_active(bool(active)):
            strayed = self._student_round(active, traces, boundary)
            if self.any_active(bool(strayed)):
                self._teacher_round(strayed, traces)
            finished = [r for r in active if self._finished(traces[r])]
            for r in finished:
                traces[r].done = True
            self.student.drop(finished)
            self.teacher.drop(finished)
            active = [r for r in active if r not in finished]
        return traces

    def _budgets(self, rows, traces) -> list[int]:
        return [min(self.max_segment_tokens, self.max_new_tokens - len(traces[r].tokens)) for r in rows]

    def _finished(self, trace: RolloutTrace) -> bool:
        return len(trace.tokens) >= self.max_new_tokens or (
            bool(trace.tokens) and trace.tokens[-1] in self.stopper.eos
        )

    def _student_round(self, rows: list[int], traces: list[RolloutTrace], boundary: float) -> list[int]:
        """Student proposes, teacher scores, accept or discard. Returns the rows that strayed (already rolled back)."""
        segments = self.student.sample(rows, self._budgets(rows, traces), self.stopper)
        t_logps, t_best = self.teacher.extend(rows, [s.tokens for s in segments], score=True)
        scores = self._scores(segments, t_logps, t_best)
        strayed, accepted = [], []
        for r, seg, score in zip(rows, segments, scores, strict=True):
            trace = traces[r]
            trace.scores.append(score)
            if score > boundary and trace.backtracks < self.max_backtracks:
                strayed.append(r)
                trace.backtracks += 1
                trace.discarded.append((len(trace.tokens), list(seg.tokens)))
            else:
                accepted.append(r)
                self._append(trace, seg.tokens, "student")
        self.student.commit(accepted)
        self.teacher.commit(accepted)
        self.student.rollback(strayed)
        self.teacher.rollback(strayed)
        return strayed

    def _teacher_round(self, rows: list[int], traces: list[RolloutTrace]) -> None:
        """The teacher writes one segment from each strayed row's last safe state; the student reads it."""
        segments = self.teacher.sample(rows, self._budgets(rows, traces), self.stopper)
        self.teacher.commit(rows)
        self.student.extend(rows, [s.tokens for s in segments], score=False)
        self.student.commit(rows)
        for r, seg in zip(rows, segments, strict=True):
            self._append(traces[r], seg.tokens, "teacher")

    @staticmethod
    def _append(trace: RolloutTrace, tokens: list[int], who: str) -> None:
        trace.tokens.extend(tokens)
        trace.teacher_mask.extend([int(who == "teacher")] * len(tokens))
        trace.segments.append((who, list(tokens)))

    def _scores(self, segments: list[Segment], t_logps, t_best) -> list[float]:
        if not segments:
            return []
        width = max(len(s.tokens) for s in segments)

        def padded(rows: list[list[float]]) -> torch.Tensor:
            return torch.tensor([list(x) + [0.0] * (width - len(x)) for x in rows], dtype=torch.float64)

        mask = padded([[1.0] * len(s.tokens) for s in segments])
        s_logp = padded([s.logps if s.logps else [math.nan] * len(s.tokens) for s in segments])
        signal = monitor_signal(s_logp, padded(t_logps), padded(t_best), self.signal)
        return segment_stray_scores(signal, mask, self.reduction).tolist()
