# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""The `trl-opd` command: `train`, `demo`, `lab`, `eval`, `methods`.

`trl-opd train --config RECIPE.yaml [--field value ...] [--dry-run]` runs (or, with `--dry-run`, only validates) a
recipe; `accelerate launch [--config_file ...] -m trl_opd train --config RECIPE.yaml` runs the same on several
processes. Bad input ends with one `error:` line and exit code 2, before any model loads.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path

from .data import DatasetValidationError
from .methods import METHODS, UnknownMethodError, get_spec, is_available
from .recipe import RecipeError, parse_recipe
from .runtime import has_accelerator
from .teacher import TeacherMismatchError


USER_ERRORS = (
    RecipeError,
    UnknownMethodError,
    DatasetValidationError,
    TeacherMismatchError,
    ValueError,
    OSError,  # transformers' "not a local folder and not a valid model identifier", offline Hub misses
)
USAGE = """usage: trl-opd <command> [options]

commands:
  train    --config RECIPE.yaml [--field value ...] [--dry-run]   train (or validate) a recipe
  demo     [--methods a,b] [--steps N] [--output-dir D]             offline tiny end-to-end run
  lab      --world W --methods a,b --seeds 0,1,2 [--steps N]        multi-seed comparison on an offline world
  eval     --model PATH --tasks aime24,aime25,hmmt25 [...]          AIME/HMMT scores with lighteval
  methods                                                           list the methods and their papers
"""


def _pop_flag(argv: list[str], flag: str) -> bool:
    if flag in argv:
        argv.remove(flag)
        return True
    return False


def _pop_value(argv: list[str], flag: str) -> str | None:
    if flag in argv:
        index = argv.index(flag)
        if index + 1 >= len(argv):
            raise RecipeError(f"{flag} needs a value.")
        value = argv[index + 1]
        del argv[index : index + 2]
        return value
    return None


def _check_bf16_flag(argv: list[str]) -> None:
    """A `--bf16 true` typed on the command line of a machine without a GPU is an error (a recipe's is overridden)."""
    if has_accelerator():
        return
    for index, arg in enumerate(argv):
        value = arg.split("=", 1)[1] if arg.startswith("--bf16=") else None
        if arg == "--bf16":
            value = argv[index + 1] if index + 1 < len(argv) and not argv[index + 1].startswith("--") else "true"
        if value is not None and value.lower() in ("true", "1", "yes"):
            raise RecipeError("--bf16 true was asked for, but this machine has no GPU: bf16 training needs one.")


def train_command(argv: list[str]) -> int:
    """`trl-opd train`: parse, validate, build, train, save."""
    argv = list(argv)
    dry_run = _pop_flag(argv, "--dry-run")
    config_path = _pop_value(argv, "--config")
    _check_bf16_flag(argv)
    script_args, config, model_args = parse_recipe(config_path, argv)
    from .build import check_teacher, training_dataset

    spec = get_spec(script_args.method)
    check_teacher(spec, config)
    if dry_run:
        return _dry_run(script_args, config, model_args, spec)
    return _train(script_args, config, model_args, training_dataset(script_args, spec))


def _dry_run(script_args, config, model_args, spec) -> int:
    """Report what a run would do; check the dataset's columns when the dataset can be reached from here."""
    from .build import training_dataset
    from .data import DatasetUnavailableError

    try:
        dataset = training_dataset(script_args, spec)
        data = f"{len(dataset)} rows, columns {sorted(dataset.column_names)}"
    except DatasetUnavailableError as err:
        data = f"not reachable from here, columns not checked: {' '.join(str(err).split())[:200]}"
    print(
        f"ok: method={spec.name} ({spec.paper}), model={model_args.model_name_or_path}, "
        f"teacher={getattr(config, 'teacher_model_name_or_path', None) or 'self'}, "
        f"dataset={script_args.dataset_name} ({data}), output_dir={config.output_dir}"
    )
    return 0


def _train(script_args, config, model_args, dataset) -> int:
    from .build import build_trainer

    output_dir = Path(config.output_dir)
    created = not output_dir.exists()
    started = False
    try:
        trainer = build_trainer(script_args, config, model_args, train_dataset=dataset)
        started = True
        trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
        trainer.save_model(config.output_dir)
        card = _write_card(script_args, config, model_args)
        if config.push_to_hub and trainer.accelerator.is_main_process:
            from .model_card import push_model_with_card

            hub_model_id = config.hub_model_id or Path(config.output_dir).name
            push_model_with_card(config.output_dir, hub_model_id, config.hub_revision or "main", card)
    finally:
        if created and not started and output_dir.exists():
            shutil.rmtree(output_dir, ignore_errors=True)  # no half-written output directory on bad input
    return 0


def _write_card(script_args, config, model_args) -> str:
    """Our model card (method, paper, recipe, hyperparameters, evaluation) in place of TRL's generic one."""
    from .model_card import load_eval_results, render_model_card, training_card_info, write_model_card

    info = training_card_info(
        script_args.method,
        config,
        model_args.model_name_or_path,
        teacher=getattr(config, "teacher_model_name_or_path", None),
        recipe=script_args.recipe_path,
        training_data=script_args.dataset_name,
        evaluation=load_eval_results(config.output_dir),
    )
    card = render_model_card(info)
    if config.should_save:
        write_model_card(config.output_dir, card)
    return card


def methods_command(_: list[str]) -> int:
    for name, spec in METHODS.items():
        status = "" if is_available(name) else "  (not available in this install)"
        print(f"{name:<9} {spec.paper:<24} {spec.description}{status}")
    return 0


def _demo(argv: list[str]) -> int:
    from .demo.run import main as demo_main

    return demo_main(argv)


def _lab(argv: list[str]) -> int:
    from .lab.run import main as lab_main

    return lab_main(argv)


def _eval(argv: list[str]) -> int:
    from .eval.runner import main as eval_main

    return eval_main(argv)


COMMANDS = {"train": train_command, "demo": _demo, "lab": _lab, "eval": _eval, "methods": methods_command}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=os.environ.get("TRL_OPD_LOG_LEVEL", "WARNING"), format="%(name)s: %(message)s")
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(USAGE, end="", file=sys.stdout if argv and argv[0] in ("-h", "--help") else sys.stderr)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"error: unknown command {argv[0]!r}", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    try:
        return COMMANDS[argv[0]](argv[1:])
    except USER_ERRORS as err:
        message = " ".join(str(err).split())
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
