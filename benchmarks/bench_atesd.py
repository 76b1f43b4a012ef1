# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""ATESD step time against OPSD (the same trainer, `exposure_policy: fixed`, `alpha: 1.0`) on the same batches.

The OPSD side keeps ATESD's collapse guard and repair (its default `teacher_collapse_logp`, `collapse_repair: true`), so
the ratio is the cost of the controller (probe set, teacher grounding, exposure), the issue's target; the repair's own
cost (its teacher forward and generation) is printed apart, as a share of the OPSD step.

    .venv/bin/python benchmarks/bench_atesd.py [--steps 16] [--batch 8] [--completion 40]

Both trainers start from the same tiny student and take the same prompts at every step with the same sampling seed;
their steps are interleaved (alternating which goes first) so that load on a shared machine hits both alike. A step
is one full `training_step` (rollout generation, the controller with its probe-set NLL and teacher grounding,
teacher scoring, loss, backward) plus the optimizer step. ATESD runs at its defaults (`H=4`, `L=4`, `γ=1`,
probe set of 8), under which the probe is evaluated once per decision, every 4th step (with `γ < 1` it ran at every
step); the teacher grounding once per exposure level (the frozen self-teacher does not change).

Times are both wall-clock and process CPU time; with one torch thread (the default here) CPU time counts the work
done and is robust to other processes sharing the machine, so its ratio is the headline number on a busy CPU.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
from collections import defaultdict


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import torch  # noqa: E402
from interleaved import interleaved_steps  # noqa: E402

from trl_opd.demo.task import make_dataset  # noqa: E402
from trl_opd.testing import build_tiny_model, build_tiny_tokenizer, tiny_training_kwargs  # noqa: E402
from trl_opd.trainers.atesd_config import ATESDConfig  # noqa: E402
from trl_opd.trainers.atesd_trainer import ATESDTrainer  # noqa: E402


def build(name: str, model, tokenizer, dataset, args, output_dir: str) -> ATESDTrainer:
    overrides = {"exposure_policy": "fixed", "alpha": 1.0} if name == "opsd" else {}
    config = ATESDConfig(
        **tiny_training_kwargs(
            os.path.join(output_dir, name),
            max_steps=args.steps + args.warmup,
            per_device_train_batch_size=args.batch,
            max_completion_length=args.completion,
            learning_rate=5e-4,
            **overrides,
        )
    )
    trainer = ATESDTrainer(model=model, args=config, train_dataset=dataset, processing_class=copy.deepcopy(tokenizer))
    trainer.create_optimizer_and_scheduler(num_training_steps=config.max_steps)
    trainer.state.max_steps = config.max_steps
    trainer.current_gradient_accumulation_steps = 1
    trainer.model.train()
    return trainer


def timed(trainer: ATESDTrainer, clock: dict[str, float]) -> None:
    """Accumulate the CPU time of the controller's probe-set forwards and of the collapse repair into `clock`."""
    for name in ("_probe_nll", "_teacher_grounding", "_repair_collapsed"):
        original = getattr(trainer, name)

        def wrapper(*args, _original=original, _name=name):
            start = time.process_time()
            try:
                return _original(*args)
            finally:
                clock[_name] += time.process_time() - start

        setattr(trainer, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=16, help="measured steps per trainer")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured first steps per trainer")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--completion", type=int, default=40, help="max_completion_length")
    parser.add_argument("--n-ops", type=int, default=2, help="reasoning steps per problem (reference segments)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer = build_tiny_tokenizer()
    student = build_tiny_model(tokenizer, "student", seed=0)
    dataset = make_dataset(max(64, args.batch * (args.steps + args.warmup)), seed=7, n_ops=args.n_ops)
    with tempfile.TemporaryDirectory() as output_dir:
        trainers = {
            name: build(name, copy.deepcopy(student), tokenizer, dataset, args, output_dir)
            for name in ("atesd", "opsd")
        }
        clock: dict[str, float] = defaultdict(float)
        timed(trainers["atesd"], clock)
        times = interleaved_steps(trainers, dataset, args.batch, args.warmup, args.steps, on_measure_start=clock.clear)
    report(times, clock, args, trainers["atesd"])


def report(times, clock, args, atesd: ATESDTrainer) -> None:
    print(
        f"ATESD vs OPSD step time, {args.steps} interleaved steps, batch {args.batch}, {args.n_ops}-step problems, "
        f"max_completion_length {args.completion}, tiny student (CPU, {torch.get_num_threads()} thread(s))"
    )
    for index, kind in enumerate(("wall", "CPU")):
        series = {name: [t[index] for t in values] for name, values in times.items()}
        median = {name: statistics.median(values) for name, values in series.items()}
        mean = {name: statistics.fmean(values) for name, values in series.items()}
        ratios = [a / o for a, o in zip(series["atesd"], series["opsd"])]
        print(
            f"  {kind:>4} time  OPSD median {median['opsd'] * 1e3:7.1f} ms  ATESD median {median['atesd'] * 1e3:7.1f} ms"
            f"  ratio ATESD/OPSD: medians {median['atesd'] / median['opsd']:.3f}, means "
            f"{mean['atesd'] / mean['opsd']:.3f}, median per-step {statistics.median(ratios):.3f}  (target <= 1.05)"
        )
        if kind == "CPU":
            probe = (clock["_probe_nll"] + clock["_teacher_grounding"]) / args.steps
            print(
                f"  probe set + teacher grounding: {probe * 1e3:.1f} ms CPU per step = {probe / median['opsd']:.3f} "
                f"of the OPSD step (probe {clock['_probe_nll'] / args.steps * 1e3:.1f} ms, grounding "
                f"{clock['_teacher_grounding'] / args.steps * 1e3:.1f} ms)"
            )
            repair = clock["_repair_collapsed"] / args.steps
            print(
                f"  collapse repair (ATESD's, also on the OPSD side here): {repair * 1e3:.1f} ms CPU per ATESD step = "
                f"{repair / median['opsd']:.3f} of the OPSD step"
            )
    alphas = sorted({round(a, 2) for a in atesd._metrics["train"]["atesd/alpha"]})
    print(f"  ATESD exposures used: {alphas}")


if __name__ == "__main__":
    main()
