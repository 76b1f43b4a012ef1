# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""TrOPD vs the `opd` baseline on the same batch: loss+backward step time and peak loss memory, side by side.

Run: `.venv/bin/python benchmarks/bench_tropd.py [--reps 15]`. Guidance is off (it changes generation, not the loss
step). Each TrOPD row is read against `opd` with its own in-region loss: the default (`trust_region_loss: k1`) against
`opd` with `divergence: k1`, the dense rows (`trust_region_loss: divergence`, `beta: 0`) against `opd` with the
forward KL (`divergence: jsd`, `beta: 0`). Two model pairs: the demo's tiny pair (vocab 512) and a wide-vocabulary pair (vocab 8192) in which the
`lm_head` projections dominate the loss step. Step time is the median over interleaved repetitions of the process CPU
time with one torch thread (wall time on a shared machine is mostly other processes' load; both are printed). Peak loss
memory is the peak of live CPU tensor bytes allocated during `compute_loss` + `backward` (tracked per storage with a
dispatch mode: every tensor created by an operator, freed storages dropped), so parameters and the batch are excluded.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from functools import partial
from pathlib import Path


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import torch  # noqa: E402
from interleaved import interleaved_calls  # noqa: E402
from torch.multiprocessing.reductions import StorageWeakRef  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_flatten  # noqa: E402

from trl_opd import OPDConfig, OPDTrainer  # noqa: E402
from trl_opd.demo.task import make_dataset  # noqa: E402
from trl_opd.testing import build_tiny_model, build_tiny_tokenizer, tiny_training_kwargs  # noqa: E402
from trl_opd.trainers.tropd_config import TrOPDConfig  # noqa: E402
from trl_opd.trainers.tropd_trainer import TrOPDTrainer  # noqa: E402


class PeakTensorMemory(TorchDispatchMode):
    """Peak bytes of live CPU storages created by operators while the mode is active."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for key in [k for k, (ref, _) in self.live.items() if ref.expired()]:
            self.current -= self.live.pop(key)[1]
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key and key not in self.live:
                    self.live[key] = (StorageWeakRef(storage), storage.nbytes())
                    self.current += storage.nbytes()
                    self.peak = max(self.peak, self.current)
        return out


#: The performance target: the default TrOPD (guidance off, δ=1) loss step within 10% of opd's, time and memory.
TARGET = 1.1


def save_pair(root: Path, vocab: int) -> tuple[str, str]:
    tokenizer = build_tiny_tokenizer()
    paths = []
    for seed, role in enumerate(("student", "teacher")):
        path = root / f"{role}-{vocab}"
        build_tiny_model(tokenizer, role, seed=seed, vocab_size=vocab).save_pretrained(path)
        tokenizer.save_pretrained(path)
        paths.append(str(path))
    return paths[0], paths[1]


def fixed_batch(n_tokens: int, batch: int = 8, prompt: int = 16, completion: int = 40) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    completion_mask = torch.ones(batch, completion, dtype=torch.long)
    completion_mask[::2, completion - 8 :] = 0  # some padding
    return {
        "prompt_ids": torch.randint(10, n_tokens, (batch, prompt), generator=g),
        "prompt_mask": torch.ones(batch, prompt, dtype=torch.long),
        "completion_ids": torch.randint(10, n_tokens, (batch, completion), generator=g),
        "completion_mask": completion_mask,
        "num_items_in_batch": completion_mask.sum(),
    }


def loss_step(trainer, batch) -> None:
    trainer.model.zero_grad(set_to_none=True)
    trainer.compute_loss(trainer.model, dict(batch)).backward()


BASELINES = {"opd (k1)": "k1", "opd (jsd β=0)": "jsd"}
DEFAULT = "tropd δ=1 (default, k1)"
VARIANTS = {  # name: (its baseline, trust_threshold, trust_region_loss, outlier_tail_bucket)
    DEFAULT: ("opd (k1)", 1.0, "k1", True),
    "tropd δ=0": ("opd (k1)", 0.0, "k1", True),
    "tropd δ=1 k1 renormalised": ("opd (k1)", 1.0, "k1", False),
    "tropd δ=1 dense": ("opd (jsd β=0)", 1.0, "divergence", True),
}


def build(name, student, teacher, out):
    common = tiny_training_kwargs(out, max_completion_length=40, per_device_train_batch_size=8, beta=0.0)
    if name in BASELINES:
        return OPDTrainer(
            model=student,
            teacher_model=teacher,
            args=OPDConfig(**common, divergence=BASELINES[name]),
            train_dataset=make_dataset(16, seed=0),
        )
    _, threshold, loss, tail = VARIANTS[name]
    config = TrOPDConfig(
        **common,
        trust_threshold=threshold,
        trust_region_loss=loss,
        guidance_prob_start=0.0,
        outlier_tail_bucket=tail,
    )
    return TrOPDTrainer(model=student, teacher_model=teacher, args=config, train_dataset=make_dataset(16, seed=0))


def bench_pair(label: str, student: str, teacher: str, out: str, reps: int) -> None:
    names = [*BASELINES, *VARIANTS]
    trainers = {name: build(name, student, teacher, out) for name in names}
    for trainer in trainers.values():
        trainer.model.train()
    batch = fixed_batch(len(trainers[names[0]].processing_class))
    # interleaved (after one warm-up step each), so machine noise hits every variant alike
    times = interleaved_calls({name: partial(loss_step, trainer, batch) for name, trainer in trainers.items()}, reps)
    peaks = {}
    for name, trainer in trainers.items():
        with PeakTensorMemory() as tracker:
            loss_step(trainer, batch)
        peaks[name] = tracker.peak
    wall = {name: statistics.median(w for w, _ in times[name]) for name in names}
    cpu = {name: statistics.median(t for _, t in times[name]) for name in names}
    base = {name: VARIANTS[name][0] if name in VARIANTS else name for name in names}
    trusted = trainers[DEFAULT]._metrics["train"]["tropd/trusted_fraction"][-1]
    print(f"\n{label} (trusted fraction at δ=1: {trusted:.2f}); x opd: against the baseline named in brackets")
    print(f"{'variant':<36}{'cpu ms':>9}{'x opd':>8}{'wall ms':>9}{'x opd':>8}{'peak MiB':>10}{'x opd':>8}")
    for name in names:
        b = base[name]
        print(
            f"{name + ('' if b == name else f' [{b}]'):<36}{cpu[name] * 1e3:>9.1f}{cpu[name] / cpu[b]:>8.3f}"
            f"{wall[name] * 1e3:>9.1f}{wall[name] / wall[b]:>8.3f}{peaks[name] / 2**20:>10.2f}{peaks[name] / peaks[b]:>8.3f}"
        )
    default, b = DEFAULT, base[DEFAULT]
    time_ratio, peak_ratio = cpu[default] / cpu[b], peaks[default] / peaks[b]
    verdict = "holds" if time_ratio <= TARGET and peak_ratio <= TARGET else "MISSED"
    print(f"target (default TrOPD ≤ {TARGET}x opd in cpu time and peak memory): {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for label, vocab in (("tiny demo pair, vocab 512", 512), ("wide-vocabulary pair, vocab 8192", 8192)):
            student, teacher = save_pair(root, vocab)
            bench_pair(label, student, teacher, str(root / "out"), args.reps)


if __name__ == "__main__":
    main()
