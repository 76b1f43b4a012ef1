# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""Bad input through the CLI: one `error:` line naming the field, file or row, exit code 2, no traceback, no output
directory left behind; a genuine bug keeps its traceback; a recipe cannot run a command."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import tiny_recipe_values

from trl_opd.cli import main


TRL_OPD = Path(sys.executable).parent / "trl-opd"


@pytest.fixture
def recipe(tmp_path, tiny_pair_dir, arithmetic_jsonl):
    def make(*, raw: str | None = None, **overrides) -> Path:
        path = tmp_path / "recipe.yaml"
        if raw is not None:
            path.write_text(raw)
            return path
        values = tiny_recipe_values(tiny_pair_dir, arithmetic_jsonl, tmp_path / "out", **overrides)
        path.write_text(yaml.safe_dump(values))
        return path

    return make


def _jsonl(tmp_path: Path, rows: list[dict]) -> str:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _rows(prompts: list) -> list[dict]:
    return [{"problem": p, "answer": "1", "solution": "1"} for p in prompts]


def _setup(tmp_path: Path, tiny_pair_dir: Path, what: str) -> str:
    """Files some cases need, built in `tmp_path`; returns the value to put in the recipe."""
    if what == "file":
        (tmp_path / "a_file").write_text("x")
        return str(tmp_path / "a_file")
    if what == "empty_dir":
        (tmp_path / "empty_model").mkdir()
        return str(tmp_path / "empty_model")
    if what == "truncated_weights":
        broken = tmp_path / "broken_student"
        shutil.copytree(tiny_pair_dir / "student", broken)
        weights = broken / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
        return str(broken)
    if what == "null_prompt":
        return _jsonl(tmp_path, _rows(["1+1?", "2+2?", "3+3?", None]))
    if what == "int_prompt":
        return _jsonl(tmp_path, _rows(["1+1?", 7, "3+3?"]))
    if what == "blank_prompt":
        return _jsonl(tmp_path, _rows(["1+1?", "2+2?", "   "]))
    if what == "garbage_json":
        (tmp_path / "bad.jsonl").write_text("{not json\n")
        return str(tmp_path / "bad.jsonl")
    if what == "empty_file":
        (tmp_path / "empty.jsonl").write_text("")
        return str(tmp_path / "empty.jsonl")
    raise KeyError(what)


# (id, recipe overrides, extra command-line arguments, expected text of the error line); a value "@what" is built by
# `_setup`; "{tmp}" is the test's temporary folder.
CASES = [
    (
        "max_steps_negative",
        {"max_steps": -5},
        [],
        "max_steps must be >= 1 (or -1 to train for num_train_epochs), got -5",
    ),
    ("max_steps_zero", {"max_steps": 0}, [], "max_steps must be >= 1"),
    ("epochs_zero", {"max_steps": None, "num_train_epochs": 0}, [], "num_train_epochs must be > 0"),
    ("epochs_negative", {"max_steps": -1, "num_train_epochs": -2}, [], "num_train_epochs must be > 0"),
    ("lr_zero", {"learning_rate": 0}, [], "learning_rate must be a number > 0, got 0"),
    ("lr_negative", {"learning_rate": -1e-4}, [], "learning_rate must be a number > 0"),
    ("lr_list", {"learning_rate": [1, 2]}, [], "learning_rate must be a number > 0, got [1, 2]"),
    ("lr_text", {"learning_rate": "fast"}, [], "learning_rate"),
    ("lr_flag_text", {}, ["--learning_rate", "abc"], "--learning_rate"),
    ("max_steps_flag_text", {}, ["--max_steps", "x"], "--max_steps"),
    ("accumulation_zero", {"gradient_accumulation_steps": 0}, [], "gradient_accumulation_steps must be an integer"),
    ("accumulation_negative", {"gradient_accumulation_steps": -2}, [], "gradient_accumulation_steps"),
    ("batch_zero", {"per_device_train_batch_size": 0}, [], "per_device_train_batch_size must be an integer >= 1"),
    ("completion_zero", {"max_completion_length": 0}, [], "max_completion_length must be an integer >= 1"),
    ("completion_negative", {"max_completion_length": -3}, [], "max_completion_length"),
    ("save_total_limit_zero", {"save_total_limit": 0}, [], "save_total_limit"),
    ("max_train_samples_zero", {"max_train_samples": 0}, [], "max_train_samples must be >= 1"),
    (
        "model_missing",
        {"model_name_or_path": "/nonexistent/student"},
        [],
        "no such model directory: /nonexistent/student",
    ),
    (
        "model_relative_missing",
        {"model_name_or_path": "./no/such/model"},
        [],
        "no such model directory: ./no/such/model",
    ),
    ("model_is_file", {"model_name_or_path": "@file"}, [], "is not a model directory"),
    ("model_no_config", {"model_name_or_path": "@empty_dir"}, [], "no config.json (model_name_or_path)"),
    ("model_hub_unreachable", {"model_name_or_path": "nobody/no-such-model"}, [], "cannot be reached on the Hub"),
    (
        "model_truncated",
        {"model_name_or_path": "@truncated_weights"},
        [],
        "model.safetensors (model_name_or_path) is truncated",
    ),
    (
        "teacher_missing",
        {"teacher_model_name_or_path": "/nonexistent/teacher"},
        [],
        "no such model directory: /nonexistent/teacher (teacher_model_name_or_path)",
    ),
    (
        "teacher_hub_unreachable",
        {"teacher_model_name_or_path": "nobody/no-teacher"},
        [],
        "nobody/no-teacher (teacher_model_name_or_path) cannot be reached",
    ),
    (
        "teacher_no_config",
        {"teacher_model_name_or_path": "@empty_dir"},
        [],
        "no config.json (teacher_model_name_or_path)",
    ),
    ("no_teacher", {"teacher_model_name_or_path": None}, [], "needs a teacher"),
    ("output_dir_file", {"output_dir": "@file"}, [], "cannot be created"),
    ("output_dir_under_file", {"output_dir": "{tmp}/a_file/out"}, [], "a_file is a file"),
    (
        "dataset_missing",
        {"dataset_name": "/nonexistent/data.jsonl"},
        [],
        "Dataset file /nonexistent/data.jsonl does not exist",
    ),
    ("dataset_empty", {"dataset_name": "@empty_file"}, [], "is empty"),
    ("dataset_garbage", {"dataset_name": "@garbage_json"}, [], "Could not load dataset"),
    ("dataset_no_column", {"prompt_column": "question"}, [], "no column 'question'"),
    ("prompt_null", {"dataset_name": "@null_prompt"}, [], "Row 3 of dataset"),
    ("prompt_int", {"dataset_name": "@int_prompt"}, [], "Row 1 of dataset"),
    ("prompt_blank", {"dataset_name": "@blank_prompt"}, [], "the prompt is empty"),
    ("unknown_method", {"method": "opdd"}, [], "Unknown method 'opdd'"),
    ("unknown_key", {"learning_rat": 1e-4}, [], "Unknown key 'learning_rat'"),
    ("unknown_flag", {}, ["--bta", "0.1"], "Unknown key 'bta' in the command line"),
    ("env_block", {"env": {"GIT_CONFIG_COUNT": "1"}}, [], "has an `env:` block"),
    ("env_flag", {}, ["--env", "X=1"], "Unknown key 'env'"),
    ("divergence", {"divergence": "l2"}, [], "divergence must be 'jsd' or 'k1'"),
    (
        "self_teacher",
        {"teacher_model_name_or_path": None, "method": "atesd", "self_teacher": "bogus"},
        [],
        "self_teacher",
    ),
    (
        "self_teacher_check",
        {"teacher_model_name_or_path": None, "method": "opsd", "self_teacher_check": "maybe"},
        [],
        "self_teacher_check must be one of",
    ),
    (
        "self_teacher_useless",  # the random tiny student cannot use the reference
        {"teacher_model_name_or_path": None, "method": "atesd", "self_teacher_check": "error"},
        [],
        "the reference does not help the self-teacher",
    ),
    ("ema_decay", {"teacher_ema_decay": 1.5}, [], "teacher_ema_decay must be in [0, 1)"),
    ("motab_quantile", {"method": "motab", "boundary_quantile": 2}, [], "boundary_quantile must be in (0, 1)"),
    ("resume_missing", {"resume_from_checkpoint": "/nonexistent/checkpoint-3"}, [], "no such checkpoint directory"),
    ("resume_true_nothing", {}, ["--resume_from_checkpoint", "true"], "holds no complete checkpoint"),
    ("bf16_on_cpu", {}, ["--bf16", "true"], "no GPU"),
    ("flag_without_value", {}, ["--max_steps"], "argument --max_steps"),
    ("recipe_not_yaml", {"raw": "a: [1\n"}, [], "is not valid YAML"),
    ("recipe_not_mapping", {"raw": "- 1\n- 2\n"}, [], "must be a YAML mapping"),
]


def _resolve(value, tmp_path, tiny_pair_dir):
    if isinstance(value, str) and value.startswith("@"):
        return _setup(tmp_path, tiny_pair_dir, value[1:])
    if isinstance(value, str):
        return value.replace("{tmp}", str(tmp_path))
    return value


@pytest.mark.parametrize(("overrides", "argv", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_battery(recipe, tmp_path, tiny_pair_dir, capsys, overrides, argv, expected):
    if "a_file" in str(overrides.get("output_dir", "")):
        _setup(tmp_path, tiny_pair_dir, "file")
    overrides = {k: _resolve(v, tmp_path, tiny_pair_dir) for k, v in overrides.items()}
    before = sorted(p.name for p in tmp_path.iterdir())
    path = recipe(**overrides)
    code = main(["train", "--config", str(path), *argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2, err
    assert len(lines) == 1 and expected in lines[0], err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({*before, "recipe.yaml"}), "left something behind"


def test_battery_has_enough_cases():
    assert len(CASES) >= 40


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"model_name_or_path": "/nonexistent/student"}, "no such model directory"),
        ({"output_dir": "@file"}, "cannot be created"),
        ({"max_steps": -5}, "max_steps"),
    ],
)
def test_dry_run_validates_too(recipe, tmp_path, tiny_pair_dir, capsys, overrides, expected):
    overrides = {k: _resolve(v, tmp_path, tiny_pair_dir) for k, v in overrides.items()}
    code = main(["train", "--config", str(recipe(**overrides)), "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2 and expected in err.strip().splitlines()[-1]


def test_dry_run_reports_an_unreachable_hub_model(recipe, capsys):
    code = main(["train", "--config", str(recipe(model_name_or_path="nobody/no-such-model")), "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0 and "model_name_or_path not reachable from here" in out


def test_debug_shows_the_traceback_of_a_user_error(recipe, capsys):
    assert main(["train", "--config", str(recipe(max_steps=0)), "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("error: max_steps")


def test_a_bug_keeps_its_traceback_and_leaves_no_output_dir(recipe, tmp_path, monkeypatch):
    import trl_opd.launch.build

    def broken(*args, **kwargs):
        raise ValueError("a bug inside a trainer")

    monkeypatch.setattr(trl_opd.launch.build, "build_trainer", broken)
    with pytest.raises(ValueError, match="a bug inside a trainer"):
        main(["train", "--config", str(recipe())])
    assert not (tmp_path / "out").exists()


def _env(**extra) -> dict[str, str]:
    root = Path(__file__).resolve().parents[1]
    return {**os.environ, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1", **extra}


def test_bad_input_through_the_command(recipe, tmp_path):
    result = subprocess.run(
        [str(TRL_OPD), "train", "--config", str(recipe(learning_rate=0))],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "error: learning_rate must be a number > 0, got 0"
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


def test_a_recipe_cannot_run_a_command(recipe, tmp_path):
    """`env:` with git's fsmonitor hook is refused; git's config in the environment runs nothing in the card writer."""
    marker = tmp_path / "pwned"
    hook = {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "core.fsmonitor", "GIT_CONFIG_VALUE_0": f"touch {marker}"}
    result = subprocess.run(
        [str(TRL_OPD), "train", "--config", str(recipe(env=hook, max_steps=1))],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    assert result.returncode == 2 and "has an `env:` block" in result.stderr.strip().splitlines()[-1]
    code = (
        "from trl_opd.launch.model_card import git_commit; import re, sys; "
        "c = git_commit(); sys.exit(0 if c == 'unknown' or re.fullmatch('[0-9a-f]{40}', c) else 1)"
    )
    checked = subprocess.run([sys.executable, "-c", code], env=_env(**hook), timeout=120)
    assert checked.returncode == 0
    assert not marker.exists()


def test_a_dataset_smaller_than_one_step_is_refused(tmp_path, tiny_pair_dir, capsys):
    """Two rows with a batch of 4 would stop at step 0 and exit 0 without training: one error line instead."""
    data = tmp_path / "two.jsonl"
    data.write_text('{"prompt": "Compute 1+1.", "answer": "2"}\n{"prompt": "Compute 2+2.", "answer": "4"}\n')
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "method: opd\n"
        f"model_name_or_path: {tiny_pair_dir / 'student'}\n"
        f"teacher_model_name_or_path: {tiny_pair_dir / 'teacher'}\n"
        f"dataset_name: {data}\n"
        f"output_dir: {tmp_path / 'out'}\n"
        "per_device_train_batch_size: 4\nmax_steps: 1\nreport_to: none\n"
    )
    from trl_opd.cli import main

    assert main(["train", "--config", str(recipe)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: The dataset") and "fewer than one optimizer step takes (4" in err[-1]
    assert not (tmp_path / "out").exists()
