# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""Build (or load from the cache) a world's tokenizer, teacher and warm-started student.

The teacher is trained by supervised learning on the reference solutions until its validation accuracy reaches the
world's target. The student is warmed up at a constant learning rate and stops when its validation accuracy first
enters the world's band (checked every few steps): tiny models learn these tasks in a sharp phase transition whose
timing moves by hundreds of steps, so a fixed step count would give starts anywhere from 0 % to 90 %. Where chance
accuracy sits near the band's low end (`World.n_confirm`), an entry must also hold on fresh problems.

In a world with a privileged warm-up, the student first learns to read a reference in its prompt (privileged rows
only, until it answers `READER_TARGET` of the validation problems given the full reference), as an LLM does
unprompted; the warm-up into the band then keeps privileged rows in its mix so that the skill is not forgotten.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import Dataset, concatenate_datasets
from transformers import AutoModelForCausalLM

from ..errors import UserError
from ..testing import build_tiny_model, build_tiny_tokenizer
from .training import encode_example, heldout_accuracy, supervised_warmup
from .worlds import World, reference_prompts, with_privileged_context


BUILD_VERSION = "1"  # bump when the build recipe changes (invalidates every cache)
BUILD_SEED = 0  # every run seed starts from the same teacher and student
# The student is smaller than the teacher; it is warmed up at a constant learning rate, so distillation at a similar
# rate continues its training smoothly instead of kicking it out of a decayed minimum.
STUDENT_SHAPE = {"hidden_size": 128, "num_hidden_layers": 3, "intermediate_size": 256}
STUDENT_LR = 2e-3
TEACHER_LR = 3e-3
MAX_STUDENT_STEPS = 4000
MAX_READER_STEPS = 1000  # the privileged worlds' first stage: reading a reference (about 150 steps at full scale)
READER_TARGET = 0.9  # its validation accuracy with the full reference in the prompt


class LabError(UserError):
    """Bad lab input (unknown world or method, bad seeds or steps, an unusable output directory)."""


@dataclass
class Lab:
    """A built world: data splits, tokenizer, teacher and student (paths and loaded models), and build facts."""

    world: World
    tokenizer: object
    train: Dataset
    heldout: Dataset
    heldout_meta: list
    teacher_path: Path
    student_path: Path
    info: dict
    teacher: object = None
    student: object = None


def sizes(world: World, scale: float = 1.0) -> dict:
    """The world's sizes, scaled down (tests) with `scale` < 1."""
    out = {
        "n_train": max(64, int(world.n_train * scale)),  # >= 2 batches of 32
        "n_heldout": max(8, int(world.n_heldout * scale)),
        "n_val": max(8, int(world.n_val * scale)),
        "teacher_steps": max(4, int(world.teacher_steps * scale)),
        "student_steps": max(4, int(MAX_STUDENT_STEPS * scale)),
    }
    if world.privileged_warmup:  # only there, so that the other worlds' cache keys stay as they were
        out["reader_steps"] = max(4, int(MAX_READER_STEPS * scale))
    if world.n_confirm:  # likewise
        out["n_confirm"] = max(8, int(world.n_confirm * scale))
    return out


def _describe(fn) -> str | None:
    """A stable description of a generator (a function or a `functools.partial` of one) for the cache key."""
    if fn is None:
        return None
    keywords = sorted(getattr(fn, "keywords", {}).items())
    return f"{getattr(fn, 'func', fn).__name__}{keywords}"


def cache_dir(world: World, scale: float, root: str | None) -> Path:
    base = Path(root) if root else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "trl-opd" / "lab"
    parts = [
        BUILD_VERSION,
        world.version,
        world.name,
        _describe(world.generator),
        _describe(world.student_generator),
        world.privileged_warmup,
        sizes(world, scale),
        world.band,
        world.teacher_target,
        STUDENT_SHAPE,
        STUDENT_LR,
    ]
    if world.privileged_warmup:  # appended, so that the other worlds' cache keys stay as they were
        parts.append(READER_TARGET)
    key = json.dumps(parts, sort_keys=True)
    return base / f"{world.name}-{hashlib.sha1(key.encode()).hexdigest()[:10]}"


def _save_atomic(model, tokenizer, path: Path, info: dict | None = None) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if info is not None:
        (tmp / "lab_build.json").write_text(json.dumps(info, indent=2))
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def _check_context(world: World, tokenizer, rows: Dataset, limit: int) -> None:
    """Every prompt + reference (and its privileged form) must fit the tiny models' context."""
    longest = 0
    for row in rows.select(range(min(64, len(rows)))):
        ids, _ = encode_example(tokenizer, row["prompt"], row["solution"])
        longest = max(longest, len(ids) + world.max_new_tokens)
        if world.privileged_warmup:
            from ..data import privileged_prompt

            ids, _ = encode_example(tokenizer, privileged_prompt(row["prompt"], row["solution"]), row["solution"])
            longest = max(longest, len(ids) + world.max_new_tokens)
    if longest > limit:
        raise LabError(f"world {world.name!r}: prompt + reference is {longest} tokens, over the context {limit}.")


def train_teacher(world: World, tokenizer, train: Dataset, val: Dataset, steps: int):
    model = build_tiny_model(tokenizer, "teacher", seed=BUILD_SEED + 1)
    _check_context(world, tokenizer, train, model.config.max_position_embeddings)
    every = max(1, min(100, steps // 5))

    def on_step(step, model):
        return (
            step % every == 0
            and step >= steps // 2
            and heldout_accuracy(model, tokenizer, val) >= world.teacher_target
        )

    supervised_warmup(
        model,
        tokenizer,
        train,
        steps=steps,
        lr=TEACHER_LR,
        seed=BUILD_SEED,
        desc=f"{world.name}: teacher",
        on_step=on_step,
    )
    return model


def teach_reading(world: World, tokenizer, model, train: Dataset, val: Dataset, max_steps: int) -> dict:
    """Train `model` on privileged rows only (none, half or all of the reference's steps) until its validation
    accuracy with the full reference in the prompt reaches `READER_TARGET` (checked every 25 steps and at the end)."""
    full = reference_prompts(val, 1.0)
    every = max(1, min(25, max_steps))
    state = {"acc": 0.0, "step": 0}

    def on_step(step, model):
        if step % every and step != max_steps:
            return False
        acc = heldout_accuracy(model, tokenizer, val, world.max_new_tokens, prompts=full)
        state["acc"], state["step"] = acc, step
        return acc >= READER_TARGET

    supervised_warmup(
        model,
        tokenizer,
        with_privileged_context(train, BUILD_SEED),
        steps=max_steps,
        lr=STUDENT_LR,
        seed=BUILD_SEED,
        decay=False,
        desc=f"{world.name}: student learns to read a reference",
        on_step=on_step,
    )
    return {"reader_steps": state["step"], "reader_val_accuracy_full_reference": state["acc"]}


def warm_up_student(world: World, tokenizer, train: Dataset, val: Dataset, size: dict):
    """Warm the student up at a constant rate until its validation accuracy first enters `world.band` (after it has
    learned to read a reference, in a world with a privileged warm-up)."""
    model = build_tiny_model(tokenizer, "student", seed=BUILD_SEED, **STUDENT_SHAPE)
    info = {}
    if world.privileged_warmup:
        info = teach_reading(world, tokenizer, model, train, val, size["reader_steps"])
        train = concatenate_datasets([train, with_privileged_context(train, BUILD_SEED)]).shuffle(seed=BUILD_SEED)
    low, high = world.band
    state = {"acc": 0.0, "step": 0}
    confirm = world.rows(size["n_confirm"], seed=BUILD_SEED + 7_500)[0] if "n_confirm" in size else None

    def on_step(step, model):
        every = 20 if state["acc"] < low / 2 else 4  # check often near the transition
        if step % every:
            return False
        state["acc"], state["step"] = heldout_accuracy(model, tokenizer, val, world.max_new_tokens), step
        if state["acc"] < low or confirm is None:
            return state["acc"] >= low
        state["confirm_acc"] = heldout_accuracy(model, tokenizer, confirm, world.max_new_tokens)
        confirmed = state["confirm_acc"] >= low
        state["rejected"] = state.get("rejected", 0) + (not confirmed)
        return confirmed

    supervised_warmup(
        model,
        tokenizer,
        train,
        steps=size["student_steps"],
        lr=STUDENT_LR,
        seed=BUILD_SEED,
        decay=False,
        desc=f"{world.name}: student warm-up into the band",
        on_step=on_step,
    )
    info.update(warmup_steps=state["step"], val_accuracy=state["acc"], in_band=low <= state["acc"] <= high)
    if confirm is not None:
        info.update(confirm_accuracy=state.get("confirm_acc"), entries_rejected=state.get("rejected", 0))
    if world.privileged_warmup:  # the skill must survive the warm-up
        full = reference_prompts(val, 1.0)
        info["val_accuracy_full_reference"] = heldout_accuracy(
            model, tokenizer, val, world.max_new_tokens, prompts=full
        )
    return model, info


def _warn(world: World, info: dict) -> None:
    if not info["in_band"]:
        print(
            f"warning: {world.name}: the student's validation accuracy {info['val_accuracy']:.3f} after "
            f"{info['warmup_steps']} steps is outside the band {world.band}",
            flush=True,
        )
    if info.get("val_accuracy_full_reference", 1.0) < READER_TARGET:
        print(
            f"warning: {world.name}: the student's validation accuracy with the full reference is "
            f"{info['val_accuracy_full_reference']:.3f}, under {READER_TARGET} (after {info['reader_steps']} "
            "steps of learning to read it and the warm-up)",
            flush=True,
        )


def _splits(world: World, size: dict) -> tuple:
    """The tokenizer and the world's seeded splits: train, the student's train, validation, held-out (+ its meta)."""
    train, _ = world.rows(size["n_train"], seed=BUILD_SEED)
    student_train, _ = world.rows(size["n_train"], seed=BUILD_SEED, student=True)
    val, _ = world.rows(size["n_val"], seed=BUILD_SEED + 5_000)
    heldout, heldout_meta = world.rows(size["n_heldout"], seed=BUILD_SEED + 10_000)
    return build_tiny_tokenizer(), train, student_train, val, heldout, heldout_meta


def _build_teacher(world: World, tokenizer, train: Dataset, val: Dataset, steps: int, teacher_path: Path) -> None:
    """Train the teacher and save it (atomically) at `teacher_path`."""
    _save_atomic(train_teacher(world, tokenizer, train, val, steps), tokenizer, teacher_path)


def _teacher_process(world: World, scale: float, teacher_path: Path, threads: int) -> None:
    """[`_build_teacher`] in a spawned process beside the student's warm-up (the two are independent, so each is the
    same model as in one process: both seed everything they use and run on `threads` threads)."""
    torch.set_num_threads(threads)
    size = sizes(world, scale)
    tokenizer, train, _, val, _, _ = _splits(world, size)
    _build_teacher(world, tokenizer, train, val, size["teacher_steps"], teacher_path)


def _start_teacher_process(world: World, scale: float, teacher_path: Path):
    import multiprocessing

    process = multiprocessing.get_context("spawn").Process(
        target=_teacher_process, args=(world, scale, teacher_path, torch.get_num_threads()), daemon=True
    )
    process.start()
    return process


def build_lab(
    world: World, scale: float = 1.0, cache_root: str | None = None, load: bool = True, parallel: bool = False
) -> Lab:
    """The world's data, and its teacher and student (trained now unless cached; each written atomically).

    `parallel`: when both are missing, the teacher trains in a second process while this one warms the student up
    (the same models as one after the other, in about half the time on two cores).
    """
    size = sizes(world, scale)
    tokenizer, train, student_train, val, heldout, heldout_meta = _splits(world, size)
    cache = cache_dir(world, scale, cache_root)
    cache.mkdir(parents=True, exist_ok=True)
    teacher_path, student_path = cache / "teacher", cache / "student"
    started = time.perf_counter()
    need_teacher = not (teacher_path / "config.json").is_file()
    need_student = not (student_path / "lab_build.json").is_file()
    teacher_process = None
    if need_teacher and need_student and parallel:
        teacher_process = _start_teacher_process(world, scale, teacher_path)
    elif need_teacher:
        _build_teacher(world, tokenizer, train, val, size["teacher_steps"], teacher_path)
    if need_student:
        try:
            student, info = warm_up_student(world, tokenizer, student_train, val, size)
        except BaseException:
            if teacher_process is not None:
                teacher_process.terminate()
            raise
        if teacher_process is not None:
            teacher_process.join()
        info["build_seconds"] = time.perf_counter() - started
        _save_atomic(student, tokenizer, student_path, info)
        _warn(world, info)
    if teacher_process is not None and teacher_process.exitcode != 0:
        raise RuntimeError(f"the teacher's build process failed (exit code {teacher_process.exitcode}; see above)")
    info = json.loads((student_path / "lab_build.json").read_text())
    lab = Lab(world, tokenizer, train, heldout, heldout_meta, teacher_path, student_path, info)
    if load:
        lab.teacher = AutoModelForCausalLM.from_pretrained(teacher_path).eval()
        lab.student = AutoModelForCausalLM.from_pretrained(student_path).eval()
    return lab
