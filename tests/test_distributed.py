# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""Every method on two CPU processes (`accelerate launch`, gloo): each run finishes, and the loss and gradients of a
fixed global batch split over the processes equal one process's on the whole batch. One launch per sharding mode runs
every method of it (the worker and the launch helper: `multiprocess_worker.py`):

- DDP: every method, `compute_loss` on each rank's share, gradients averaged as DDP does, then one training step.
- FSDP2 (`accelerate_configs/fsdp2_cpu.yaml`: `recipes/accelerate_configs/fsdp2.yaml` on 2 CPU processes) and
  ZeRO-3 (`zero3_cpu.yaml`, DeepSpeed's CPU accelerator over gloo; skipped when `deepspeed` is not installed): one SGD
  step on the fixed batch through the sharded model (parameters after it equal one process's), then one step on
  sampled rollouts. MOTAB's ranks backtrack differently there; `motab:nogather` keeps the teacher sharded during the
  rollout, so every forward all-gathers its layers and a rank out of step would hang (the launch's time limit).
"""

import importlib.util
from pathlib import Path

import pytest
import torch
from multiprocess_worker import METHODS, VARIANTS, build_trainer, fixed_step, launch_two_processes, loss_and_grads


WORKER = str(Path(__file__).with_name("multiprocess_worker.py"))
CONFIGS = Path(__file__).with_name("accelerate_configs")
DDP_METHODS = (*METHODS, "egrsd:trust")
FSDP2_METHODS = ("opd", "tropd", "motab", "opd:ema")
ZERO3_METHODS = ("opd", "tropd", "motab", "motab:nogather", "opd:ema")
HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None


def _run_worker(out: Path, mode: str, methods, config_file: str | None = None) -> dict:
    result = launch_two_processes([WORKER, str(out), mode, *methods], config_file=config_file)
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(out)


def _assert_matches_one_process(result: dict, entry: str, tmp_path) -> None:
    assert result["world"] == 2 and result["steps"] == 1
    method, _, variant = entry.partition(":")
    trainer = build_trainer(method, str(tmp_path / method), world=1, **VARIANTS[variant])
    loss, grads = loss_and_grads(trainer, method, rank=0, world=1)
    # each rank's loss is its share of the global objective; DDP averages the gradients over processes
    torch.testing.assert_close(result["loss"], loss, atol=1e-6, rtol=1e-5)
    assert grads.keys() == result["grads"].keys() and any(g.abs().sum() > 0 for g in grads.values())
    for name, grad in grads.items():
        torch.testing.assert_close(result["grads"][name], grad, atol=1e-6, rtol=1e-4, msg=f"{method}: {name}")


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory) -> dict:
    return _run_worker(tmp_path_factory.mktemp("ddp") / "out.pt", "split", DDP_METHODS)


@pytest.mark.slow
@pytest.mark.parametrize("method", DDP_METHODS)
def test_two_processes_match_one(ddp_results, method, tmp_path):
    _assert_matches_one_process(ddp_results[method], method, tmp_path)


@pytest.mark.slow
def test_atesd_ranks_that_repair_differently_finish(ddp_results):
    """Rank 0 repairs every row (its teacher generates), rank 1 none: the step finishes on both (the recount of loss
    tokens after the repair is a collective both make)."""
    result = ddp_results["atesd"]
    assert result["steps"] == 1
    rank0, rank1 = result["repaired"]
    assert rank0 == [1.0] and rank1 == [0.0]


def test_motab_ranks_that_backtrack_differently_finish(ddp_results):
    """Rank 0's boundary is -inf (both rows use their 2 backtracks), rank 1's +inf: the rollouts' forward counts
    differ, the run still finishes (the launch's time limit turns a hang into a failure)."""
    assert ddp_results["motab"]["backtracks"] == [4, 0]


def _assert_step_matches_one_process(result: dict, name: str, backend: str, tmp_path) -> None:
    assert result["world"] == 2 and result["steps"] == 2 and result["backend"] == backend
    if name == "tropd":  # step 2: the teacher repaired every row on rank 0 and none on rank 1, and both finished
        assert result["repaired"] == [[1.0], [0.0]]
    method, _, variant = name.partition(":")
    ref = fixed_step(method, str(tmp_path / method), world=1, **VARIANTS[variant])
    torch.testing.assert_close(result["loss"], ref["loss"], atol=1e-6, rtol=1e-5)
    assert result["params"].keys() == ref["params"].keys()
    for param, value in ref["params"].items():  # θ_0 − clip(∇) after one SGD step at learning rate 1
        torch.testing.assert_close(result["params"][param], value, atol=1e-6, rtol=1e-5, msg=f"{name}: {param}")
    if variant == "ema":  # the EMA teacher moved, as in one process: 0.5·θ_0 + 0.5·θ_1
        initial = build_trainer(method, str(tmp_path / "init"), world=1, **VARIANTS[variant]).model.state_dict()
        assert ref["teacher"].keys() == result["teacher"].keys() == ref["params"].keys()
        for param, value in ref["teacher"].items():
            expected = 0.5 * initial[param] + 0.5 * ref["params"][param]
            torch.testing.assert_close(value, expected, atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(result["teacher"][param], value, atol=1e-6, rtol=1e-5, msg=f"{name}: {param}")


@pytest.fixture(scope="module")
def fsdp2_results(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("fsdp2") / "out.pt"
    return _run_worker(out, "step", FSDP2_METHODS, config_file=str(CONFIGS / "fsdp2_cpu.yaml"))


@pytest.mark.slow
@pytest.mark.parametrize("name", FSDP2_METHODS)
def test_fsdp2_two_processes_match_one(fsdp2_results, name, tmp_path):
    _assert_step_matches_one_process(fsdp2_results[name], name, "fsdp2", tmp_path)


@pytest.fixture(scope="module")
def zero3_results(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("zero3") / "out.pt"
    return _run_worker(out, "step", ZERO3_METHODS, config_file=str(CONFIGS / "zero3_cpu.yaml"))


@pytest.mark.slow
@pytest.mark.skipif(
    not HAS_DEEPSPEED, reason="deepspeed is not installed (pip install deepspeed: its CPU accelerator)"
)
@pytest.mark.parametrize("name", ZERO3_METHODS)
def test_zero3_two_processes_match_one(zero3_results, name, tmp_path):
    _assert_step_matches_one_process(zero3_results[name], name, "zero3", tmp_path)


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
