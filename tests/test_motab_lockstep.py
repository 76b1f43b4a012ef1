# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""MOTAB's rollout issues the same collectives on every process whatever its data: two "ranks" in threads, whose
flag all-reduces and model forwards (the layer all-gathers of ZeRO-3 / FSDP) meet at one barrier, must log the same
sequence of calls and finish, while one rank backtracks on every segment and the other never does."""

from __future__ import annotations

import threading

import torch

from trl_opd.testing import build_tiny_model
from trl_opd.trainers.motab_backends import HFStepBackend
from trl_opd.trainers.motab_rollout import SegmentRollout, SegmentStopper


class FakeGroup:
    """Two ranks in threads: every collective is a barrier (a timeout turns a mismatched count into a failure)."""

    def __init__(self, world: int, timeout: float = 30.0):
        self.barrier = threading.Barrier(world, timeout=timeout)
        self.flags = [False] * world
        self.calls: list[list[str]] = [[] for _ in range(world)]

    def collective(self, rank: int, name: str) -> None:
        self.calls[rank].append(name)
        self.barrier.wait()

    def any_process(self, rank: int):
        def reduce(local: bool) -> bool:
            self.flags[rank] = local
            self.collective(rank, "all_reduce")
            out = any(self.flags)
            self.barrier.wait()  # everyone read the flags before the next write
            return out

        return reduce

    def on_forward(self, rank: int, who: str):
        return lambda module, args, kwargs: self.collective(rank, f"{who}.forward")


def test_ranks_that_backtrack_differently_issue_the_same_collectives(tiny_tokenizer):
    tok = tiny_tokenizer
    group = FakeGroup(2)
    # rank 0 strays on every segment (boundary -inf), rank 1 never (inf); different prompts and counts
    prompts = {0: [tok.encode("1+2=3\n\n4+5="), tok.encode("Compute")], 1: [tok.encode("7*8=")]}
    boundary = {0: float("-inf"), 1: float("inf")}
    traces, errors, backends = {}, [], {}

    def rank_main(rank: int) -> None:
        try:
            torch.manual_seed(rank)
            models = {"student": build_tiny_model(tok, "student", seed=0), "teacher": build_tiny_model(tok, "teacher")}
            for who, model in models.items():
                model.eval().get_decoder().register_forward_pre_hook(group.on_forward(rank, who), with_kwargs=True)
            student, teacher = (
                HFStepBackend(models[w], pad_token_id=tok.pad_token_id, any_process=group.any_process(rank))
                for w in ("student", "teacher")
            )
            backends[rank] = (student, teacher)
            engine = SegmentRollout(
                student,
                teacher,
                SegmentStopper(tok, "\n\n", [tok.eos_token_id]),
                max_new_tokens=7 + 5 * rank,
                max_segment_tokens=3 + rank,
                max_backtracks=2,
                any_active=group.any_process(rank),
            )
            with torch.no_grad():
                traces[rank] = engine.run(prompts[rank], prompts[rank], boundary[rank])
        except Exception as error:  # noqa: BLE001 - reported by the main thread
            errors.append((rank, error))
            group.barrier.abort()

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a rank hung"
    assert not errors, errors
    assert all(t.backtracks == 2 for t in traces[0]) and all(t.backtracks == 0 for t in traces[1])
    assert all(t.done for r in traces for t in traces[r])
    assert group.calls[0] == group.calls[1]
    # the ranks did different work: the difference was made up by idle forwards
    idle = [sum(b.num_idle_forwards for b in backends[r]) for r in range(2)]
    assert idle[0] > 0 and idle[1] > 0
    assert group.calls[0].count("teacher.forward") > 2


def test_one_process_runs_no_idle_forward(tiny_tokenizer):
    tok = tiny_tokenizer
    student = HFStepBackend(build_tiny_model(tok, "student", seed=0).eval(), pad_token_id=tok.pad_token_id)
    teacher = HFStepBackend(build_tiny_model(tok, "teacher", seed=1).eval(), pad_token_id=tok.pad_token_id)
    stopper = SegmentStopper(tok, "\n\n", [tok.eos_token_id])
    with torch.no_grad():
        SegmentRollout(student, teacher, stopper, 8, 3, max_backtracks=1).run([[5, 6]], [[5, 6]], float("-inf"))
    assert student.num_idle_forwards == teacher.num_idle_forwards == 0
    assert student.extend([], [], score=False) is None and teacher.sample([], [], stopper) == []
