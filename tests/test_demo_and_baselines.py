# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""The demo end to end at toy size (table, plot, model card), and the TRL baselines built from the recipe format."""

import re

import pytest
import yaml

import trl_opd.demo.run as demo
from trl_opd.launch.build import build_trainer
from trl_opd.launch.recipe import parse_recipe


def test_demo_writes_table_plot_and_a_complete_card(tmp_path, capsys):
    out = tmp_path / "out"
    code = demo.main(
        [
            "--methods",
            "opd",
            "--steps",
            "2",
            "--eval-every",
            "1",
            "--output-dir",
            str(out),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--scale",
            "0.005",  # toy sizes
        ]
    )
    assert code == 0
    table = (out / "results.md").read_text()
    assert table.startswith("command: `trl-opd demo --methods opd") and "| opd |" in table and "student start" in table
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"
    card = (out / "runs" / "opd" / "README.md").read_text()
    assert not re.search(r"\{\{\s*\w+\s*\}\}", card), "a template placeholder is left"
    assert "arXiv" in card and "synthetic arithmetic" in card and "learning_rate" in card
    assert (out / "runs" / "opd" / "model.safetensors").is_file()
    # the pre-trained pair is cached: a second run trains neither again
    cached = sorted(p.name for p in (tmp_path / "cache").rglob("config.json"))
    assert len(cached) == 2


def test_demo_runs_the_world_it_is_given():
    from trl_opd.lab.run import LabError

    assert demo.parse_args([]).world == "arith"
    assert demo.parse_args(["--world", "ambiguous", "--seed", "3"]).world == "ambiguous"
    with pytest.raises(LabError, match="unknown world"):
        demo.parse_args(["--world", "nope"])


def test_unknown_demo_method_is_an_error():
    from trl_opd.launch.methods import UnknownMethodError

    with pytest.raises(UnknownMethodError):
        demo.select_methods("opd,nope")


@pytest.mark.parametrize("method", ["grpo", "gkd"])
def test_trl_baselines_run_from_a_recipe(tmp_path, tiny_pair_dir, arithmetic_jsonl, method):
    recipe = {
        "method": method,
        "model_name_or_path": str(tiny_pair_dir / "student"),
        "dataset_name": str(arithmetic_jsonl),
        "prompt_column": "problem",
        "output_dir": str(tmp_path / "out"),
        "max_steps": 1,
        "report_to": "none",
        "per_device_train_batch_size": 4,
        "save_strategy": "no",
        "learning_rate": 1e-3,
        "logging_steps": 1,
    }
    if method == "grpo":
        recipe.update(num_generations=4, max_completion_length=8)
    else:
        recipe.update(teacher_model_name_or_path=str(tiny_pair_dir / "teacher"), max_new_tokens=8, lmbda=1.0)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    script_args, config, model_args = parse_recipe(str(path))
    trainer = build_trainer(script_args, config, model_args)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    logs = trainer.state.log_history[0]
    assert "loss" in logs
    if method == "grpo":  # an untrained student earns no reward: zero advantages, so only check the reward ran
        assert logs["reward"] == 0.0
    else:
        assert any(not (before[n] == p).all() for n, p in trainer.model.named_parameters())
