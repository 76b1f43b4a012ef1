# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""`trl-opd lab`: multi-seed comparisons of the methods on offline worlds where each method's problem is real.

Every method starts from the same cached teacher and warm-started student, for every seed, and is trained through
the same public trainer classes and configs users get (the CLI's `build_trainer`). Held-out problems are scored with
greedy exact match, average@k of temperature-1 samples and mean completion length. Writes `<name>.json`,
`<name>.md` (mean ± std per method, paired differences to the first-named method) and `<name>.png`.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import platform
import random
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import yaml
from transformers import AutoModelForCausalLM, TrainerCallback
from transformers.utils import logging as hf_logging
from trl import ModelConfig

from ..launch.build import build_trainer, model_init_kwargs
from ..launch.methods import get_spec, load_method
from ..launch.recipe import ScriptArguments
from ..testing import build_tiny_tokenizer
from .build import Lab, LabError, build_lab
from .oracle import ORACLE_CONFIG, StepOracleTrainer, check_oracle_world, is_step_oracle, split_oracle_variant
from .report import confirmation_note, write_outputs
from .training import heldout_accuracy, score_model, supervised_warmup
from .worlds import WORLDS


SFT = "sft"  # the lab's control row: supervised training on the reference solutions (not a registry method)
K_SAMPLES = 4
# Per-family settings for a few fast steps on 2 CPU cores; per-method and per-world settings on top.
# On `arith` (200 steps, seed 0) `opd` gained more at 1e-3 than at 2e-3 or 3e-3.
LR = 1e-3
FAMILY_SETTINGS = {
    "distillation": {"per_device_train_batch_size": 32, "learning_rate": LR, "beta": 0.0},
    # With these settings `gkd` is `opd`'s objective, sampling and update but for one thing: TRL's GKDTrainer divides
    # the summed KL by the batch's reference-solution tokens (transformers counts the collator's labels before GKD
    # swaps in the student's completions), `opd` by the completion tokens. On `mismatch` (200 steps) that scale
    # gave gkd +0.04 (0.173 -> 0.214; opd with it 0.134 -> 0.168); gkd normalised as opd vs opd over 6 seeds:
    # 0.173 ± 0.036 vs 0.155 ± 0.037.
    "gkd": {"per_device_train_batch_size": 32, "learning_rate": LR, "beta": 0.0, "lmbda": 1.0},
    # Plain `grpo` on arith (seed 0, 100 steps, from 0.113): 1e-5 -> 0.121, 3e-5 -> 0.078, 1e-4 -> 0.066, 3e-4 and
    # 1e-3 -> 0.000. From a cold start (about 6 % of samples right) no rate or group size lifts it in 200 steps
    # (ablations/grpo-settings); from `ambiguous`'s warm start (a quarter right) 1e-5 lifts it 0.371 -> 0.500 on every
    # seed (3e-5: 0.570 on seed 0): benchmarks/results.
    "grpo": {"per_device_train_batch_size": 32, "num_generations": 4, "learning_rate": LR / 100, "beta": 0.0},
}
SFT_SETTINGS = {"batch_size": 32, "learning_rate": LR}
# `--lr-schedule`: TRL's `lr_scheduler_type` after the warm-up steps (the SFT control follows the same shape).
# `linear` is what a user's config gets (TRL's default); the results made while `constant` was the default (before
# 2026-12-04) say `--lr-schedule constant` in their command.
SCHEDULER_TYPES = {"constant": "constant_with_warmup", "linear": "linear"}
LR_SCHEDULES = tuple(SCHEDULER_TYPES)
DEFAULT_LR_SCHEDULE = "linear"
METHOD_SETTINGS: dict[str, dict] = {
    "motab": {"max_segment_tokens": 16, "boundary_warmup_steps": 5},
}
MECHANISM_PREFIXES = ("motab/", "tropd/", "guidance/", "egrsd/", "atesd/", "guard/", "repair/")
GENERIC_METRICS = ("reward", "k1_reverse_kl", "completions/mean_length")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one `error:` line through the CLI, not argparse's usage + exit
        raise LabError(message)


def build_parser(prog: str = "trl-opd lab", description: str | None = None) -> argparse.ArgumentParser:
    parser = _Parser(prog=prog, description=description or __doc__.splitlines()[0])
    parser.add_argument("--world", default="arith", help=f"One of: {', '.join(WORLDS)} (default: arith).")
    parser.add_argument(
        "--methods",
        default="opd,sft",
        help="Comma-separated methods; the first is the baseline. A variant overrides config fields after a colon: "
        "`motab:train_on_strayed=true:lambda_int=0.5` (values read as YAML). Controls: `sft`, and on the sum worlds "
        "`step-oracle` (RLSD's magnitude from the step checker's labels; options `blame=after|first`, "
        "`right_rollouts=true|false`, and RLSD's fields).",
    )
    parser.add_argument("--seeds", default="0,1,2", help="Comma-separated integer seeds (default: 0,1,2).")
    parser.add_argument("--steps", default="200", help="Optimizer steps per method and seed (default: 200).")
    parser.add_argument(
        "--lr-schedule",
        default=DEFAULT_LR_SCHEDULE,
        choices=LR_SCHEDULES,
        help="Learning rate after the warm-up steps, for every method and the SFT control: `linear` decay to 0 "
        "(default: TRL's default schedule, what a user's config gets) or `constant` (the default before 2026-12-04; "
        "the results made then say `--lr-schedule constant` in their command).",
    )
    parser.add_argument("--eval-every", default=None, help="Held-out scoring interval in steps (default: steps/8).")
    parser.add_argument("--output-dir", default="lab_output", help="Where the results go (default: lab_output).")
    parser.add_argument("--cache-dir", default=None, help="Model cache (default: ~/.cache/trl-opd/lab).")
    parser.add_argument("--threads", default="1", help="torch CPU threads per run (default 1).")
    parser.add_argument(
        "--jobs", default="1", help="Runs (method, seed) in parallel processes, each with --threads (default 1)."
    )
    parser.add_argument("--scale", default="1", help=argparse.SUPPRESS)  # tests: shrink a world's sizes
    return parser


def _int(name: str, text: str, minimum: int = 1) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise LabError(f"--{name} must be an integer, got {text!r}.") from None
    if value < minimum:
        raise LabError(f"--{name} must be >= {minimum}, got {value}.")
    return value


def parse_variant(method: str) -> tuple[str, dict]:
    """`"motab:lambda_int=0.5:train_on_strayed=true"` -> `("motab", {"lambda_int": 0.5, "train_on_strayed": True})`;
    every key a field of the method's config (unknown method or field: a one-line error)."""
    name, *assignments = method.split(":")
    get_spec(name)  # UnknownMethodError (a ValueError) lists the registry's names
    config_class, _ = load_method(name)
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    overrides = {}
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        if not sep or key not in fields:
            raise LabError(
                f"variant {method!r}: {assignment!r} is not `field=value` for a field of {config_class.__name__}."
            )
        overrides[key] = _variant_value(value, str(fields[key].type))
    return name, overrides


def _variant_value(text: str, annotation: str):
    """`text` read as YAML; a float field also takes what YAML 1.1 leaves a string (`3e-4`, `1e5`)."""
    value = yaml.safe_load(text)
    if isinstance(value, str) and "float" in annotation:
        try:
            return float(value)
        except ValueError:
            pass
    return value


def validate(args: argparse.Namespace) -> argparse.Namespace:
    """Check every input before anything is built or written."""
    if args.world not in WORLDS:
        raise LabError(f"unknown world {args.world!r}; worlds: {', '.join(WORLDS)}.")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise LabError("--methods is empty.")
    if len(set(methods)) != len(methods):
        raise LabError(f"--methods names a method twice: {args.methods!r}.")
    for method in methods:
        if is_step_oracle(method):
            check_oracle_world(WORLDS[args.world])
            parse_variant(split_oracle_variant(method)[0])
        elif method != SFT:
            parse_variant(method)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise LabError(f"--seeds must be comma-separated integers, got {args.seeds!r}.") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise LabError(f"--seeds must be distinct integers, got {args.seeds!r}.")
    args.methods, args.seeds = methods, seeds
    args.steps = _int("steps", args.steps)
    args.eval_every = _int("eval-every", args.eval_every) if args.eval_every else max(1, args.steps // 8)
    args.threads = _int("threads", args.threads)
    args.jobs = _int("jobs", args.jobs)
    try:
        args.scale = float(args.scale)
    except ValueError:
        raise LabError(f"--scale must be a number, got {args.scale!r}.") from None
    out = Path(args.output_dir)
    if out.exists() and not out.is_dir():
        raise LabError(f"--output-dir {out} exists and is not a directory.")
    return args


class HeldoutCurve(TrainerCallback):
    """Greedy held-out accuracy every `every` steps (and at the last step) into `curve`."""

    def __init__(self, lab: Lab, every: int):
        self.lab, self.every, self.curve = lab, every, []

    def record(self, step: int, model, max_steps: int) -> None:
        if step % self.every == 0 or step == max_steps:
            accuracy = heldout_accuracy(model, self.lab.tokenizer, self.lab.heldout, self.lab.world.max_new_tokens)
            self.curve.append((step, accuracy))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.record(state.global_step, model, state.max_steps)


def method_config(
    lab: Lab,
    method: str,
    output_dir: str,
    steps: int,
    seed: int,
    lr_schedule: str = DEFAULT_LR_SCHEDULE,
    overrides: dict | None = None,
):
    """The method's config in the lab: its defaults, the family's fast settings, then the method's and the world's,
    the variant's, and last `overrides` (a control's fixed fields); `lr_schedule` one of `LR_SCHEDULES`."""
    method, variant = parse_variant(method)
    spec = get_spec(method)
    config_class, _ = load_method(method)
    kwargs = {
        "output_dir": output_dir,
        "max_steps": steps,
        "max_completion_length": lab.world.max_new_tokens,
        "temperature": 1.0,
        "logging_steps": max(1, min(10, steps // 10)),
        "save_strategy": "no",
        "report_to": "none",
        "seed": seed,
        "disable_tqdm": False,
        "lr_scheduler_type": SCHEDULER_TYPES[lr_schedule],
        "warmup_steps": min(10, steps // 10),
        "dataloader_num_workers": 0,
        **FAMILY_SETTINGS[spec.family],
        **spec.config_overrides,
        **METHOD_SETTINGS.get(method, {}),
        **lab.world.method_settings.get(method, {}),
        **variant,
        **(overrides or {}),
    }
    if spec.family == "gkd":
        kwargs["max_new_tokens"] = kwargs.pop("max_completion_length")
        kwargs["max_length"] = 256
    if spec.needs_teacher:
        kwargs["teacher_model_name_or_path"] = str(lab.teacher_path)
    return config_class(**kwargs)


def _mechanisms(log_history: list[dict]) -> dict[str, list[tuple[int, float]]]:
    series: dict[str, list[tuple[int, float]]] = {}
    for entry in log_history:
        for key, value in entry.items():
            if (key.startswith(MECHANISM_PREFIXES) or key in GENERIC_METRICS) and isinstance(value, int | float):
                series.setdefault(key, []).append((entry.get("step", 0), float(value)))
    return series


def run_method(
    lab: Lab,
    method: str,
    seed: int,
    steps: int,
    every: int,
    on_trained: Callable | None = None,
    lr_schedule: str = DEFAULT_LR_SCHEDULE,
) -> dict:
    """Train `method` from the lab's student for `steps` steps with `seed`; its curve, final scores and mechanisms."""
    if method == SFT:
        return run_sft(lab, seed, steps, every, lr_schedule)
    curve = HeldoutCurve(lab, every)
    with tempfile.TemporaryDirectory(prefix=f"trl-opd-lab-{method.split(':')[0]}-") as tmp:
        trainer = _build_lab_trainer(lab, method, tmp, steps, seed, lr_schedule, curve)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        final = score_model(trainer.model, lab.tokenizer, lab.heldout, lab.world.max_new_tokens, K_SAMPLES, seed)
        result = {
            "curve": curve.curve,
            "final": final,
            "seconds": seconds,
            "mechanisms": _mechanisms(trainer.state.log_history),
        }
        if on_trained is not None:
            on_trained(trainer, method, result)
    return result


def _build_lab_trainer(lab: Lab, method: str, output_dir: str, steps: int, seed: int, lr_schedule: str, curve):
    """The method's trainer through the CLI's `build_trainer`; the `step-oracle` control as RLSD's config with its
    step labels ([`~trl_opd.lab.oracle.StepOracleTrainer`])."""
    if is_step_oracle(method):
        from ..rewards import math_accuracy_reward

        base, options = split_oracle_variant(method)
        config = method_config(lab, base, output_dir, steps, seed, lr_schedule, overrides=ORACLE_CONFIG)
        config.model_init_kwargs = model_init_kwargs(ModelConfig(model_name_or_path=str(lab.student_path)))
        return StepOracleTrainer(
            model=str(lab.student_path),
            reward_funcs=[math_accuracy_reward],
            args=config,
            train_dataset=lab.train,
            processing_class=build_tiny_tokenizer(),
            callbacks=[curve],
            **options,
        )
    return build_trainer(
        ScriptArguments(method=parse_variant(method)[0]),
        method_config(lab, method, output_dir, steps, seed, lr_schedule),
        ModelConfig(model_name_or_path=str(lab.student_path)),
        train_dataset=lab.train,
        processing_class=build_tiny_tokenizer(),
        callbacks=[curve],
    )


def run_sft(lab: Lab, seed: int, steps: int, every: int, lr_schedule: str = DEFAULT_LR_SCHEDULE) -> dict:
    """The control: supervised training on the reference solutions, same steps and batch size as the methods."""
    torch.manual_seed(seed)
    random.seed(seed)
    model = AutoModelForCausalLM.from_pretrained(lab.student_path)
    curve = HeldoutCurve(lab, every)
    start = time.perf_counter()
    losses = supervised_warmup(
        model,
        lab.tokenizer,
        lab.train,
        steps=steps,
        batch_size=SFT_SETTINGS["batch_size"],
        lr=SFT_SETTINGS["learning_rate"],
        seed=seed,
        decay=lr_schedule == "linear",
        warmup_steps=min(10, steps // 10),
        desc="sft",
        on_step=lambda step, m: curve.record(step, m, steps),
    )
    seconds = time.perf_counter() - start
    final = score_model(model, lab.tokenizer, lab.heldout, lab.world.max_new_tokens, K_SAMPLES, seed)
    every_log = max(1, min(10, steps // 10))
    mechanisms = {"sft/loss": [(s, losses[s - 1]) for s in range(every_log, len(losses) + 1, every_log)]}
    return {"curve": curve.curve, "final": final, "seconds": seconds, "mechanisms": mechanisms}


def _run_and_report(lab: Lab, method: str, seed: int, args, on_trained: Callable | None = None) -> dict:
    print(f"== {method}, seed {seed}", flush=True)
    result = run_method(lab, method, seed, args.steps, args.eval_every, on_trained, args.lr_schedule)
    final = result["final"]
    print(
        f"   {method} seed {seed}: greedy {final['greedy']:.3f}, average@{K_SAMPLES} {final['average_at_k']:.3f}, "
        f"length {final['mean_length']:.1f}, {result['seconds']:.0f} s",
        flush=True,
    )
    return result


_WORKER: dict = {}


def _quiet_process(threads: int) -> None:
    """Pin torch's threads and keep the libraries' per-run log lines out of the lab's output."""
    torch.set_num_threads(threads)
    logging.getLogger("trl_opd").setLevel(logging.ERROR)  # the CPU-safety line once per run is noise here
    hf_logging.set_verbosity_error()


def exit_with_parent(parent_pid: int, interval: float = 2.0) -> None:
    """Start a daemon thread that ends this process when `parent_pid` is no longer its parent (the lab was killed):
    a spawned worker would otherwise go on training the runs still queued for it, for nobody."""
    import threading

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _init_worker(args, parent_pid: int) -> None:
    exit_with_parent(parent_pid)
    _quiet_process(args.threads)
    _WORKER["lab"] = build_lab(WORLDS[args.world], scale=args.scale, cache_root=args.cache_dir)
    _WORKER["args"] = args


def _worker_run(task: tuple[str, int]) -> tuple[tuple[str, int], dict]:
    method, seed = task
    return task, _run_and_report(_WORKER["lab"], method, seed, _WORKER["args"])


def _run_parallel(args, tasks: list[tuple[str, int]]):
    """Every (method, seed) run in its own worker process (spawned; each loads the cached lab once). A run's numbers
    do not depend on which process ran it or in what order: each run seeds everything it uses."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        args.jobs, mp_context=context, initializer=_init_worker, initargs=(args, os.getpid())
    ) as pool:
        return list(pool.map(_worker_run, tasks))


def run_lab(
    args: argparse.Namespace, command: str, stem: str | None = None, on_trained: Callable | None = None
) -> dict:
    """Build the world, run every method for every seed, write the outputs. `args` as `validate` returns them."""
    _quiet_process(args.threads)
    world = WORLDS[args.world]
    started = time.perf_counter()
    lab = build_lab(world, scale=args.scale, cache_root=args.cache_dir, parallel=(os.cpu_count() or 1) > 1)
    build_seconds = time.perf_counter() - started
    teacher_acc = heldout_accuracy(lab.teacher, lab.tokenizer, lab.heldout, world.max_new_tokens)
    start_scores = score_model(lab.student, lab.tokenizer, lab.heldout, world.max_new_tokens, K_SAMPLES, 0)
    print(
        f"[{world.name}] {world.description}\n[{world.name}] teacher held-out greedy {teacher_acc:.3f}; student start "
        f"greedy {start_scores['greedy']:.3f}, average@{K_SAMPLES} {start_scores['average_at_k']:.3f} "
        f"(warm-up {lab.info['warmup_steps']} steps, validation {lab.info['val_accuracy']:.3f}"
        f"{confirmation_note(lab.info)})",
        flush=True,
    )
    diagnostic = world.diagnostic(world, lab)
    print(f"[{world.name}] diagnostic: {diagnostic['summary']}", flush=True)
    tasks = [(method, seed) for method in args.methods for seed in args.seeds]
    if args.jobs > 1 and on_trained is None and len(tasks) > 1:
        done = _run_parallel(args, tasks)
    else:
        done = (((method, seed), _run_and_report(lab, method, seed, args, on_trained)) for method, seed in tasks)
    runs: dict[str, dict[int, dict]] = {method: {} for method in args.methods}
    for (method, seed), result in done:
        result["curve"].insert(0, (0, start_scores["greedy"]))
        runs[method][seed] = result
    runs = {method: {seed: by_seed[seed] for seed in args.seeds} for method, by_seed in runs.items()}
    results = {
        "command": command,
        "world": world.name,
        "description": world.description,
        "methods": args.methods,
        "seeds": args.seeds,
        "steps": args.steps,
        "lr_schedule": args.lr_schedule,
        "k": K_SAMPLES,
        "n_heldout": len(lab.heldout),
        "teacher_accuracy": teacher_acc,
        "start": start_scores,
        "build": {**lab.info, "seconds_this_call": build_seconds},
        "diagnostic": diagnostic,
        "machine": machine_info(),
        "runs": runs,
    }
    paths = write_outputs(Path(args.output_dir), stem or world.name, results)
    print(f"wrote {', '.join(str(p) for p in paths)}", flush=True)
    return results


def machine_info() -> dict:
    """What a result depends on beyond the command: torch picks its CPU float kernels by instruction set, so the same
    run rounds differently (and its trajectory drifts) on another kind of CPU."""
    return {
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "architecture": platform.machine(),
        "cores": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = validate(build_parser().parse_args(argv))
    command = "trl-opd lab " + shlex.join(argv)
    run_lab(args, command)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
