# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""Every method on two CPU processes (`accelerate launch`, gloo): each run finishes, and the loss and gradients of a
fixed global batch split over the processes equal one process's on the whole batch. One launch runs every method
(the worker and the launch helper: `multiprocess_worker.py`)."""

from pathlib import Path

import pytest
import torch
from multiprocess_worker import METHODS, build_trainer, launch_two_processes, loss_and_grads


WORKER = str(Path(__file__).with_name("multiprocess_worker.py"))


def _run_worker(out: Path, methods, config_file: str | None = None) -> dict:
    result = launch_two_processes([WORKER, str(out), *methods], config_file=config_file)
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(out)


def _assert_matches_one_process(result: dict, method: str, tmp_path) -> None:
    assert result["world"] == 2 and result["steps"] == 1
    trainer = build_trainer(method, str(tmp_path / method), world=1)
    loss, grads = loss_and_grads(trainer, method, rank=0, world=1)
    # each rank's loss is its share of the global objective; DDP averages the gradients over processes
    torch.testing.assert_close(result["loss"], loss, atol=1e-6, rtol=1e-5)
    assert grads.keys() == result["grads"].keys() and any(g.abs().sum() > 0 for g in grads.values())
    for name, grad in grads.items():
        torch.testing.assert_close(result["grads"][name], grad, atol=1e-6, rtol=1e-4, msg=f"{method}: {name}")


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory) -> dict:
    return _run_worker(tmp_path_factory.mktemp("ddp") / "out.pt", METHODS)


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_two_processes_match_one(ddp_results, method, tmp_path):
    _assert_matches_one_process(ddp_results[method], method, tmp_path)


@pytest.mark.slow
def test_motab_ranks_that_backtrack_differently_finish(ddp_results):
    """Rank 0's boundary is -inf (both rows use their 2 backtracks), rank 1's +inf: the rollouts' forward counts
    differ, the run still finishes (the launch's time limit turns a hang into a failure)."""
    assert ddp_results["motab"]["backtracks"] == [4, 0]


@pytest.mark.slow
def test_accelerate_launch_runs_the_cli_on_two_processes(tmp_path, tiny_pair_dir, arithmetic_jsonl):
    import yaml

    out = tmp_path / "out"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "method": "opd",
                "model_name_or_path": str(tiny_pair_dir / "student"),
                "teacher_model_name_or_path": str(tiny_pair_dir / "teacher"),
                "dataset_name": str(arithmetic_jsonl),
                "prompt_column": "problem",
                "output_dir": str(out),
                "max_steps": 2,
                "per_device_train_batch_size": 2,
                "max_completion_length": 8,
                "report_to": "none",
                "save_strategy": "no",
                "logging_steps": 1,
            }
        )
    )
    result = launch_two_processes(["-m", "trl_opd", "train", "--config", str(recipe)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "model.safetensors").is_file()
    card = (out / "README.md").read_text()
    assert "on-policy distillation" in card and str(recipe) in card
