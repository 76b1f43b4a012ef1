# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""MOTAB benchmark on tiny models (CPU or GPU), all ratios measured side by side in one run.

    .venv/bin/python benchmarks/bench_motab.py [--steps 12] [--warmup 1] [--threads 1]

1. Rollout wall time: MOTAB's segment-wise rollout with the boundary at +inf (no backtrack) against plain
   `model.generate` of the same number of tokens (EOS suppressed in both), interleaved over 21 rounds; the ratio is the
   median of the per-round ratios of process CPU time (wall time printed beside it). Target (issue 12): <= 1.2x.
2. Cost per backtrack: the same rollout with every rollout forced to backtrack `k` times.
3. Peak memory of the loss (forward + backward of `compute_loss`) of MOTAB against the `opd` baseline (OPDTrainer) on
   the same batch with teacher-written tokens. Target: <= 1.1x. CUDA: `max_memory_allocated`; CPU: the profiler's
   allocation events.
4. Step cost at the default backtrack rate (issue 12): one full training step (`training_step`: rollout, teacher
   scoring, loss, backward; plus the optimizer step) of `MOTABTrainer` at its default `MOTABConfig` (adaptive
   boundary at quantile 0.9, segments of up to 256 tokens ending at `"\\n\\n"`, 4 backtracks per rollout,
   strayed segments not trained) against `OPDTrainer` (the `opd` method) at its defaults, same tiny student and teacher, same
   prompts and sampling seed at every step. The steps are interleaved (alternating which trainer goes first) so that
   load on a shared machine hits both alike; the ratio is the median of the per-step ratios, in wall and in process
   CPU time (with one torch thread CPU time counts the work done, the headline number on a busy CPU). The one
   setting changed: the boundary's warm-up (`boundary_warmup_steps`, default 10 steps of `+inf`, i.e. no backtrack)
   ends with the bench's own warm-up steps, so that every measured step runs with the adaptive boundary; the
   observed backtrack rate (`motab/backtracks_per_rollout`) over the measured steps is printed with the ratio.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from interleaved import interleaved_calls, interleaved_steps  # noqa: E402

from trl_opd.demo.task import make_dataset  # noqa: E402
from trl_opd.testing import build_tiny_model, build_tiny_tokenizer, save_tiny_pair, tiny_training_kwargs  # noqa: E402
from trl_opd.trainers.motab_backends import HFStepBackend  # noqa: E402
from trl_opd.trainers.motab_config import MOTABConfig  # noqa: E402
from trl_opd.trainers.motab_rollout import SegmentRollout, SegmentStopper  # noqa: E402
from trl_opd.trainers.motab_trainer import MOTABTrainer  # noqa: E402
from trl_opd.trainers.opd_config import OPDConfig  # noqa: E402
from trl_opd.trainers.opd_trainer import OPDTrainer  # noqa: E402


BATCH, NEW_TOKENS, SEGMENT, BACKTRACKS, REPEATS = 8, 64, 16, 2, 21
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def rollout_times() -> dict[str, float]:
    tok = build_tiny_tokenizer()
    student = build_tiny_model(tok, "student", seed=0).to(DEVICE).eval()
    teacher = build_tiny_model(tok, "teacher", seed=1).to(DEVICE).eval()
    rows = make_dataset(BATCH, seed=0)
    prompts = [tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=False) for r in rows]
    prompts = [tok.encode(p, add_special_tokens=False) for p in prompts]
    width = max(map(len, prompts))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts], device=DEVICE)
    mask = (
        torch.arange(width, device=DEVICE)[None]
        >= torch.tensor([width - len(p) for p in prompts], device=DEVICE)[:, None]
    ).long()

    @torch.no_grad()
    def plain():
        student.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            do_sample=True,
            top_k=0,
            pad_token_id=tok.pad_token_id,
        )

    stopper = SegmentStopper(tok, "\x00never\x00", [])  # no delimiter, no EOS: segments of SEGMENT tokens

    def motab(boundary: float, max_backtracks: int):
        @torch.no_grad()
        def run():
            s, t = (
                HFStepBackend(student, pad_token_id=tok.pad_token_id),
                HFStepBackend(teacher, pad_token_id=tok.pad_token_id),
            )
            traces = SegmentRollout(s, t, stopper, NEW_TOKENS, SEGMENT, max_backtracks).run(prompts, prompts, boundary)
            assert all(
                len(x.tokens) == NEW_TOKENS and x.backtracks == (max_backtracks if boundary < 0 else 0) for x in traces
            )

        return run

    times = interleaved_calls(
        {"plain": plain, "motab": motab(math.inf, BACKTRACKS), "motab_backtracking": motab(-math.inf, BACKTRACKS)},
        REPEATS,
    )
    medians = {name: statistics.median(wall for wall, _ in values) for name, values in times.items()}
    for index, kind in enumerate(("wall", "cpu")):
        pairs = zip(times["motab"], times["plain"], strict=True)
        medians[f"ratio_{kind}"] = statistics.median(m[index] / p[index] for m, p in pairs)
    return medians


def _peak_bytes(fn) -> int:
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        return torch.cuda.max_memory_allocated() - base
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns()
    )
    current = peak = 0
    for event in events:
        current += event.nbytes()
        peak = max(peak, current)
    return peak


def loss_peak_memory(root: Path) -> dict[str, float]:
    data = make_dataset(16, seed=1)
    common = tiny_training_kwargs(
        root / "out",
        per_device_train_batch_size=BATCH,
        max_completion_length=NEW_TOKENS,
        beta=0.5,
        use_cpu=DEVICE == "cpu",
    )
    motab = MOTABTrainer(
        model=str(root / "student"),
        teacher_model=str(root / "teacher"),
        train_dataset=data,
        args=MOTABConfig(**common, fixed_boundary=0.0, max_segment_tokens=SEGMENT),
    )
    opd = OPDTrainer(
        model=str(root / "student"), teacher_model=str(root / "teacher"), train_dataset=data, args=OPDConfig(**common)
    )
    motab.model.train()
    opd.model.train()
    torch.manual_seed(0)
    inputs = motab._generate_and_score_completions([data[i] for i in range(BATCH)])
    opd_inputs = {k: v for k, v in inputs.items() if k != "teacher_token_mask"}
    fraction = float(
        (inputs["teacher_token_mask"] * inputs["completion_mask"]).sum() / inputs["completion_mask"].sum()
    )

    def step(trainer, batch):
        def run():
            trainer.compute_loss(trainer.model, batch).backward()
            trainer.model.zero_grad(set_to_none=True)

        return run

    step(opd, opd_inputs)()  # warm-up both (lazy buffers)
    step(motab, inputs)()
    return {
        "opd": _peak_bytes(step(opd, opd_inputs)),
        "motab": _peak_bytes(step(motab, inputs)),
        "teacher_fraction": fraction,
    }


def build_step_trainer(name: str, root: Path, dataset, opts: argparse.Namespace) -> OPDTrainer:
    """A trainer of the saved tiny pair under `root`, ready for `interleaved.optimizer_step`: `motab` (MOTAB's defaults, the boundary's
    warm-up cut to the bench's) or `opd` (OPDTrainer's defaults)."""
    common = tiny_training_kwargs(
        root / "out" / name,
        max_steps=opts.warmup + opts.steps,
        per_device_train_batch_size=BATCH,
        max_completion_length=NEW_TOKENS,
        use_cpu=DEVICE == "cpu",
    )
    if name == "motab":
        cls, config = MOTABTrainer, MOTABConfig(**common, boundary_warmup_steps=opts.warmup)
    else:
        cls, config = OPDTrainer, OPDConfig(**common)
    trainer = cls(model=str(root / "student"), teacher_model=str(root / "teacher"), args=config, train_dataset=dataset)
    trainer.create_optimizer_and_scheduler(num_training_steps=config.max_steps)
    trainer.state.max_steps = config.max_steps
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop otherwise
    trainer.model.train()
    return trainer


def step_times(root: Path, opts: argparse.Namespace) -> tuple[dict[str, list[tuple[float, float]]], dict]:
    """Interleaved full steps of MOTAB and `opd` on the same rows and seeds; the measured `(wall, CPU)` times per
    trainer, and MOTAB's `motab/...` metrics of the measured steps."""
    dataset = make_dataset(max(64, BATCH * (opts.warmup + opts.steps)), seed=7)
    trainers = {name: build_step_trainer(name, root, dataset, opts) for name in ("motab", "opd")}
    times = interleaved_steps(trainers, dataset, BATCH, opts.warmup, opts.steps)
    metrics = trainers["motab"]._metrics["train"]  # these three: one value per rollout batch, i.e. per step
    keys = ("backtracks_per_rollout", "backtracked_fraction", "teacher_token_fraction")
    measured = {key: metrics[f"motab/{key}"][opts.warmup :] for key in keys}
    return times, measured


def report_steps(times, motab_metrics: dict[str, list[float]], opts: argparse.Namespace) -> None:
    rate = statistics.fmean(motab_metrics["backtracks_per_rollout"])
    print(
        f"step cost, MOTAB (defaults) vs opd: {opts.steps} interleaved steps after {opts.warmup} warm-up, "
        f"batch {BATCH}, max_completion_length {NEW_TOKENS}, {torch.get_num_threads()} torch thread(s)"
    )
    print(
        f"  MOTAB backtrack rate over the measured steps: {rate:.3f} backtracks/rollout (per step: "
        f"{', '.join(f'{x:.2f}' for x in motab_metrics['backtracks_per_rollout'])}); rollouts backtracked "
        f"{statistics.fmean(motab_metrics['backtracked_fraction']):.3f}, teacher-token fraction "
        f"{statistics.fmean(motab_metrics['teacher_token_fraction']):.3f}"
    )
    for index, kind in enumerate(("wall", "CPU")):
        series = {name: [t[index] for t in values] for name, values in times.items()}
        median = {name: statistics.median(values) for name, values in series.items()}
        ratio = statistics.median(m / o for m, o in zip(series["motab"], series["opd"], strict=True))
        print(
            f"  {kind:>4} time  opd median {median['opd'] * 1e3:7.1f} ms  MOTAB median {median['motab'] * 1e3:7.1f} ms"
            f"  MOTAB/opd step: median per-step ratio {ratio:.2f}x at {rate:.3f} backtracks/rollout"
        )


def report_rollout_and_memory(times: dict[str, float], memory: dict[str, float]) -> None:
    per_backtrack = (times["motab_backtracking"] - times["motab"]) / BACKTRACKS
    print(f"device: {DEVICE}; batch {BATCH}, {NEW_TOKENS} new tokens, segments of {SEGMENT}")
    print(f"plain student generate           : {times['plain'] * 1e3:8.1f} ms")
    ratio = times["ratio_cpu"]  # the median of the per-round ratios of CPU time, the headline (as for the step)
    print(
        f"MOTAB rollout, no backtrack      : {times['motab'] * 1e3:8.1f} ms  ratio {ratio:.2f}x CPU time, "
        f"{times['ratio_wall']:.2f}x wall (per-round medians)  (target <= 1.2x: {'met' if ratio <= 1.2 else 'NOT met'})"
    )
    print(f"MOTAB rollout, {BACKTRACKS} backtracks/rollout: {times['motab_backtracking'] * 1e3:8.1f} ms")
    print(
        f"cost per backtrack (whole batch backtracking at once): {per_backtrack * 1e3:.1f} ms = "
        f"{per_backtrack / times['plain']:.2f}x of a plain rollout, "
        f"{per_backtrack / (times['motab'] / (NEW_TOKENS / SEGMENT)):.2f}x of one monitored segment round"
    )
    print(
        f"loss peak memory: opd {memory['opd'] / 2**20:.2f} MiB, MOTAB {memory['motab'] / 2**20:.2f} MiB, "
        f"ratio {memory['motab'] / memory['opd']:.3f}x (target <= 1.1x; teacher-token fraction "
        f"{memory['teacher_fraction']:.2f})"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12, help="measured training steps per trainer (part 4)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured first training steps per trainer (part 4)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    torch.manual_seed(0)
    times = rollout_times()
    with tempfile.TemporaryDirectory() as tmp:
        save_tiny_pair(tmp)
        memory = loss_peak_memory(Path(tmp))
        steps, motab_metrics = step_times(Path(tmp), opts)
    report_rollout_and_memory(times, memory)
    report_steps(steps, motab_metrics, opts)


if __name__ == "__main__":
    main()
