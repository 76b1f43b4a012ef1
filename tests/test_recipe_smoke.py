# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""Every shipped recipe trains one optimizer step through the CLI, with only its models and GPU settings swapped.

The Hub models become tiny local Qwen3 models of the same family (LoRA targets, chat template and teacher kwargs still
apply), the Hub dataset becomes a tiny local file with the recipe's own column names, and only what needs a GPU or an
absent package is switched off (`use_vllm`, `bf16`, the `trackio` logger; DeepSpeed lives in the accelerate config,
not the recipe). Completions are cut to a few tokens so a step takes seconds. Every other key is kept as written.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from trl_opd.cli import main


RECIPES = Path(__file__).resolve().parents[1] / "recipes"
RECIPE_FILES = sorted(RECIPES.glob("*/*/config_*.yaml"))

#: What a CPU test machine cannot run, and the size of a smoke step. Nothing else in a recipe is changed.
GPU_ONLY = {"use_vllm": False, "bf16": False, "report_to": "none"}
SMOKE_SIZE = {
    "max_steps": 1,
    "max_completion_length": 8,
    "save_strategy": "steps",
    "save_steps": 1,
    "logging_steps": 1,
}


@pytest.fixture(scope="module")
def smoke_data(tmp_path_factory):
    """A tiny dataset file per column naming: text prompts, answers, boxed reference solutions."""
    from trl_opd.demo.task import make_dataset

    rows = make_dataset(64, seed=7).remove_columns("prompt").to_list()
    folder = tmp_path_factory.mktemp("smoke_data")

    def write(prompt_column: str, answer_column: str, solution_column: str) -> Path:
        path = folder / f"{prompt_column}-{answer_column}-{solution_column}.jsonl"
        if not path.exists():
            renamed = [
                {prompt_column: r["problem"], answer_column: r["answer"], solution_column: r["solution"]} for r in rows
            ]
            path.write_text("".join(json.dumps(r) + "\n" for r in renamed))
        return path

    return write


def smoke_recipe(path: Path, tiny_pair_dir: Path, smoke_data, output_dir: Path) -> dict:
    """The recipe at `path` with tiny local models and data, GPU-only settings off, a one-step size."""
    recipe = yaml.safe_load(path.read_text())
    recipe["model_name_or_path"] = str(tiny_pair_dir / "student")
    if recipe.get("teacher_model_name_or_path"):
        recipe["teacher_model_name_or_path"] = str(tiny_pair_dir / "teacher")
    recipe["dataset_name"] = str(
        smoke_data(
            recipe.get("prompt_column", "prompt"),
            recipe.get("answer_column", "answer"),
            recipe.get("solution_column", "solution"),
        )
    )
    recipe.update(GPU_ONLY)
    recipe.update(SMOKE_SIZE)
    recipe["output_dir"] = str(output_dir)
    recipe["push_to_hub"] = False
    return recipe


def test_smoke_covers_every_recipe():
    assert len(RECIPE_FILES) == 22, [str(p) for p in RECIPE_FILES]


@pytest.mark.parametrize("path", RECIPE_FILES, ids=lambda p: str(p.relative_to(RECIPES)))
def test_recipe_trains_one_step(path, tiny_pair_dir, smoke_data, tmp_path, capsys):
    original = yaml.safe_load(path.read_text())
    recipe = smoke_recipe(path, tiny_pair_dir, smoke_data, tmp_path / "out")
    kept = set(original) - set(GPU_ONLY) - set(SMOKE_SIZE) - {"model_name_or_path", "teacher_model_name_or_path"}
    kept -= {"dataset_name", "output_dir", "push_to_hub"}
    assert all(recipe[key] == original[key] for key in kept)  # the rest of the recipe is kept as written
    file = tmp_path / path.name
    file.write_text(yaml.safe_dump(recipe))

    code = main(["train", "--config", str(file)])

    captured = capsys.readouterr()
    assert code == 0, captured.err[-2000:]
    out = tmp_path / "out"
    state = json.loads((out / "checkpoint-1" / "trainer_state.json").read_text())
    assert state["global_step"] == 1 and state["max_steps"] == 1  # one optimizer step ran
    assert (out / "README.md").is_file()  # our model card, written after training
    assert (out / ("adapter_config.json" if original.get("use_peft") else "config.json")).is_file()
