# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""Peak memory and time of one forward+backward of the student–teacher loss at the Qwen3 vocabulary.

Three implementations on the same inputs (student/teacher hidden states and `lm_head` weights, `V = 151936`):
- `gkd_full`: full logits of both models, then TRL's `GKDTrainer.generalized_jsd_loss`;
- `trl_chunked`: TRL's `_chunked_divergence_loss` (DistillationTrainer);
- `trl_opd`: our `fused_distillation_stats` (divergence plus sampled-token log-probs and both entropies).

Each measurement runs in a fresh child process (peak RSS above the inputs' baseline, wall time of forward+backward);
the variants are interleaved over `--repeats` rounds in one run and the medians are compared as ratios.

    python benchmarks/bench_loss_memory.py                # T=1024, H=1024 (about 5 minutes on 2 CPU cores)
    python benchmarks/bench_loss_memory.py --tokens 256   # quicker
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch


VARIANTS = ("gkd_full", "trl_chunked", "trl_opd")


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(variant: str, tokens: int, hidden: int, vocab: int, beta: float) -> dict:
    """Run one variant once in this (fresh) process and report peak RSS above the inputs and the wall time."""
    torch.manual_seed(0)
    torch.set_num_threads(2)
    student_hidden = torch.randn(1, tokens, hidden, requires_grad=True)
    student_weight = (torch.randn(vocab, hidden) * 0.02).requires_grad_()
    teacher_hidden = torch.randn(1, tokens, hidden)
    teacher_weight = torch.randn(vocab, hidden) * 0.02
    targets = torch.randint(0, vocab, (1, tokens))
    mask = torch.ones(1, tokens)
    baseline = _rss_mb()
    start = time.perf_counter()
    if variant == "gkd_full":
        from trl.experimental.gkd import GKDTrainer

        student_logits = student_hidden @ student_weight.T
        with torch.no_grad():
            teacher_logits = teacher_hidden @ teacher_weight.T
        loss = GKDTrainer.generalized_jsd_loss(student_logits, teacher_logits, beta=beta)
    elif variant == "trl_chunked":
        from trl.trainer.distillation_trainer import _chunked_divergence_loss

        loss, _, _ = _chunked_divergence_loss(
            student_hidden, teacher_hidden, student_weight, teacher_weight, mask, beta
        )
    else:
        from trl_opd.ops import fused_distillation_stats, masked_global_mean

        stats = fused_distillation_stats(student_hidden, student_weight, teacher_hidden, teacher_weight, targets, beta)
        loss = masked_global_mean(stats["divergence"], mask, None)
    loss.backward()
    seconds = time.perf_counter() - start
    return {"variant": variant, "peak_mb": _peak_mb() - baseline, "seconds": seconds, "loss": loss.item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--beta", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.tokens, args.hidden, args.vocab, args.beta)))
        return
    results: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for _ in range(args.repeats):
        for variant in VARIANTS:
            cmd = [
                sys.executable,
                __file__,
                "--child",
                variant,
                "--tokens",
                str(args.tokens),
                "--hidden",
                str(args.hidden),
                "--vocab",
                str(args.vocab),
                "--beta",
                str(args.beta),
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            results[variant].append(json.loads(out))
    med = {
        v: {k: statistics.median(r[k] for r in rs) for k in ("peak_mb", "seconds", "loss")}
        for v, rs in results.items()
    }
    print(f"T={args.tokens} H={args.hidden} V={args.vocab} beta={args.beta}, medians of {args.repeats} run(s)")
    print(f"{'variant':<12} {'peak MB':>10} {'seconds':>9} {'loss':>10}")
    for variant, m in med.items():
        print(f"{variant:<12} {m['peak_mb']:>10.0f} {m['seconds']:>9.2f} {m['loss']:>10.5f}")
    ours, trl, full = med["trl_opd"], med["trl_chunked"], med["gkd_full"]
    print(
        f"trl_opd / trl_chunked: memory {ours['peak_mb'] / trl['peak_mb']:.2f}x, time "
        f"{ours['seconds'] / trl['seconds']:.2f}x (target <= 1.1x both)"
    )
    print(
        f"trl_opd / gkd_full:    memory {ours['peak_mb'] / full['peak_mb']:.2f}x, time "
        f"{ours['seconds'] / full['seconds']:.2f}x"
    )


if __name__ == "__main__":
    main()
