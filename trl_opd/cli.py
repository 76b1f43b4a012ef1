# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""The `trl-opd` command: `train`, `demo`, `lab`, `eval`, `card`, `push`, `methods`.

`trl-opd train --config RECIPE.yaml [--field value ...] [--dry-run]` runs (or, with `--dry-run`, only validates) a
recipe; `accelerate launch [--config_file ...] -m trl_opd train --config RECIPE.yaml` runs the same on several
processes. Bad input ends with one `error:` line and exit code 2, before any model loads.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import traceback
from pathlib import Path

from .errors import UserError
from .launch.methods import METHODS, get_spec, is_available
from .launch.recipe import RecipeError, parse_recipe
from .runtime import has_accelerator


USER_ERRORS = (UserError,)  # RecipeError, UnknownMethodError, DatasetValidationError, TeacherMismatchError, ...
USAGE = """usage: trl-opd <command> [options]

commands:
  train    --config RECIPE.yaml [--field value ...] [--dry-run]   train (or validate) a recipe
           [--debug]: the traceback of a user error too
  train    [--method M] --help [--help-all]                         the method's fields (all fields)
  demo     [--methods a,b] [--steps N] [--output-dir D]             offline tiny end-to-end run
  lab      --world W --methods a,b --seeds 0,1,2 [--steps N]        multi-seed comparison on an offline world
  eval     --model PATH --tasks aime24,aime25,hmmt25 [...]          AIME/HMMT scores with lighteval
           (a training folder: results recorded in it; a LoRA adapter folder: merged first)
  card     OUTPUT_DIR [--hub-model-id ID]                            re-render OUTPUT_DIR/README.md from the folder
  push     OUTPUT_DIR --hub-model-id ID [--revision R] [--private]   upload the folder with its card to the Hub
  methods                                                           list the methods and their papers
"""


def _train_parser() -> argparse.ArgumentParser:
    """`trl-opd train`'s own options (argparse, like `eval` and `demo`); every other flag is a recipe field for TRL's
    parser."""
    parser = argparse.ArgumentParser(prog="trl-opd train", allow_abbrev=False, add_help=False, exit_on_error=False)
    parser.add_argument("--config", default=None, help="The recipe (YAML).")
    parser.add_argument("--dry-run", action="store_true", help="Validate the recipe and dataset; train nothing.")
    return parser


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


HELP_FLAGS = ("-h", "--help", "--help-all")


def _train_help(options, argv: list[str]) -> int:
    """`trl-opd train [--config R] [--method M] --help`: the method's own fields first; `--help-all`: every field."""
    from .launch.recipe import _Parser, dataclass_types, method_help, method_of

    method = method_of(options.config, argv)
    get_spec(method)
    if "--help-all" in argv:
        _Parser(dataclass_types(method), prog="trl-opd train").print_help()
    else:
        print(method_help(method), end="")
    return 0


def train_command(argv: list[str]) -> int:
    """`trl-opd train`: parse, validate, check the optional packages, build, train, save."""
    try:
        options, argv = _train_parser().parse_known_args(list(argv))
    except argparse.ArgumentError as err:
        raise RecipeError(str(err)) from err
    if any(flag in argv for flag in HELP_FLAGS):
        return _train_help(options, argv)
    _check_bf16_flag(argv)
    from .launch.extras import check_launch_needs, check_needs, run_needs

    check_launch_needs()
    script_args, config, model_args = parse_recipe(options.config, argv)
    from .launch.build import check_teacher, training_dataset
    from .launch.validation import check_dataset_size, validate_run

    spec = get_spec(script_args.method)
    check_teacher(spec, config)
    needs = run_needs(config, model_args, script_args)
    if not options.dry_run:  # a missing optional package stops a real run before anything loads
        check_needs(needs)
    notes = validate_run(script_args, config, model_args, spec, dry_run=options.dry_run)
    if options.dry_run:
        return _dry_run(script_args, config, model_args, spec, notes, needs)
    dataset = training_dataset(script_args, spec)
    check_dataset_size(dataset, config, f"dataset {script_args.dataset_name}")
    recipe = effective_recipe(options.config, argv, (script_args, config, model_args))
    return _train(script_args, config, model_args, dataset, recipe)


def _dry_run(script_args, config, model_args, spec, notes=None, needs=()) -> int:
    """Report what a run would do; check the dataset's columns when the dataset can be reached from here."""
    from .data import DatasetUnavailableError
    from .launch.build import training_dataset
    from .launch.recipe import dataset_sources

    try:
        dataset = training_dataset(script_args, spec)
        data = f"{len(dataset)} rows, columns {sorted(dataset.column_names)}"
    except DatasetUnavailableError as err:
        data = f"not reachable from here, columns not checked: {' '.join(str(err).split())[:200]}"
    unchecked = "".join(f", {field} {note}" for field, note in (notes or {}).items())
    print(
        f"ok: method={spec.name} ({spec.paper}), model={model_args.model_name_or_path}, "
        f"teacher={getattr(config, 'teacher_model_name_or_path', None) or 'self'}, "
        f"dataset={', '.join(dataset_sources(script_args)) or None} ({data}), output_dir={config.output_dir}{unchecked}"
    )
    from .launch.card_info import card_info_from_parsed
    from .launch.extras import needs_line
    from .launch.model_card import render_model_card

    line = needs_line(list(needs))
    if line:
        print(line)
        if any(not need.available for need in needs):
            print("warning: a real run on this machine stops at the first missing package above")
    render_model_card(card_info_from_parsed(script_args, config, model_args, config.output_dir))  # the template ships
    print(f"card: ok ({'LoRA adapter' if model_args.use_peft else 'full model'}, rendered at the end of training)")
    return 0


def effective_recipe(config_path: str | None, argv: list[str], parsed: tuple) -> dict:
    """The run's recipe as parsed: the file's keys and the command line's, with their final values (no token)."""
    from dataclasses import asdict, is_dataclass
    from enum import Enum

    from .launch.recipe import _flag_keys, read_recipe

    keys = list(read_recipe(config_path)) if config_path else []
    keys += [key for key in _flag_keys(argv) if key not in keys]
    values: dict = {}
    for key in keys:
        if key in ("hub_token", "recipe_path"):
            continue
        owner = next((obj for obj in parsed if hasattr(obj, key)), None)
        value = getattr(owner, key, None)
        if isinstance(value, Enum):
            value = value.value
        elif isinstance(value, list):
            value = [asdict(v) if is_dataclass(v) else v for v in value]
        values[key] = value
    values["recipe_path"] = config_path
    return values


def _train(script_args, config, model_args, dataset, recipe: dict | None = None) -> int:
    from .checkpoints import preemption_guard, resolve_resume
    from .launch.build import build_trainer
    from .launch.card_info import save_recipe_copy

    output_dir = Path(config.output_dir)
    created = not output_dir.exists()
    try:
        trainer = build_trainer(script_args, config, model_args, train_dataset=dataset)
        if trainer.is_world_process_zero():
            save_recipe_copy(output_dir, recipe or effective_recipe(None, [], (script_args, config, model_args)))
        has_state = bool(getattr(trainer, "extra_state_dict", dict)())
        resume = resolve_resume(config.resume_from_checkpoint, config.output_dir, has_state)
        with preemption_guard(trainer) as preemption:
            result = trainer.train(resume_from_checkpoint=resume)
        if preemption.requested:
            where = preemption.checkpoint or f"the newest checkpoint in {config.output_dir}"
            print(f"stopped on SIGTERM: saved {where}; resume with --resume_from_checkpoint true", file=sys.stderr)
            return 0
        trainer.save_model(config.output_dir)
        _save_run_records(trainer, result, script_args, model_args)
        card = _write_card(script_args, config, model_args)
        if config.push_to_hub and trainer.accelerator.is_main_process:
            from .launch.hub import push_model_with_card

            hub_model_id = config.hub_model_id or Path(config.output_dir).name
            push_model_with_card(
                config.output_dir,
                hub_model_id,
                config.hub_revision or "main",
                card,
                private=config.hub_private_repo,
                token=config.hub_token,
            )
    except BaseException:
        # no half-written output directory: one this run created and that holds no checkpoint goes
        if created and output_dir.is_dir() and not any(output_dir.glob("checkpoint-*")):
            shutil.rmtree(output_dir, ignore_errors=True)
        raise
    return 0


def _save_run_records(trainer, result, script_args, model_args) -> None:
    """At the end of every run: `train_results.json`, `trainer_state.json`, `training_curves.png`, and for LoRA with
    `merge_adapter` the merged model in `OUTPUT_DIR/merged/`."""
    from .launch.curves import plot_training_curves

    trainer.save_metrics("train", dict(result.metrics), combined=False)  # main process only (the Trainer checks)
    trainer.save_state()
    if not trainer.is_world_process_zero():
        return
    output_dir = Path(trainer.args.output_dir)
    plot_training_curves(trainer.state.log_history, output_dir / "training_curves.png", title=output_dir.name)
    if script_args.merge_adapter and model_args.use_peft:
        from .adapters import merge_adapter

        merge_adapter(output_dir, output_dir / "merged", model_args.model_name_or_path, dtype=model_args.dtype,
                      revision=model_args.model_revision)  # fmt: skip
        print(f"merged model: {output_dir / 'merged'}")


def _write_card(script_args, config, model_args) -> str:
    """Our model card (method, paper, recipe, hyperparameters, evaluation) in place of TRL's generic one."""
    from .launch.card_info import card_info_from_parsed
    from .launch.model_card import render_model_card, write_model_card

    card = render_model_card(card_info_from_parsed(script_args, config, model_args, config.output_dir))
    if config.should_save:
        write_model_card(config.output_dir, card)
    return card


def _card_parser(prog: str, push: bool) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, allow_abbrev=False, exit_on_error=False)
    parser.add_argument("output_dir", help="a folder written by `trl-opd train`")
    parser.add_argument("--hub-model-id", required=push, help="the Hub repo, `user/name`")
    if push:
        parser.add_argument("--revision", default=None, help="the branch to upload to (default: main)")
        parser.add_argument("--private", action="store_true", help="create the repo private")
        parser.add_argument("--hub-token", default=None, help="the Hub token (default: HF_TOKEN / the saved login)")
    return parser


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    try:
        return parser.parse_args(argv)
    except argparse.ArgumentError as err:
        raise RecipeError(f"{parser.prog}: {err}") from err


def card_command(argv: list[str]) -> int:
    """`trl-opd card OUTPUT_DIR`: re-render `OUTPUT_DIR/README.md` from the recipe copy, state and eval results."""
    from .launch.card_info import card_from_output_dir
    from .launch.model_card import write_model_card

    args = _parse(_card_parser("trl-opd card", push=False), argv)
    path = write_model_card(args.output_dir, card_from_output_dir(args.output_dir, args.hub_model_id))
    print(f"card: {path}")
    return 0


def push_command(argv: list[str]) -> int:
    """`trl-opd push OUTPUT_DIR --hub-model-id ID`: re-render the card and upload the folder (no token-bearing file,
    no `training_args.bin`, no checkpoints)."""
    from .launch.card_info import card_from_output_dir
    from .launch.hub import push_model_with_card

    args = _parse(_card_parser("trl-opd push", push=True), argv)
    card = card_from_output_dir(args.output_dir, args.hub_model_id)
    token = args.hub_token or os.environ.get("HF_TOKEN") or None
    push_model_with_card(
        args.output_dir, args.hub_model_id, args.revision or "main", card, private=args.private or None, token=token
    )
    print(f"pushed {args.output_dir} to https://huggingface.co/{args.hub_model_id}" + (
        f" (branch {args.revision})" if args.revision else ""))  # fmt: skip
    return 0


def methods_command(_: list[str]) -> int:
    for name, spec in METHODS.items():
        status = "" if is_available(name) else "  (not available in this install)"
        print(f"{name:<9} {spec.display_name:<9} {spec.paper:<17} {spec.description}{status}")
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
COMMANDS.update({"card": card_command, "push": push_command})


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=os.environ.get("TRL_OPD_LOG_LEVEL", "WARNING"), format="%(name)s: %(message)s")
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(USAGE, end="", file=sys.stdout if argv and argv[0] in ("-h", "--help") else sys.stderr)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"error: unknown command {argv[0]!r}", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    debug = "--debug" in argv
    argv = [arg for arg in argv if arg != "--debug"]
    try:
        return COMMANDS[argv[0]](argv[1:])
    except USER_ERRORS as err:  # bad input; anything else is a bug and keeps its traceback (exit code 1)
        if debug:
            traceback.print_exc()
        message = " ".join(str(err).split())
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
