# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""The `trl-opd` CLI: recipe parsing, unknown keys and methods, dry runs, bad input, and a tiny training run."""

from pathlib import Path

import pytest
import yaml
from conftest import tiny_recipe_values

from trl_opd.cli import main
from trl_opd.launch.recipe import RecipeError, parse_recipe


def write_recipe(path: Path, **values) -> Path:
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.fixture
def tiny_recipe(tmp_path, tiny_pair_dir, arithmetic_jsonl):
    def make(**overrides):
        values = tiny_recipe_values(
            tiny_pair_dir,
            arithmetic_jsonl,
            tmp_path / "out",
            **{"bf16": True, "gradient_checkpointing": True, **overrides},
        )
        return write_recipe(tmp_path / "recipe.yaml", **values)

    return make


def run_cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_flags_override_the_recipe(tiny_recipe):
    script_args, config, model_args = parse_recipe(str(tiny_recipe()), ["--beta", "0.25", "--max_steps", "7"])
    assert (config.beta, config.max_steps, script_args.prompt_column) == (0.25, 7, "problem")
    assert config.bf16 is False and config.gradient_checkpointing is False  # CPU-safe values on this machine
    assert model_args.model_name_or_path.endswith("student")


def test_unknown_key_names_the_nearest_field(tiny_recipe, capsys):
    recipe = tiny_recipe(learning_rat=1e-4)
    code, _, err = run_cli(capsys, "train", "--config", str(recipe), "--dry-run")
    assert code == 2
    assert err.strip().splitlines()[-1] == (
        f"error: Unknown key 'learning_rat' in recipe {recipe} for method 'opd'; did you mean 'learning_rate'?"
    )
    code, _, err = run_cli(capsys, "train", "--config", str(tiny_recipe()), "--bta", "0.1")
    assert code == 2 and "Unknown key 'bta'" in err and "'beta'" in err
    assert "Traceback" not in err


def test_unknown_method_lists_the_valid_ones(tiny_recipe, capsys):
    code, _, err = run_cli(capsys, "train", "--config", str(tiny_recipe(method="opdd")), "--dry-run")
    assert code == 2 and "Unknown method 'opdd'" in err and "opd, gkd, grpo" in err


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"prompt_column": "question"}, "no column 'question'"),
        (
            {"method": "grpo", "teacher_model_name_or_path": None, "answer_column": "final", "num_generations": 4},
            "no column 'final'",
        ),
        ({"teacher_model_name_or_path": None}, "needs a teacher"),
        ({"dataset_name": "/nonexistent/data.jsonl"}, "does not exist"),
        ({"model_name_or_path": "/nonexistent/student"}, "/nonexistent/student"),
    ],
)
def test_bad_input_is_one_line_before_any_model_loads(tiny_recipe, capsys, tmp_path, overrides, expected):
    code, _, err = run_cli(capsys, "train", "--config", str(tiny_recipe(**overrides)))
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and expected in lines[0], err
    assert not (tmp_path / "out").exists()


def test_empty_dataset(tiny_recipe, capsys, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    code, _, err = run_cli(capsys, "train", "--config", str(tiny_recipe(dataset_name=str(empty))))
    assert code == 2 and err.strip().splitlines()[-1] == f"error: Dataset file {empty} is empty."
    code, _, err = run_cli(capsys, "train", "--config", str(tiny_recipe(dataset_name=str(empty))), "--dry-run")
    assert code == 2 and "is empty" in err  # a bad local file fails a dry run too


def test_bf16_flag_on_a_cpu_is_an_error(tiny_recipe, capsys):
    code, _, err = run_cli(capsys, "train", "--config", str(tiny_recipe()), "--bf16", "true")
    assert code == 2 and "no GPU" in err


def test_teacher_tokenizer_mismatch_leaves_no_output_dir(
    tiny_recipe, capsys, tmp_path, qwen3_tokenizer, tiny_pair_dir
):
    import shutil

    teacher = tmp_path / "qwen_teacher"
    shutil.copytree(tiny_pair_dir / "teacher", teacher)
    qwen3_tokenizer.save_pretrained(teacher)
    code, _, err = run_cli(capsys, "train", "--config", str(tiny_recipe(teacher_model_name_or_path=str(teacher))))
    assert code == 2 and "teacher's tokenizer" in err and "151669 tokens" in err
    assert not (tmp_path / "out").exists()


def test_dry_run_and_a_real_run(tiny_recipe, capsys, tmp_path):
    recipe = str(tiny_recipe())
    code, out, _ = run_cli(capsys, "train", "--config", recipe, "--dry-run")
    assert code == 0 and "method=opd" in out and "16 rows" in out
    assert not (tmp_path / "out").exists()
    code, _, err = run_cli(capsys, "train", "--config", recipe)
    assert code == 0, err
    assert (tmp_path / "out" / "model.safetensors").is_file()
    # the run's records and a full-model card
    for name in ("train_results.json", "trainer_state.json", "training_curves.png", "trl_opd_recipe.yaml"):
        assert (tmp_path / "out" / name).is_file(), name
    card = (tmp_path / "out" / "README.md").read_text()
    assert "library_name: transformers" in card and "AutoModelForCausalLM" in card


def test_methods_command_and_usage(capsys):
    code, out, _ = run_cli(capsys, "methods")
    assert code == 0 and "opd" in out and "arXiv 2605.19433" in out
    code, _, err = run_cli(capsys, "frobnicate")
    assert code == 2 and "unknown command" in err


def test_recipe_error_for_a_missing_file(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        parse_recipe(str(tmp_path / "nope.yaml"))
