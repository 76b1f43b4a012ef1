# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""Recipes: flat YAML read by TRL's `TrlParser` into (script arguments, method config, `ModelConfig`).

The recipe key `method:` picks the config class. Every other key must be a field of one of the three dataclasses;
an unknown key is an error that names it and the nearest valid field.
"""

from __future__ import annotations

import difflib
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml
from trl import DatasetMixtureConfig, ModelConfig, TrlParser
from trl import ScriptArguments as TrlScriptArguments

from ..data import BOXED_INSTRUCTION
from ..errors import UserError
from .methods import get_spec, load_method


class RecipeError(UserError):
    """A recipe or command line cannot be parsed. The message is one line for the user."""


@dataclass
class ScriptArguments(TrlScriptArguments, DatasetMixtureConfig):
    """Data and method selection: the part of a recipe that is not the trainer's or the model's configuration.

    Builds on TRL's `ScriptArguments` and `DatasetMixtureConfig`: a recipe can name one dataset (`dataset_name`) or a
    mixture (`datasets:` a list of `{path, name, data_files, split, columns, fraction}`, as in TRL's scripts).
    Streaming (`dataset_streaming`, `streaming`) is refused: the checks before training need the rows.
    """

    method: str = field(default="opd", metadata={"help": "Which trainer to run (see `trl-opd methods`)."})
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Hub dataset id, a local folder, or a `.json`/`.jsonl`/`.parquet` file."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    dataset_test_split: str | None = field(default=None, metadata={"help": "Split to evaluate on (optional)."})
    merge_adapter: bool = field(
        default=False,
        metadata={
            "help": "LoRA (`use_peft: true`): at the end of training also save the base model with the adapter merged "
            "into `OUTPUT_DIR/merged/` (a plain transformers model, for vLLM and `trl-opd eval`)."
        },
    )
    eval_tasks: str | None = field(
        default=None,
        metadata={
            "help": "Evaluate with `trl-opd eval` at every save and at the end (the eval callback), e.g. "
            "`aime24,aime25,hmmt25`; results go to OUTPUT_DIR/eval_results.json and the model card."
        },
    )
    eval_num_samples: int = field(default=12, metadata={"help": "k samples per problem for `eval_tasks`."})
    eval_data_dir: str | None = field(
        default=None, metadata={"help": "Local JSONL folder for `eval_tasks` (default: the Hub datasets)."}
    )
    eval_max_new_tokens: int | None = field(
        default=None, metadata={"help": "Generation budget for `eval_tasks` (default: `trl-opd eval`'s)."}
    )
    eval_max_samples: int | None = field(
        default=None, metadata={"help": "Only the first N problems per task for `eval_tasks` (debug)."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep only the first N training rows."})
    prompt_column: str = field(default="prompt", metadata={"help": "Column with the prompt (text or chat messages)."})
    answer_column: str = field(default="answer", metadata={"help": "Column with the final answer."})
    solution_column: str = field(
        default="solution", metadata={"help": "Column with the reference solution (privileged context)."}
    )
    chat_prompt: bool = field(
        default=True,
        metadata={
            "help": "Wrap text prompts as one user message (followed by `instruction`) so the chat template "
            "applies; chat-message prompts are kept as they are."
        },
    )
    instruction: str = field(
        default=BOXED_INSTRUCTION,
        metadata={"help": "Appended to text prompts when `chat_prompt` is on; empty for none."},
    )

    recipe_path: str | None = field(
        default=None, metadata={"help": "Set by the CLI to the recipe file (recorded in the model card)."}
    )

    def __post_init__(self):
        DatasetMixtureConfig.__post_init__(self)
        if self.dataset_streaming or self.streaming:
            raise ValueError("streaming datasets are not supported: the checks before training need the rows")
        if self.eval_num_samples < 1:
            raise ValueError(f"eval_num_samples must be >= 1, got {self.eval_num_samples}")
        if self.max_train_samples is not None and self.max_train_samples < 1:
            raise ValueError(f"max_train_samples must be >= 1, got {self.max_train_samples}")


def dataset_sources(script_args: ScriptArguments) -> list[str]:
    """What the run trains on, for the dry run and the card: `dataset_name`, or each mixture entry's path (its data
    files for a file builder such as `json`)."""
    if not script_args.datasets:
        return [script_args.dataset_name] if script_args.dataset_name else []
    builders = ("json", "csv", "parquet", "text")
    return [str(d.data_files) if d.data_files and d.path in builders else d.path for d in script_args.datasets]


def method_of(config_path: str | None, argv: list[str]) -> str:
    """The method named by `--method` on the command line, else by the recipe, else `opd`."""
    if "--method" in argv:
        index = argv.index("--method")
        if index + 1 < len(argv):
            return argv[index + 1]
    recipe = read_recipe(config_path) if config_path else {}
    return str(recipe.get("method", "opd"))


def read_recipe(path: str) -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        raise RecipeError(f"Recipe {path} does not exist.")
    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as err:
        raise RecipeError(f"Recipe {path} is not valid YAML: {str(err).splitlines()[0]}") from err
    if not isinstance(data, dict):
        raise RecipeError(f"Recipe {path} must be a YAML mapping of `key: value` lines.")
    return data


def dataclass_types(method: str) -> tuple[type, type, type]:
    config_class, _ = load_method(method)
    return ScriptArguments, config_class, ModelConfig


def check_known_keys(keys: list[str], method: str, source: str) -> None:
    """Raise [`RecipeError`] for the first key that is no field of the method's dataclasses, naming the nearest."""
    valid = {f.name for cls in dataclass_types(method) for f in fields(cls)}
    for key in keys:
        if key not in valid:
            close = difflib.get_close_matches(key, sorted(valid), n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise RecipeError(f"Unknown key '{key}' in {source} for method '{method}'{hint}")


def trl_base_class(config_class: type) -> type | None:
    """The TRL (or transformers) dataclass a trl-opd config extends: the first dataclass in its MRO from `trl.`."""
    from dataclasses import is_dataclass

    return next((c for c in config_class.__mro__ if c.__module__.startswith("trl.") and is_dataclass(c)), None)


def method_fields(config_class: type) -> list:
    """The dataclass fields a trl-opd config adds to the TRL config it extends (the method's own hyperparameters)."""
    base = trl_base_class(config_class)
    base_names = {f.name for f in fields(base)} if base else set()
    return [f for f in fields(config_class) if f.name not in base_names]


def _field_lines(items: list) -> list[str]:
    lines = []
    for f in items:
        default = f.default if f.default is not MISSING else "(computed)"
        help_text = " ".join(str(f.metadata.get("help", "")).split())
        lines.append(f"  --{f.name} (default: {default!r})")
        if help_text:
            lines.append(f"      {help_text}")
    return lines


def method_help(method: str) -> str:
    """`trl-opd train [--method M] --help`: the method's own fields with their help, then where the rest are."""
    spec = get_spec(method)
    config_class, _ = load_method(method)
    base = trl_base_class(config_class)
    lines = [
        "usage: trl-opd train --config RECIPE.yaml [--field value ...] [--dry-run]",
        "       trl-opd train --method M --help      this list for method M",
        "       trl-opd train --method M --help-all  every field, TRL's and transformers' included",
        "",
        f"method {spec.name}: {spec.display_name} ({spec.paper}), {spec.description}",
        "",
        f"{spec.display_name} fields ({config_class.__name__}):",
        *(_field_lines(method_fields(config_class)) or ["  (none beyond the TRL config)"]),
        "",
        "data and method fields (ScriptArguments):",
        *_field_lines([f for f in fields(ScriptArguments) if f.name != "recipe_path"]),
        "",
        f"Every field of TRL's {base.__name__ if base else 'config'} (generation, vLLM, optimisation, saving, "
        "logging: https://huggingface.co/docs/trl) and of trl.ModelConfig (model, dtype, LoRA, quantization) is a "
        "recipe key too; `--help-all` lists them.",
    ]
    return "\n".join(lines) + "\n"


def _flag_keys(argv: list[str]) -> list[str]:
    return [a[2:].split("=", 1)[0] for a in argv if a.startswith("--") and a not in ("--config",)]


class _Parser(TrlParser):
    """`TrlParser` whose argument errors (a value of the wrong type) are [`RecipeError`]s, not usage + exit."""

    def error(self, message: str):
        raise RecipeError(f"Bad value on the command line or in the recipe: {message}")


def parse_recipe(config_path: str | None, argv: list[str] | None = None) -> tuple[Any, Any, ModelConfig]:
    """Parse a recipe plus command-line overrides into `(script_args, method_config, model_config)`.

    YAML values set the defaults, flags override them (TRL's `TrlParser`); unknown keys or flags are errors.
    """
    argv = list(argv or [])
    method = method_of(config_path, argv)
    get_spec(method)
    recipe = read_recipe(config_path) if config_path else {}
    if "env" in recipe:  # TrlParser would set them in this process: GIT_*, LD_*, PYTHON* can run commands
        raise RecipeError(
            f"Recipe {config_path} has an `env:` block: recipes cannot set environment variables; set them in the "
            "shell that runs trl-opd."
        )
    check_known_keys(list(recipe), method, f"recipe {config_path}")
    check_known_keys(_flag_keys(argv), method, "the command line")
    parser = _Parser(dataclass_types(method))
    # a preset's values (e.g. `opsd` = ATESD at fixed full exposure) are defaults: the recipe and flags override them,
    # and the config's own checks see the final values
    parser.set_defaults_with_config(**get_spec(method).config_overrides)
    full_argv = (["--config", config_path] if config_path else []) + argv
    try:
        script_args, config, model_args = parser.parse_args_and_config(full_argv)
    except UserError:
        raise
    except (ValueError, TypeError) as err:  # a config's own checks (`__post_init__`) on the recipe's values
        raise RecipeError(f"{config_path or 'command line'}: {' '.join(str(err).split())}") from err
    script_args.recipe_path = config_path
    return script_args, config, model_args
