# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""Every shipped recipe parses with TRL's parser, unknown keys fatal, so recipes cannot drift from the code."""

from pathlib import Path

import pytest
import yaml

from trl_opd.launch.methods import METHODS
from trl_opd.launch.recipe import parse_recipe, read_recipe


RECIPES = Path(__file__).resolve().parents[1] / "recipes"
RECIPE_FILES = sorted(p for p in RECIPES.glob("*/*/config_*.yaml"))
ACCELERATE_FILES = sorted((RECIPES / "accelerate_configs").glob("*.yaml"))


def test_recipes_exist():
    assert RECIPE_FILES, "no recipes found"
    assert {p.stem for p in ACCELERATE_FILES} >= {"ddp", "zero2", "zero3", "fsdp2"}


@pytest.mark.parametrize("path", RECIPE_FILES, ids=lambda p: str(p.relative_to(RECIPES)))
def test_recipe_parses(path):
    recipe = read_recipe(str(path))
    method_dir = path.parent.name
    assert recipe["method"] in METHODS and method_dir in METHODS
    assert METHODS[recipe["method"]].trainer == METHODS[method_dir].trainer, "recipe folder must name its trainer"
    script_args, config, model_args = parse_recipe(str(path))
    assert model_args.model_name_or_path.startswith("Qwen/")
    assert path.parent.parent.name == model_args.model_name_or_path.split("/")[-1]
    header = path.read_text().splitlines()[:12]
    assert any("accelerate launch" in line for line in header), "header must give the launch command"
    assert any("Hardware" in line or "hardware" in line for line in header), "header must say the hardware"
    extras = next(line for line in header if line.startswith("# Extras: pip install 'trl-opd["))
    assert ("vllm" in extras) == bool(config.use_vllm) and "deepspeed" in extras
    assert config.output_dir
    assert script_args.merge_adapter == bool(model_args.use_peft), "LoRA recipes save the merged model too"
    assert "trackio" not in config.report_to, "no optional logger by default"


@pytest.mark.parametrize("path", RECIPE_FILES, ids=lambda p: str(p.relative_to(RECIPES)))
def test_recipe_dry_run_offline(path, capsys):
    """`--dry-run` validates a recipe without weights; a Hub dataset that cannot be reached is reported, not fatal."""
    from trl_opd.cli import main

    assert main(["train", "--config", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok: method=") and "dataset=" in out and "card: ok" in out
    assert "needs: vllm (use_vllm: true)" in out  # every shipped recipe generates with vLLM


@pytest.mark.parametrize("path", ACCELERATE_FILES, ids=lambda p: p.name)
def test_accelerate_config_is_valid_yaml(path):
    config = yaml.safe_load(path.read_text())
    assert config["distributed_type"] in {"MULTI_GPU", "DEEPSPEED", "FSDP"}
    assert config["num_processes"] >= 1
