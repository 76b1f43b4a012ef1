# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""MOTAB rollout engine: scripted backends (exact accepted / discarded / teacher segments) and the KV-cache backend."""

from __future__ import annotations

import math

import pytest
import torch

from trl_opd.trainers.motab_backends import HFStepBackend
from trl_opd.trainers.motab_rollout import Segment, SegmentRollout, SegmentStopper


EOS = 2


class Scripted:
    """A step backend whose segments are scripted per row. Teacher log-prob of token x is `-(x // 100)`, so tokens
    >= 100 are "bad" (log ratio 1 against a student log-prob of 0). Records the calls and the prefix it sampled from."""

    def __init__(self, script: dict[int, list[list[int]]]):
        self.script = {r: list(s) for r, s in script.items()}
        self.calls: list[tuple] = []

    def start(self, prompts):
        self.prefix = [list(p) for p in prompts]
        self.committed = [len(p) for p in prompts]

    def sample(self, rows, budgets, stopper):
        self.calls.append(("sample", list(rows), list(budgets), [list(self.prefix[r]) for r in rows]))
        out = []
        for r, budget in zip(rows, budgets):
            tokens = self.script[r].pop(0)[:budget]
            self.prefix[r].extend(tokens)
            out.append(Segment(tokens, [0.0] * len(tokens)))
        return out

    def extend(self, rows, tokens, score=True):
        self.calls.append(("extend", list(rows), [list(t) for t in tokens]))
        for r, t in zip(rows, tokens):
            self.prefix[r].extend(t)
        if score:
            logps = [[-float(x // 100) for x in t] for t in tokens]
            return logps, [[0.0] * len(t) for t in tokens]

    def commit(self, rows):
        self.calls.append(("commit", list(rows)))
        for r in rows:
            self.committed[r] = len(self.prefix[r])

    def rollback(self, rows):
        self.calls.append(("rollback", list(rows)))
        for r in rows:
            del self.prefix[r][self.committed[r] :]

    def drop(self, rows):
        self.calls.append(("drop", list(rows)))


def _run(
    student_script, teacher_script, boundary=0.5, max_backtracks=4, max_new_tokens=50, prompts=None, reduction="mean"
):
    student, teacher = Scripted(student_script), Scripted(teacher_script)
    prompts = prompts or [[90 + r] for r in student_script]
    stopper = SegmentStopper(None, "\n\n", [EOS])
    engine = SegmentRollout(student, teacher, stopper, max_new_tokens, 8, max_backtracks, reduction=reduction)
    return engine.run(prompts, prompts, boundary), student, teacher


def test_rollout_that_never_strays_is_the_students():
    (trace,), student, teacher = _run({0: [[1, 3], [4, 5], [6, EOS]]}, {0: []})
    assert trace.segments == [("student", [1, 3]), ("student", [4, 5]), ("student", [6, EOS])]
    assert trace.tokens == [1, 3, 4, 5, 6, EOS] and trace.teacher_mask == [0] * 6
    assert trace.discarded == [] and trace.backtracks == 0 and trace.scores == [0.0, 0.0, 0.0]
    assert not [c for c in teacher.calls if c[0] == "sample"]
    assert [c for c in teacher.calls if c[0] == "rollback"] == [("rollback", [])] * 3


def test_backtrack_on_first_segment_teacher_writes_from_the_prompt():
    (trace,), student, teacher = _run({0: [[150, 151, 3], [4, EOS]]}, {0: [[7, 8]]})
    assert trace.discarded == [(0, [150, 151, 3])]
    assert trace.segments == [("teacher", [7, 8]), ("student", [4, EOS])]
    assert trace.tokens == [7, 8, 4, EOS] and trace.teacher_mask == [1, 1, 0, 0] and trace.backtracks == 1
    assert trace.scores == pytest.approx([2 / 3, 0.0])
    # the teacher wrote from the last safe state (the prompt alone); the student then read the teacher's segment
    assert [c for c in teacher.calls if c[0] == "sample"][0][3] == [[90]]
    assert ("extend", [0], [[7, 8]]) in student.calls
    assert [c for c in student.calls if c[0] == "sample"][1][3] == [[90, 7, 8]]
    assert student.prefix[0] == teacher.prefix[0] == [90, 7, 8, 4, EOS]


def test_max_backtracks_exhausted_then_the_student_runs_unmonitored():
    (trace,), _, teacher = _run({0: [[150], [151], [160, EOS]]}, {0: [[7]]}, max_backtracks=1)
    assert trace.discarded == [(0, [150])] and trace.backtracks == 1
    assert trace.segments == [("teacher", [7]), ("student", [151]), ("student", [160, EOS])]
    assert trace.teacher_mask == [1, 0, 0, 0]
    assert len([c for c in teacher.calls if c[0] == "sample"]) == 1


def test_eos_inside_a_teacher_segment_ends_the_rollout():
    (trace,), student, _ = _run({0: [[1], [150, 151]]}, {0: [[7, EOS]]})
    assert trace.segments == [("student", [1]), ("teacher", [7, EOS])]
    assert trace.discarded == [(1, [150, 151])] and trace.done
    assert len([c for c in student.calls if c[0] == "sample"]) == 2  # never asked again after the teacher's EOS


def test_batch_rows_finish_independently_and_budget_is_respected():
    script = {0: [[1, EOS]], 1: [[150, 151], [3, 4, 5, 6], [7, 8, 9, 10]], 2: [[5, 5, 5, 5], [5, 5, 5, 5]]}
    traces, student, teacher = _run(script, {1: [[11, 12]]}, max_new_tokens=6)
    assert traces[0].tokens == [1, EOS]
    assert traces[1].segments == [("teacher", [11, 12]), ("student", [3, 4, 5, 6])]  # 6 tokens: budget reached
    assert traces[2].tokens == [5] * 6  # the second segment is cut at the remaining budget of 2
    samples = [c for c in student.calls if c[0] == "sample"]
    assert samples[0][1:3] == ([0, 1, 2], [6, 6, 6]) and samples[1][1:3] == ([1, 2], [4, 2])
    assert ("drop", [0]) in student.calls and ("drop", [0]) in teacher.calls
    assert all(t.done for t in traces)


def test_boundary_at_inf_never_backtracks():
    (trace,), _, teacher = _run({0: [[150, 151], [160, EOS]]}, {0: []}, boundary=math.inf)
    assert trace.backtracks == 0 and trace.teacher_mask == [0, 0, 0, 0] and trace.scores == [1.0, 0.5]


def test_max_reduction_catches_one_bad_token_that_the_mean_dilutes():
    """One bad token (log ratio 1) in a four-token segment: mean 0.25 stays under τ = 0.5, max 1.0 strays."""
    script = {0: [[1, 2, 150, 3], [4, EOS]]}
    (mean_trace,), _, _ = _run(script, {0: [[7, 8]]})
    (max_trace,), _, _ = _run(script, {0: [[7, 8]]}, reduction="max")
    assert mean_trace.backtracks == 0 and mean_trace.scores == [0.25, 0.0]
    assert max_trace.backtracks == 1 and max_trace.scores == [1.0, 0.0]
    assert max_trace.discarded == [(0, [1, 2, 150, 3])] and max_trace.segments[0] == ("teacher", [7, 8])


def test_stopper_ends_at_delimiter_across_tokens_and_at_eos(tiny_tokenizer):
    stopper = SegmentStopper(tiny_tokenizer, "\n\n", [tiny_tokenizer.eos_token_id])
    nl = tiny_tokenizer.convert_tokens_to_ids("Ċ")
    ids = tiny_tokenizer.encode("1+2=3") + [nl, nl] + tiny_tokenizer.encode("4")
    assert stopper.cut(0, ids) == len(ids) - 1
    whole = tiny_tokenizer.encode("1+2=3\n\n4")
    assert tiny_tokenizer.decode(whole[: stopper.cut(1, whole)]).endswith("\n\n")
    assert stopper.cut(2, [5, tiny_tokenizer.eos_token_id, 6]) == 2


def _dense_logps(model, prompt, tokens, temperature=1.0):
    ids = torch.tensor([list(prompt) + list(tokens)])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1 : -1].float() / temperature
    return logits.log_softmax(-1).gather(-1, torch.tensor(tokens)[:, None]).squeeze(-1)


class Recording(HFStepBackend):
    """The KV-cache backend, recording what it returned."""

    def sample(self, rows, budgets, stopper):
        out = super().sample(rows, budgets, stopper)
        self.sampled = getattr(self, "sampled", []) + [(r, s) for r, s in zip(rows, out)]
        return out

    def extend(self, rows, tokens, score=True):
        out = super().extend(rows, tokens, score)
        if score:
            self.scored = getattr(self, "scored", []) + list(zip(rows, tokens, out[0]))
        return out


@pytest.mark.parametrize("compact_ratio", [2.0, 1.0])
def test_kv_cache_backends_match_dense_scoring_and_never_reencode(tiny_tokenizer, compact_ratio):
    from trl_opd.testing import build_tiny_model

    torch.manual_seed(0)
    tok = tiny_tokenizer
    student, teacher = build_tiny_model(tok, "student", seed=0).eval(), build_tiny_model(tok, "teacher", seed=1).eval()
    prompts = [tok.encode("1+2=3\n\n4+5="), tok.encode("Compute"), tok.encode("7*8=56\n\nso we get then")]
    s_back = Recording(
        student, temperature=0.8, pad_token_id=tok.pad_token_id, compact_ratio=compact_ratio, compact_slack=0
    )
    t_back = Recording(
        teacher, temperature=0.8, pad_token_id=tok.pad_token_id, compact_ratio=compact_ratio, compact_slack=0
    )
    stopper = SegmentStopper(tok, "\n\n", [tok.eos_token_id])
    with torch.no_grad():
        traces = SegmentRollout(s_back, t_back, stopper, 30, 5, max_backtracks=2).run(prompts, prompts, 0.0)
    assert all(t.backtracks == 2 for t in traces) and t_back.num_crops > 0
    if compact_ratio == 1.0:
        assert s_back.num_compactions > 0
    for r, trace in enumerate(traces):
        # every student segment the teacher scored: its scores equal a dense forward on the safe prefix + segment
        prefix = {0: []}
        for _who, seg in trace.segments:
            prefix[len(prefix)] = prefix[len(prefix) - 1] + seg
        scored = [(toks, lp) for row, toks, lp in t_back.scored if row == r]
        safe = [p for p in prefix.values()]
        for toks, lp in scored:
            base = next(p for p in reversed(safe) if trace.tokens[: len(p)] == p and _follows(trace, p, toks))
            ref = _dense_logps(teacher, prompts[r], base + list(toks), 0.8)[len(base) :]
            torch.testing.assert_close(torch.tensor(lp), ref, atol=1e-4, rtol=1e-4)
        for row, seg in s_back.sampled:
            if row == r and any(s == seg.tokens for w, s in trace.segments if w == "student"):
                at = _offset(trace, seg.tokens)
                ref = _dense_logps(student, prompts[r], trace.tokens[: at + len(seg.tokens)], 0.8)[at:]
                torch.testing.assert_close(torch.tensor(seg.logps), ref, atol=1e-4, rtol=1e-4)
    # nothing is encoded twice: prompt + every token written or read, once
    sampled = sum(len(t.tokens) - sum(t.teacher_mask) + sum(len(d) for _, d in t.discarded) for t in traces)
    teacher_written = sum(sum(t.teacher_mask) for t in traces)
    prompt_tokens = sum(len(p) for p in prompts)
    assert s_back.num_tokens_fed == prompt_tokens + sampled + teacher_written
    assert t_back.num_tokens_fed == prompt_tokens + sampled + teacher_written


def _offset(trace, seg):
    at = 0
    for who, s in trace.segments:
        if s == seg and who == "student":
            return at
        at += len(s)
    raise AssertionError


def _follows(trace, prefix, toks):
    """Whether `toks` was proposed right after `prefix` (accepted next, or discarded there)."""
    return trace.tokens[len(prefix) : len(prefix) + len(toks)] == list(toks) or (len(prefix), list(toks)) in [
        (c, d) for c, d in trace.discarded
    ]
