# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""Checks on a parsed run before any model weights load (also in `--dry-run`).

Numbers that cannot train (steps, learning rate, accumulation, batch size, lengths), an output directory that is a
file, model and teacher paths (a local folder with a readable config, tokenizer and weight headers, or a Hub id that
can be reached), the two tokenizers (tokenizers only), and the prompts (a null or non-text prompt names its row).
Every failure is a [`~trl_opd.errors.UserError`] with one line naming the field, file or row.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from ..checkpoints import resolve_resume
from ..errors import ConfigValueError, UserError


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_numbers(config: Any) -> None:
    """Steps, learning rate, accumulation, batch size and lengths."""
    steps = config.max_steps
    if not _is_int(steps) or steps == 0 or steps < -1:
        raise ConfigValueError(f"max_steps must be >= 1 (or -1 to train for num_train_epochs), got {steps!r}")
    if steps == -1 and not (_is_number(config.num_train_epochs) and config.num_train_epochs > 0):
        raise ConfigValueError(
            f"num_train_epochs must be > 0 when max_steps is -1 (unset), got {config.num_train_epochs!r}"
        )
    lr = config.learning_rate
    if not _is_number(lr) or lr <= 0:
        raise ConfigValueError(f"learning_rate must be a number > 0, got {lr!r}")
    for name in ("gradient_accumulation_steps", "per_device_train_batch_size"):
        value = getattr(config, name)
        if not _is_int(value) or value < 1:
            raise ConfigValueError(f"{name} must be an integer >= 1, got {value!r}")
    for name in ("max_completion_length", "max_prompt_length", "max_length"):
        value = getattr(config, name, None)
        if value is not None and (not _is_int(value) or value < 1):
            raise ConfigValueError(f"{name} must be an integer >= 1, got {value!r}")
    limit = getattr(config, "save_total_limit", None)
    if limit is not None and (not _is_int(limit) or limit < 1):
        raise ConfigValueError(f"save_total_limit must be an integer >= 1 (or unset), got {limit!r}")


def check_output_dir(path: str | os.PathLike) -> None:
    """`output_dir` (or a folder above it) must not be a file."""
    for folder in (Path(path), *Path(path).absolute().parents):
        if folder.exists() and not folder.is_dir():
            raise ConfigValueError(f"output_dir {path} cannot be created: {folder} is a file")


def _looks_local(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name or Path(name).exists()


def check_model_source(field: str, name: str, *, dry_run: bool) -> str | None:
    """A local model folder (config, tokenizer-free checks: `config.json` and readable `.safetensors` headers) or a
    Hub id that can be reached. Returns a note for a dry run (`"not reachable from here"`) or `None`."""
    if _looks_local(name):
        path = Path(name).expanduser()
        if not path.exists():
            raise UserError(f"no such model directory: {name} ({field})")
        if not path.is_dir() or not (path / "config.json").is_file():
            raise UserError(f"{name} is not a model directory: no config.json ({field})")
        _check_weight_headers(path, field)
        return None
    try:
        from huggingface_hub import hf_hub_download

        hf_hub_download(name, "config.json")
    except Exception as err:  # offline, no such repo, gated: all mean "cannot be reached from here"
        if dry_run:
            return "not reachable from here"
        reason = " ".join(str(err).split())[:160] or type(err).__name__
        raise UserError(f"model {name} ({field}) cannot be reached on the Hub from here: {reason}") from err
    return None


def _check_weight_headers(path: Path, field: str) -> None:
    from safetensors import safe_open

    for file in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(file), "pt"):
                pass
        except Exception as err:  # SafetensorError: truncated or not a safetensors file
            raise UserError(f"{file} ({field}) is truncated or corrupt: {' '.join(str(err).split())}") from err


def load_tokenizer(field: str, name: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name)
    except Exception as err:  # missing or broken tokenizer files
        reason = " ".join(str(err).split())[:160] or type(err).__name__
        raise UserError(f"cannot load the tokenizer of {name} ({field}): {reason}") from err


def check_prompts(dataset, where: str) -> None:
    """Every prompt is non-empty text or a list of chat messages with text content; else the row is named."""
    for row, prompt in enumerate(dataset["prompt"]):
        if isinstance(prompt, str):
            if prompt.strip():
                continue
            problem = "is empty"
        elif prompt is None:
            problem = "is null"
        elif (
            isinstance(prompt, list)
            and prompt
            and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in prompt)
        ):
            continue
        else:
            problem = f"is not text or chat messages ({type(prompt).__name__})"
        from ..data import DatasetValidationError

        raise DatasetValidationError(f"Row {row} of {where}: the prompt {problem}.")


def check_dataset_size(dataset, config: Any, where: str) -> None:
    """The dataset holds at least one optimizer step's prompts (else the Trainer stops at step 0 and exits cleanly
    without training): `per_device_train_batch_size × gradient_accumulation_steps × processes`, divided by
    `num_generations` for GRPO-style trainers whose rows are repeated."""
    rows = config.per_device_train_batch_size * config.gradient_accumulation_steps * max(1, config.world_size)
    needed = math.ceil(rows / getattr(config, "num_generations", 1) or 1)
    if len(dataset) < needed:
        from ..data import DatasetValidationError

        raise DatasetValidationError(
            f"The {where} has {len(dataset)} rows, fewer than one optimizer step takes ({needed}: "
            f"per_device_train_batch_size {config.per_device_train_batch_size} x gradient_accumulation_steps "
            f"{config.gradient_accumulation_steps} x {max(1, config.world_size)} process(es)"
            + (f" / num_generations {config.num_generations}" if getattr(config, "num_generations", None) else "")
            + "): nothing would train."
        )


def validate_run(script_args: Any, config: Any, model_args: Any, spec: Any, *, dry_run: bool) -> dict[str, str]:
    """All checks that need no model weights. Returns notes for a dry run (`{field: note}`)."""
    check_numbers(config)
    check_output_dir(config.output_dir)
    resolve_resume(config.resume_from_checkpoint, config.output_dir, needs_state=False)  # a missing checkpoint
    notes: dict[str, str] = {}
    sources = {"model_name_or_path": model_args.model_name_or_path}
    teacher = getattr(config, "teacher_model_name_or_path", None)
    if teacher:
        sources["teacher_model_name_or_path"] = teacher
    for field, name in sources.items():
        if name:
            note = check_model_source(field, name, dry_run=dry_run)
            if note:
                notes[field] = note
    reachable = {field: name for field, name in sources.items() if name and field not in notes}
    tokenizers = {field: load_tokenizer(field, name) for field, name in reachable.items()}
    if len(tokenizers) == 2 and spec.family in ("distillation", "gkd"):
        from ..teacher import check_same_vocabulary

        check_same_vocabulary(tokenizers["model_name_or_path"], tokenizers["teacher_model_name_or_path"])
    return notes
