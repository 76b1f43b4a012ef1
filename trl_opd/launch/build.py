# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""From parsed recipe to trainer: load and check the dataset, then build the method's trainer.

Everything that can fail on bad input (columns, empty data, method, tokenizer) is checked before model weights load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from datasets import Dataset, load_dataset
from trl import ModelConfig, get_peft_config, get_quantization_config

from ..data import ColumnMap, DatasetUnavailableError, DatasetValidationError, prepare_dataset
from ..rewards import math_accuracy_reward
from .methods import MethodSpec, get_spec, load_method
from .recipe import RecipeError, ScriptArguments
from .validation import check_prompts


_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def load_raw_dataset(script_args: ScriptArguments, split: str) -> Dataset:
    """Load one split from a Hub id, a local folder or a single data file.

    A data file that is missing, empty or unreadable is a [`DatasetValidationError`]; a Hub id or folder that cannot
    be loaded from here is a [`DatasetUnavailableError`] (a dry run reports it and goes on).
    """
    if script_args.datasets:  # a TRL dataset mixture (`datasets:` in the recipe)
        return _load_mixture(script_args, split)
    name = script_args.dataset_name
    if not name:
        raise DatasetValidationError(
            "No dataset: set `dataset_name` (Hub id, folder or data file) or `datasets:` (a mixture) in the recipe."
        )
    path = Path(name)
    if path.suffix in _FILE_BUILDERS:
        if not path.is_file():
            raise DatasetValidationError(f"Dataset file {name} does not exist.")
        if path.stat().st_size == 0:
            raise DatasetValidationError(f"Dataset file {name} is empty.")
        return _load(DatasetValidationError, name, split, _FILE_BUILDERS[path.suffix], data_files={split: name})
    return _load(DatasetUnavailableError, name, split, name, script_args.dataset_config)


def _load_mixture(script_args: ScriptArguments, split: str) -> Dataset:
    """TRL's `get_dataset` on the recipe's mixture; `split` is `train` (or `test` with `test_split_size`)."""
    from trl import DatasetMixtureConfig, get_dataset

    mixture = DatasetMixtureConfig(datasets=list(script_args.datasets), test_split_size=script_args.test_split_size)
    names = ", ".join(d.path for d in mixture.datasets)
    local = all(Path(d.path).exists() or d.path in _FILE_BUILDERS.values() for d in mixture.datasets)
    error = DatasetValidationError if local else DatasetUnavailableError
    try:
        splits = get_dataset(mixture)
    except Exception as err:  # datasets raises many types; the user needs the one line
        raise error(f"Could not load the dataset mixture ({names}): {err or type(err).__name__}") from err
    if split not in splits:
        raise DatasetValidationError(f"The dataset mixture ({names}) has no split {split!r}: {sorted(splits)}")
    return splits[split]


def _load(error: type[DatasetValidationError], name: str, split: str, *args, **kwargs) -> Dataset:
    try:
        return load_dataset(*args, split=split, **kwargs)
    except Exception as err:  # datasets raises many types; the user needs the one line
        raise error(f"Could not load dataset {name!r} split {split!r}: {err or type(err).__name__}") from err


def format_prompts(dataset: Dataset, script_args: ScriptArguments) -> Dataset:
    """Wrap text prompts as a user message with the boxed-answer instruction (when `chat_prompt`)."""
    if not script_args.chat_prompt or not isinstance(dataset[0]["prompt"], str):
        return dataset
    instruction = script_args.instruction

    def wrap(row):
        text = row["prompt"] if not instruction else f"{row['prompt']}\n\n{instruction}"
        return {"prompt": [{"role": "user", "content": text}]}

    return dataset.map(wrap)


def training_dataset(script_args: ScriptArguments, spec: MethodSpec, split: str | None = None) -> Dataset:
    """The checked, renamed, prompt-formatted dataset for a method."""
    columns = ColumnMap(script_args.prompt_column, script_args.answer_column, script_args.solution_column)
    split = split or script_args.dataset_train_split
    dataset = load_raw_dataset(script_args, split)
    dataset = prepare_dataset(dataset, list(spec.required_columns), columns, f"dataset split '{split}'")
    if script_args.max_train_samples is not None:
        dataset = dataset.select(range(min(script_args.max_train_samples, len(dataset))))
    check_prompts(dataset, f"dataset {script_args.dataset_name} split '{split}'")
    return format_prompts(dataset, script_args)


def check_teacher(spec: MethodSpec, config) -> None:
    if spec.needs_teacher and not getattr(config, "teacher_model_name_or_path", None):
        raise RecipeError(f"Method '{spec.name}' needs a teacher: set `teacher_model_name_or_path` in the recipe.")


def _as_gkd_dataset(dataset: Dataset) -> Dataset:
    """GKD trains off-policy batches on `messages`: the prompt plus the reference solution as the assistant turn.

    The `prompt` column goes: TRL's chat collator would read it as already-formatted text.
    """
    return dataset.map(
        lambda row: {"messages": list(row["prompt"]) + [{"role": "assistant", "content": row["solution"]}]},
        remove_columns=["prompt"],
    )


def model_init_kwargs(model_args: ModelConfig) -> dict[str, Any]:
    kwargs = {"revision": model_args.model_revision, "attn_implementation": model_args.attn_implementation}
    if model_args.dtype not in (None, "auto"):
        kwargs["dtype"] = model_args.dtype
    quantization = get_quantization_config(model_args)
    if quantization is not None:
        kwargs["quantization_config"] = quantization
    return {k: v for k, v in kwargs.items() if v is not None}


def build_trainer(script_args: ScriptArguments, config, model_args: ModelConfig, train_dataset=None, **extra):
    """Build the trainer that `script_args.method` names. `train_dataset` overrides the recipe's dataset.

    The trainer writes our model card wherever TRL would write its own (every checkpoint, and the Trainer's pushes
    with `push_to_hub: true`), and with `eval_tasks` in the recipe it evaluates every save and the final model.
    """
    trainer = _make_trainer(script_args, config, model_args, train_dataset, **extra)
    use_our_card(trainer, script_args, config, model_args)
    if script_args.eval_tasks:
        from ..eval.callback import LightevalCallback

        options = {"max_new_tokens": script_args.eval_max_new_tokens, "max_samples": script_args.eval_max_samples}
        trainer.add_callback(
            LightevalCallback(
                tasks=script_args.eval_tasks,
                num_samples=script_args.eval_num_samples,
                data_dir=script_args.eval_data_dir,
                **{key: value for key, value in options.items() if value is not None},
            )
        )
    return trainer


def use_our_card(trainer, script_args: ScriptArguments, config, model_args: ModelConfig) -> None:
    """Replace the trainer's `create_model_card` (TRL's generic card, called at every save and push) with ours."""

    def create_model_card(*args, **kwargs):
        if not trainer.is_world_process_zero():
            return
        from .card_info import card_info_from_parsed
        from .model_card import render_model_card, write_model_card

        info = card_info_from_parsed(script_args, config, model_args, config.output_dir)
        info["adapter"] = bool(model_args.use_peft)
        write_model_card(config.output_dir, render_model_card(info))

    trainer.create_model_card = create_model_card


def _make_trainer(script_args: ScriptArguments, config, model_args: ModelConfig, train_dataset=None, **extra):
    spec = get_spec(script_args.method)
    _, trainer_class = load_method(spec.name)
    check_teacher(spec, config)
    if not model_args.model_name_or_path:
        raise RecipeError("No student model: set `model_name_or_path` in the recipe.")
    if train_dataset is None:
        train_dataset = training_dataset(script_args, spec)
    if getattr(config, "model_init_kwargs", None) is None:
        config.model_init_kwargs = model_init_kwargs(model_args)
    peft_config = get_peft_config(model_args)
    model = model_args.model_name_or_path
    if spec.family == "grpo":
        return trainer_class(
            model=model,
            reward_funcs=[math_accuracy_reward],
            args=config,
            train_dataset=train_dataset,
            peft_config=peft_config,
            **extra,
        )
    if spec.family == "gkd":  # its chat collator needs the tokenizer up front
        from transformers import AutoTokenizer

        extra.setdefault("processing_class", AutoTokenizer.from_pretrained(model, revision=model_args.model_revision))
        return trainer_class(
            model=model,
            teacher_model=config.teacher_model_name_or_path,
            args=config,
            train_dataset=_as_gkd_dataset(train_dataset),
            peft_config=peft_config,
            **extra,
        )
    return trainer_class(
        model=model,
        teacher_model=getattr(config, "teacher_model_name_or_path", None),
        args=config,
        train_dataset=train_dataset,
        peft_config=peft_config,
        **extra,
    )


__all__ = ["build_trainer", "check_teacher", "load_raw_dataset", "training_dataset"]
