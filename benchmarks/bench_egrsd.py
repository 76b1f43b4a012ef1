# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""EGRSD vs plain GRPO on the same batch: step time and peak memory ratios.

    .venv/bin/python benchmarks/bench_egrsd.py [--steps 8] [--hidden 64] [--layers 2] [--completion-length 40]
        [--set FIELD=VALUE ...]

Both trainers wrap the same tiny student (same weights, never updated: `learning_rate=0`) and see the same rows.
- Time: one process, the two trainers interleaved step by step (A, B, B, A, ...) so that load on a shared machine hits
  both alike; the sampling seed is reset before each step, so both generate the same rollouts. `step` = generation,
  scoring, loss and backward (what a training step costs, the optimizer step aside, which is the same for both);
  `train compute` = the same with generation replaced by fixed rollouts (the part EGRSD adds to: one teacher forward,
  plus one no-grad student forward when GRPO has no old log-probs, i.e. without vLLM). Medians after a warm-up.
- Memory: each trainer in its own subprocess running the same steps; peak RSS on CPU (and the peak above the
  post-import baseline), `torch.cuda.max_memory_allocated` on GPU.
Times are wall-clock and process CPU time; with one torch thread (the default) CPU time counts the work done and is
robust to other processes sharing the machine, where wall-clock medians swing (0.95x to 1.31x in two runs).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import yaml


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def build(method: str, opts: argparse.Namespace):
    """A trainer for `method` on the tiny student, and the rows of one batch (2 prompts x 4 generations)."""
    from trl import GRPOTrainer

    from trl_opd.demo.task import make_dataset
    from trl_opd.rewards import math_accuracy_reward
    from trl_opd.testing import build_tiny_model, build_tiny_tokenizer, tiny_training_kwargs
    from trl_opd.trainers.baselines import GRPOBaselineConfig
    from trl_opd.trainers.egrsd_config import EGRSDConfig
    from trl_opd.trainers.egrsd_trainer import EGRSDTrainer

    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(
        tokenizer,
        "student",
        seed=0,
        hidden_size=opts.hidden,
        num_hidden_layers=opts.layers,
        intermediate_size=2 * opts.hidden,
    )
    dataset = make_dataset(16, seed=1)
    kwargs = tiny_training_kwargs(
        tempfile.mkdtemp(),
        num_generations=4,
        per_device_train_batch_size=8,
        max_completion_length=opts.completion_length,
        learning_rate=0.0,
        temperature=1.0,
        beta=0.0,
    )
    if method == "grpo":
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=[math_accuracy_reward],
            args=GRPOBaselineConfig(**kwargs),
            train_dataset=dataset,
            processing_class=tokenizer,
        )
    else:
        trainer = EGRSDTrainer(
            model=model, args=EGRSDConfig(**kwargs, **opts.egrsd), train_dataset=dataset, processing_class=tokenizer
        )
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop otherwise
    return trainer, [dict(dataset[i]) for i in range(2) for _ in range(4)]


def step(trainer, rows, seed: int) -> tuple[float, float]:
    """Wall and process CPU seconds for generation (or the fixed rollouts), scoring, loss and backward of one batch."""
    import torch

    torch.manual_seed(seed)
    start, cpu_start = time.perf_counter(), time.process_time()
    inputs = trainer._generate_and_score_completions([dict(r) for r in rows])
    trainer.compute_loss(trainer.model, inputs).backward()
    trainer.model.zero_grad(set_to_none=True)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - cpu_start


def fix_rollouts(trainer, rows, length: int) -> None:
    completions = [list(range(10, 10 + length)) for _ in rows]
    trainer._generate_single_turn = lambda *args, **kwargs: ([list(c) for c in completions], None)


def measure_memory(method: str, opts: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(opts.threads)
    base = _rss_mb()
    trainer, rows = build(method, opts)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    for k in range(opts.steps):
        step(trainer, rows, seed=k)
    if torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated() / 2**20
        return {"peak_mb": peak, "peak_above_base_mb": peak}
    return {"peak_mb": _rss_mb(), "peak_above_base_mb": _rss_mb() - base, "base_mb": base}


def measure_time(opts: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(opts.threads)
    trainers = {method: build(method, opts) for method in ("grpo", "egrsd")}
    kinds = ("step_s", "step_cpu_s", "compute_s", "compute_cpu_s")
    times = {(m, kind): [] for m in trainers for kind in kinds}
    for kind in ("step_s", "compute_s"):
        if kind == "compute_s":
            for trainer, rows in trainers.values():
                fix_rollouts(trainer, rows, opts.completion_length)
        for k in range(opts.steps + 1):
            order = ("grpo", "egrsd") if k % 2 == 0 else ("egrsd", "grpo")
            for method in order:
                seconds, cpu_seconds = step(*trainers[method], seed=k)
                if k > 0:  # the first round is warm-up
                    times[(method, kind)].append(seconds)
                    times[(method, kind.replace("_s", "_cpu_s"))].append(cpu_seconds)
    return {m: {kind: statistics.median(times[(m, kind)]) for kind in kinds} for m in trainers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=64, help="student hidden size (64 = the demo's)")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--completion-length", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--set",
        dest="egrsd",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="an EGRSDConfig field for the EGRSD side (YAML value), e.g. --set magnitude_trust=rank; repeatable",
    )
    parser.add_argument("--memory-child", choices=["grpo", "egrsd"], help=argparse.SUPPRESS)
    opts = parser.parse_args()
    opts.egrsd = {k: yaml.safe_load(v) for k, _, v in (item.partition("=") for item in opts.egrsd)}
    if opts.memory_child:
        print("RESULT " + json.dumps(measure_memory(opts.memory_child, opts)))
        return
    # memory first, while this process is still small: a child's peak RSS starts from its parent's at fork time
    results = {}
    for method in ("grpo", "egrsd"):
        argv = [sys.executable, __file__, "--memory-child", method] + sys.argv[1:]
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            sys.exit(f"{method} memory run failed:\n{proc.stderr[-3000:]}")
        results[method] = json.loads(lines[-1][len("RESULT ") :])
    import torch

    for method, times in measure_time(opts).items():
        results[method].update(times)
    grpo, egrsd = results["grpo"], results["egrsd"]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(
        f"device: {device}, student hidden {opts.hidden} x {opts.layers} layers, batch 8 (2 prompts x 4), "
        f"{opts.completion_length} new tokens, {opts.steps} interleaved steps (medians after a warm-up)"
        + (f"; EGRSD with {opts.egrsd}" if opts.egrsd else "")
    )
    print(f"{'':24}{'grpo':>10}{'egrsd':>10}{'ratio':>8}  target")
    rows = [
        ("step time (s)", "step_s", "<= 1.2x"),
        ("step CPU time (s)", "step_cpu_s", "<= 1.2x (robust to other processes with one thread)"),
        ("train compute (s)", "compute_s", "(generation excluded)"),
        ("train compute CPU (s)", "compute_cpu_s", "(generation excluded)"),
        ("peak memory (MB)", "peak_mb", "<= 1.1x"),
        ("peak above base (MB)", "peak_above_base_mb", ""),
    ]
    for label, key, target in rows:
        ratio = egrsd[key] / max(grpo[key], 1e-9)
        print(f"{label:24}{grpo[key]:>10.3f}{egrsd[key]:>10.3f}{ratio:>7.2f}x  {target}")
    print(f"base RSS after importing torch: {grpo['base_mb']:.0f} MB" if "base_mb" in grpo else "")


if __name__ == "__main__":
    main()
