# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""What a model card says about a run: its `info` for [`~trl_opd.launch.model_card.render_model_card`], from a
finished trainer's config, from a parsed recipe, or from an output folder (its recipe copy and trainer state)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from ..checkpoints import TRAINER_STATE_FILE
from .methods import METHODS
from .model_card import _readable, load_eval_results, render_model_card


# Training arguments every card lists (when the config has them); method-specific fields are added automatically.
KEY_HYPERPARAMETERS = (
    "learning_rate",
    "lr_scheduler_type",
    "warmup_steps",
    "warmup_ratio",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "num_train_epochs",
    "max_steps",
    "max_prompt_length",
    "max_completion_length",
    "num_generations",
    "temperature",
    "top_p",
    "beta",
    "chat_template_kwargs",
    "seed",
)
# Serving and plumbing settings that say nothing about how the model was trained.
_NOT_HYPERPARAMETERS = re.compile(
    r"vllm_(server|host|port|group|gpu|tensor|mode|enable|model_impl)|_port$|_host$|_url$|timeout"
)
LORA_FIELDS = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules")


def _method_fields(args: Any) -> list[str]:
    """Fields a trl-opd config adds to the TRL config it extends (its method's own hyperparameters)."""
    from .recipe import method_fields

    return [f.name for f in method_fields(type(args))]


def readable_hyperparameters(args: Any, model_args: Any = None) -> dict[str, str]:
    """The hyperparameters that matter, as a reader writes them: `max_steps` or `num_train_epochs` (not both), no
    vLLM ports, enum values, LoRA settings when training an adapter."""
    names = [n for n in KEY_HYPERPARAMETERS if hasattr(args, n)] + _method_fields(args)
    values: dict[str, Any] = {}
    for name in dict.fromkeys(names):
        value = getattr(args, name)
        if value is None or _NOT_HYPERPARAMETERS.search(name):
            continue
        if name == "num_train_epochs" and (getattr(args, "max_steps", -1) or -1) > 0:
            continue
        if name == "max_steps" and value <= 0:
            continue
        if name in ("warmup_steps", "warmup_ratio") and not value:
            continue
        values[name] = value
    if model_args is not None and getattr(model_args, "use_peft", False):
        values.update({name: getattr(model_args, name) for name in LORA_FIELDS if getattr(model_args, name, None)})
    return {name: _readable(value) for name, value in values.items()}


def training_card_info(
    method: str,
    args: Any,
    base_model: str,
    teacher: str | None = None,
    recipe: str | None = None,
    training_data: Any = None,
    evaluation: dict | None = None,
    model_args: Any = None,
    adapter: bool = False,
    state: dict | None = None,
    method_display: str | None = None,
) -> dict:
    """The `info` of [`render_model_card`] for a finished run, from its method name and training config."""
    data = training_data if isinstance(training_data, (list, tuple)) else [training_data] if training_data else []
    return {
        "method": method,
        "method_display": method_display,
        "base_model": base_model,
        "teacher": teacher,
        "recipe": recipe,
        "training_data": training_data or "not recorded",
        "datasets": [str(d) for d in data],
        "hyperparameters": readable_hyperparameters(args, model_args),
        "chat_template_kwargs": getattr(args, "chat_template_kwargs", None) or None,
        "eval": evaluation,
        "hub_model_id": getattr(args, "hub_model_id", None),
        "model_name": getattr(args, "hub_model_id", None) or Path(getattr(args, "output_dir", "") or base_model).name,
        "output_dir": getattr(args, "output_dir", None),
        "adapter": adapter,
        "state": state,
    }


RECIPE_COPY = "trl_opd_recipe.yaml"


def save_recipe_copy(output_dir: str | os.PathLike, values: dict) -> Path:
    """The run's effective recipe (file plus command-line overrides) as `OUTPUT_DIR/trl_opd_recipe.yaml`."""
    import yaml

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    target = output_dir / RECIPE_COPY
    tmp = output_dir / f".{RECIPE_COPY}.{os.getpid()}.tmp"
    header = "# The recipe this model was trained with (file plus command-line overrides), saved by trl-opd train.\n"
    tmp.write_text(header + yaml.safe_dump(values, sort_keys=False, allow_unicode=True), encoding="utf-8")
    os.replace(tmp, target)
    return target


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None


def card_info_from_parsed(script_args: Any, config: Any, model_args: Any, output_dir: str | os.PathLike) -> dict:
    """The card `info` of a run folder, from its parsed recipe and what the folder holds (state, eval, adapter)."""
    from ..adapters import is_adapter_folder

    method = script_args.method
    display = METHODS[method].display_name
    if method == "egrsd" and (getattr(config, "entropy_lookahead", 0) or 0) > 0:  # the CL-EGRSD preset, written out
        display = "CL-EGRSD"
    output_dir = Path(output_dir)
    from .recipe import dataset_sources

    sources = dataset_sources(script_args)
    training_data = sources[0] if len(sources) == 1 else sources or None
    info = training_card_info(
        method,
        config,
        model_args.model_name_or_path,
        teacher=getattr(config, "teacher_model_name_or_path", None),
        recipe=script_args.recipe_path,
        training_data=training_data,
        evaluation=load_eval_results(output_dir),
        model_args=model_args,
        adapter=is_adapter_folder(output_dir),
        state=_read_json(output_dir / TRAINER_STATE_FILE),
        method_display=display,
    )
    info["output_dir"] = str(output_dir)
    return info


def card_from_output_dir(output_dir: str | os.PathLike, hub_model_id: str | None = None) -> str:
    """Re-render the card of a finished (or running) `trl-opd train` folder from what it holds: the recipe copy,
    `trainer_state.json`, `eval_results.json`, and whether it is a LoRA adapter."""
    from ..errors import UserError
    from .recipe import parse_recipe, read_recipe

    output_dir = Path(output_dir)
    run_dir = output_dir
    if not (output_dir / RECIPE_COPY).is_file() and output_dir.name == "merged":  # the merged copy of an adapter
        run_dir = output_dir.parent
    recipe_file = run_dir / RECIPE_COPY
    if not recipe_file.is_file():
        raise UserError(f"{output_dir} has no {RECIPE_COPY}: not a folder written by `trl-opd train`")
    original = read_recipe(str(recipe_file)).get("recipe_path")
    script_args, config, model_args = parse_recipe(str(recipe_file), ["--output_dir", str(output_dir)])
    script_args.recipe_path = original or str(recipe_file)
    if hub_model_id:
        config.hub_model_id = hub_model_id
    info = card_info_from_parsed(script_args, config, model_args, output_dir)
    if run_dir != output_dir:
        info["state"] = _read_json(run_dir / TRAINER_STATE_FILE)
    return render_model_card(info)
