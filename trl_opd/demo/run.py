# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""`trl-opd demo`: offline, CPU-sized, end to end.

1. Builds the synthetic arithmetic task (train / held-out), a tiny tokenizer, a tiny teacher and a smaller student.
2. Trains the teacher to competence by supervised learning on the reference solutions (cached for the next run),
   and warms the student up briefly (cached too), so it knows the format but is often wrong.
3. Distils the student on-policy with each chosen method, scoring held-out accuracy (greedy, boxed-answer check)
   every few steps, then writes `results.md` (table), `accuracy.png` (accuracy against step) and `results.json`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import shutil
import sys
import time
from pathlib import Path

import torch
from datasets import concatenate_datasets
from transformers import AutoModelForCausalLM, TrainerCallback
from trl import ModelConfig

from ..data import privileged_prompt, truncate_reference
from ..launch.build import build_trainer
from ..launch.methods import METHODS, available_methods, get_spec, load_method
from ..launch.recipe import ScriptArguments
from ..testing import build_tiny_model, build_tiny_tokenizer
from .pretrain import heldout_accuracy, supervised_warmup
from .report import write_plot, write_table
from .task import make_dataset


DEMO_VERSION = "3"  # bump when the task or the pre-training recipe changes (invalidates the cache)
TEACHER_STEPS, STUDENT_STEPS = 1200, 400
N_TRAIN, N_HELDOUT = 4000, 256
# The student is smaller than the teacher (hidden 128, 3 layers); it is warmed up at a constant learning rate, so
# distillation at the same rate continues its training smoothly instead of kicking it out of a decayed minimum.
STUDENT_SHAPE = {"hidden_size": 96, "num_hidden_layers": 3, "intermediate_size": 192}
STUDENT_LR = 1e-3

# Per-family settings for a few fast steps on 2 CPU cores; per-method overrides on top.
FAMILY_SETTINGS = {
    "distillation": {"per_device_train_batch_size": 32, "learning_rate": STUDENT_LR / 2, "beta": 0.0},
    "gkd": {
        "per_device_train_batch_size": 32,
        "learning_rate": STUDENT_LR / 2,
        "beta": 0.0,
        "lmbda": 1.0,
        "max_new_tokens": 40,
        "max_length": 160,
    },
    # policy-gradient updates of a tiny model collapse at the distillation rate (plain GRPO included): 10x lower
    "grpo": {"per_device_train_batch_size": 32, "num_generations": 4, "learning_rate": STUDENT_LR / 10, "beta": 0.0},
}
METHOD_SETTINGS: dict[str, dict] = {
    "motab": {"max_segment_tokens": 16, "boundary_warmup_steps": 5},
    # a short hold and horizon give the controller several updates within the demo's steps
    "atesd": {"hold_steps": 4, "reward_horizon": 8, "controller_batch": 4, "controller_lr": 0.01},
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="trl-opd demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--methods", default=None, help="Comma-separated methods (default: opd and every implemented method)."
    )
    parser.add_argument("--steps", type=int, default=150, help="Optimizer steps per method (default: 150).")
    parser.add_argument("--eval-every", type=int, default=25, help="Held-out scoring interval in steps.")
    parser.add_argument("--output-dir", default="demo_output", help="Where the table, plot and runs go.")
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="Where the pre-trained teacher/student are cached (default: ~/.cache/trl-opd/demo).",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: tiny models run faster on one thread than on two busy ones).",
    )
    return parser.parse_args(argv)


def select_methods(requested: str | None) -> list[str]:
    if requested is None:
        return [m for m in available_methods() if METHODS[m].in_demo]  # the others: with --methods
    names = [m.strip() for m in requested.split(",") if m.strip()]
    for name in names:
        get_spec(name)
        load_method(name)  # a clear error when a method's implementation is absent
    return names


def _cache_root(cache_dir: str | None) -> Path:
    base = Path(cache_dir) if cache_dir else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "trl-opd"
    key = hashlib.sha1(
        f"{DEMO_VERSION}-{TEACHER_STEPS}-{STUDENT_STEPS}-{N_TRAIN}-{STUDENT_SHAPE}".encode()
    ).hexdigest()[:10]
    return (base if cache_dir else base / "demo") / key


def pretrained(role: str, steps: int, tokenizer, train, cache: Path, seed: int) -> Path:
    """Path to the supervised-warm-up model of `role`, trained now unless cached. Written atomically."""
    path = cache / role
    if (path / "config.json").is_file():
        return path
    if role == "teacher":
        model = build_tiny_model(tokenizer, "teacher", seed=seed + 1)
        supervised_warmup(model, tokenizer, train, steps=steps, seed=seed, desc="pre-training the teacher")
    else:
        model = build_tiny_model(tokenizer, "student", seed=seed, **STUDENT_SHAPE)
        warmup_data = concatenate_datasets([train, with_privileged_context(train, seed)]).shuffle(seed=seed)
        supervised_warmup(
            model,
            tokenizer,
            warmup_data,
            steps=steps,
            lr=STUDENT_LR,
            seed=seed,
            decay=False,
            desc="warming up the student",
        )
    tmp = cache / f".{role}.tmp-{os.getpid()}"
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    return path


def with_privileged_context(dataset, seed: int):
    """The same rows with the teacher's privileged prompt (a random share of the reference's steps plus its answer).

    An LLM reads a reference solution in its context without being taught to; a tiny model has to see the format once.
    Mixing these rows into the student's warm-up lets the self-distillation methods' teacher (the student shown the
    reference) be better than the student, as it is at scale.
    """
    rng = random.Random(seed)

    def expose(row):
        alpha = rng.choice([0.0, 0.5, 1.0])
        reference = row["solution"] if alpha == 1.0 else truncate_reference(row["solution"], alpha)[0]
        return {"prompt": privileged_prompt(row["prompt"], reference)}

    return dataset.map(expose)


class HeldoutCallback(TrainerCallback):
    """Scores held-out accuracy every `every` steps (and at the end) into `curve`."""

    def __init__(self, tokenizer, heldout, every: int):
        self.tokenizer, self.heldout, self.every, self.curve = tokenizer, heldout, every, []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            self.curve.append((state.global_step, heldout_accuracy(model, self.tokenizer, self.heldout)))


def method_config(method: str, output_dir: Path, steps: int, seed: int, teacher: Path):
    """The method's config for the demo: its defaults, the family's fast settings, then the method's own."""
    spec = get_spec(method)
    config_class, _ = load_method(method)
    kwargs = {
        "output_dir": str(output_dir),
        "max_steps": steps,
        "max_completion_length": 40,
        "temperature": 1.0,
        "logging_steps": 25,
        "save_strategy": "no",
        "report_to": "none",
        "seed": seed,
        "disable_tqdm": False,
        "lr_scheduler_type": "constant_with_warmup",
        "warmup_steps": 10,
        "dataloader_num_workers": 0,
        **FAMILY_SETTINGS[spec.family],
        **spec.config_overrides,
        **METHOD_SETTINGS.get(method, {}),
    }
    if spec.family == "gkd":
        kwargs.pop("max_completion_length")
    if spec.needs_teacher:
        kwargs["teacher_model_name_or_path"] = str(teacher)
    return config_class(**kwargs)


def run_method(method: str, student: Path, teacher: Path, train, heldout, tokenizer, args, out: Path) -> dict:
    """Train one method from the warmed-up student through the CLI's own trainer factory; score it as it goes."""
    spec = get_spec(method)
    config = method_config(method, out / "runs" / method, args.steps, args.seed, teacher)
    callback = HeldoutCallback(tokenizer, heldout, args.eval_every)
    trainer = build_trainer(
        ScriptArguments(method=method),
        config,
        ModelConfig(model_name_or_path=str(student)),
        train_dataset=train,
        processing_class=build_tiny_tokenizer(),
        callbacks=[callback],
    )
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    lengths = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
    result = {
        "curve": callback.curve,
        "seconds": seconds,
        "mean_length": sum(lengths) / len(lengths) if lengths else None,
    }
    write_demo_card(trainer, method, student, teacher if spec.needs_teacher else None, result, len(heldout))
    return result


def write_demo_card(trainer, method: str, student: Path, teacher: Path | None, result: dict, n_heldout: int) -> None:
    """Save the distilled student with a complete model card (its eval table: the held-out arithmetic accuracy)."""
    from ..launch.model_card import render_model_card, training_card_info, write_model_card

    trainer.save_model(trainer.args.output_dir)
    evaluation = {
        "results": [
            {
                "task": "demo_arithmetic",
                "title": "synthetic arithmetic (held-out)",
                "average_at_k": result["curve"][-1][1],
                "pass_at_k": result["curve"][-1][1],
                "mean_length": result["mean_length"] or 0.0,
                "k": 1,
                "num_problems": n_heldout,
            }
        ],
        "sampling": {"temperature": 0.0, "top_p": 1.0, "top_k": 0, "max_new_tokens": 48},
        "num_samples": 1,
        "backend": "transformers (greedy, trl-opd demo)",
        "data": "the demo's generator",
        "step": trainer.state.global_step,
    }
    info = training_card_info(
        method,
        trainer.args,
        str(student),
        teacher=str(teacher) if teacher else None,
        training_data="synthetic multi-step arithmetic (trl_opd.demo.task)",
        evaluation=evaluation,
    )
    write_model_card(trainer.args.output_dir, render_model_card(info))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    methods = select_methods(args.methods)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    logging.getLogger("trl_opd").setLevel(logging.ERROR)  # the CPU-safety line once per method is noise here
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache = _cache_root(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer()
    train, heldout = make_dataset(N_TRAIN, seed=args.seed), make_dataset(N_HELDOUT, seed=args.seed + 10_000)
    teacher = pretrained("teacher", TEACHER_STEPS, tokenizer, train, cache, args.seed)
    student = pretrained("student", STUDENT_STEPS, tokenizer, train, cache, args.seed)
    teacher_acc = heldout_accuracy(AutoModelForCausalLM.from_pretrained(teacher), tokenizer, heldout)
    start_acc = heldout_accuracy(AutoModelForCausalLM.from_pretrained(student), tokenizer, heldout)
    print(f"teacher held-out accuracy {teacher_acc:.3f}; student before distillation {start_acc:.3f}", flush=True)
    results = {}
    for method in methods:
        print(f"== {method} ({METHODS[method].paper})", flush=True)
        results[method] = run_method(method, student, teacher, train, heldout, tokenizer, args, out)
        results[method]["curve"].insert(0, (0, start_acc))
    summary = {"teacher_accuracy": teacher_acc, "start_accuracy": start_acc, "steps": args.steps, "methods": results}
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    table = write_table(out / "results.md", summary)
    write_plot(out / "accuracy.png", summary)
    print(table)
    print(f"wrote {out / 'results.md'} and {out / 'accuracy.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
