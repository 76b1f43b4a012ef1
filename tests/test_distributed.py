# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""`accelerate launch --num_processes 2` on CPU (gloo) gives the same loss normalisation as one process."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trl_opd.demo.task import make_dataset
from trl_opd.testing import build_tiny_model, build_tiny_tokenizer, fixed_generation_batch, tiny_training_kwargs
from trl_opd.trainers.opd_config import OPDConfig
from trl_opd.trainers.opd_trainer import OPDTrainer


def launch_on_two_cpu_processes(args: list[str]) -> subprocess.CompletedProcess:
    """`accelerate launch` of `args` on two processes: `--multi_gpu` is the torchrun launcher, and without a GPU the
    processes use gloo on the CPU (the CPU-safe configs set `use_cpu`)."""
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    cmd += ["--mixed_precision", "no", "--dynamo_backend", "no", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    out = tmp_path / "ddp.pt"
    result = launch_on_two_cpu_processes([str(Path(__file__).with_name("ddp_worker.py")), str(out)])
    assert result.returncode == 0, result.stderr[-3000:]
    ddp = torch.load(out)
    assert ddp["world"] == 2

    tokenizer = build_tiny_tokenizer()
    config = OPDConfig(**tiny_training_kwargs(tmp_path, beta=0.5))
    trainer = OPDTrainer(
        model=build_tiny_model(tokenizer, "student", seed=0),
        teacher_model=build_tiny_model(tokenizer, "teacher", seed=1),
        args=config,
        train_dataset=make_dataset(8),
        processing_class=tokenizer,
    )
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, fixed_generation_batch(tokenizer, batch=4))
    loss.backward()
    # each rank's loss is its share of the global mean, scaled up by the process count before DDP averages
    torch.testing.assert_close(ddp["loss"], loss.detach(), atol=1e-6, rtol=1e-5)
    for name, param in trainer.model.named_parameters():
        torch.testing.assert_close(ddp["grads"][name], param.grad, atol=1e-6, rtol=1e-4, msg=name)


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
    result = launch_on_two_cpu_processes(["-m", "trl_opd", "train", "--config", str(recipe)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "model.safetensors").is_file()
    card = (out / "README.md").read_text()
    assert "on-policy distillation" in card and str(recipe) in card
