# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""Side-by-side step timing shared by the benchmarks: one optimizer step of a trainer, and two (or more) trainers
stepped in turn on the same rows and seeds, alternating which goes first, so that load on a shared machine hits them
alike and only their ratio is read."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch


def synchronize() -> None:
    """Wait for queued GPU work, so a step's clock stops when its work is done (nothing to wait for on CPU)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def interleaved_calls(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[tuple[float, float]]]:
    """`(wall, process CPU)` seconds of each function over `rounds` rounds after one warm-up call each; in every round
    each function runs once, the order reversed from one round to the next, so that drift in the machine's load hits
    all alike."""
    for fn in fns.values():
        fn()  # warm-up
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in fns}
    names = list(fns)
    for k in range(rounds):
        for name in names if k % 2 == 0 else reversed(names):
            synchronize()
            wall, cpu = time.perf_counter(), time.process_time()
            fns[name]()
            synchronize()
            times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    return times


def optimizer_step(trainer, rows: list[dict], seed: int) -> tuple[float, float]:
    """One optimizer step of a TRL trainer (`training_step`, then its optimizer and scheduler) on `rows`, with the
    global RNG seeded by `seed`; returns `(wall seconds, process CPU seconds)`."""
    torch.manual_seed(seed)
    synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.training_step(trainer.model_wrapped, rows, None)
    trainer.optimizer.step()
    trainer.lr_scheduler.step()
    trainer.optimizer.zero_grad()
    synchronize()
    elapsed = time.perf_counter() - wall, time.process_time() - cpu
    trainer.state.global_step += 1
    return elapsed


def interleaved_steps(
    trainers: dict[str, object],
    dataset,
    batch: int,
    warmup: int,
    steps: int,
    on_measure_start: Callable[[], None] | None = None,
) -> dict[str, list[tuple[float, float]]]:
    """`warmup + steps` rounds; in round `k` every trainer takes [`optimizer_step`] on rows `k·batch …` of `dataset`
    with seed `1000 + k`, the first-named first in even rounds and last in odd ones. Returns each trainer's measured
    `(wall, CPU)` times (the rounds after the warm-up); `on_measure_start` runs once before the first measured one."""
    names: Sequence[str] = list(trainers)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for step in range(warmup + steps):
        rows = [dataset[(step * batch + i) % len(dataset)] for i in range(batch)]
        if step == warmup and on_measure_start is not None:
            on_measure_start()
        for name in names if step % 2 == 0 else list(reversed(names)):
            elapsed = optimizer_step(trainers[name], rows, seed=1000 + step)
            if step >= warmup:
                times[name].append(elapsed)
    return times
