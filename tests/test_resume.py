# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""Resume through the CLI (MOTAB: its boundary is method state): the newest complete checkpoint, a state file lost
or truncated by a kill between saves, a checkpoint of another method, gradient accumulation 2 with `save_total_limit`,
and SIGTERM mid-run then an exact resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from trl_opd.checkpoints import STATE_FILE
from trl_opd.cli import main


TRL_OPD = Path(sys.executable).parent / "trl-opd"


def _recipe(tmp_path: Path, pair: Path, data: Path, out: Path, name: str = "recipe.yaml", **overrides) -> Path:
    values = {
        "method": "motab",
        "model_name_or_path": str(pair / "student"),
        "teacher_model_name_or_path": str(pair / "teacher"),
        "dataset_name": str(data),
        "prompt_column": "problem",
        "output_dir": str(out),
        "max_steps": 3,
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 2,
        "max_completion_length": 8,
        "max_segment_tokens": 4,
        "boundary_warmup_steps": 1,
        "boundary_window": 12,
        "boundary_quantile": 0.5,
        "learning_rate": 1e-3,
        "report_to": "none",
        "save_strategy": "steps",
        "save_steps": 1,
        "save_total_limit": 2,
        "seed": 0,
        "data_seed": 0,
        "logging_steps": 1,
        "disable_tqdm": True,
    }
    values.update(overrides)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(values))
    return path


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, tiny_pair_dir, arithmetic_jsonl):
    """3 optimizer steps, accumulation 2, a checkpoint every step, at most 2 kept."""
    root = tmp_path_factory.mktemp("full")
    assert main(["train", "--config", str(_recipe(root, tiny_pair_dir, arithmetic_jsonl, root / "out"))]) == 0
    return root / "out"


def test_checkpoints_hold_the_state_and_the_limit_holds(full_run):
    assert sorted(p.name for p in full_run.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    for folder in full_run.glob("checkpoint-*"):
        payload = torch.load(folder / STATE_FILE, weights_only=True)
        assert payload["method"] == "MOTAB" and payload["state"]["motab_boundary"]["num_updates"] > 0


def _copy_run(full_run: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(full_run, dest)
    (dest / "model.safetensors").unlink()
    return dest


def test_resume_true_skips_a_checkpoint_that_lost_its_state(
    full_run, tmp_path, tiny_pair_dir, arithmetic_jsonl, capsys
):
    out = _copy_run(full_run, tmp_path / "out")
    (out / "checkpoint-3" / STATE_FILE).unlink()  # killed between the Trainer's save and ours (old order)
    partial = out / "checkpoint-4"
    partial.mkdir()
    (partial / "config.json").write_text("{}")  # killed while the Trainer was saving
    recipe = _recipe(tmp_path, tiny_pair_dir, arithmetic_jsonl, out)
    code = main(["train", "--config", str(recipe), "--resume_from_checkpoint", str(out / "checkpoint-3")])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().splitlines()[-1].startswith(f"error: Checkpoint {out / 'checkpoint-3'} has no")

    assert main(["train", "--config", str(recipe), "--resume_from_checkpoint", "true"]) == 0
    assert _same(_weights(out), _weights(full_run))  # resumed from checkpoint-2: the same step 3


def test_truncated_or_foreign_state_is_refused(full_run, tmp_path, tiny_pair_dir, arithmetic_jsonl, capsys):
    out = _copy_run(full_run, tmp_path / "out")
    state = out / "checkpoint-2" / STATE_FILE
    state.write_bytes(state.read_bytes()[:200])
    recipe = _recipe(tmp_path, tiny_pair_dir, arithmetic_jsonl, out)
    code = main(["train", "--config", str(recipe), "--resume_from_checkpoint", str(out / "checkpoint-2")])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and line.startswith(f"error: Cannot read {state}") and "truncated" in line

    other = _recipe(tmp_path, tiny_pair_dir, arithmetic_jsonl, out, "opd.yaml", method="opd")
    yaml_values = yaml.safe_load(other.read_text())
    for key in ("max_segment_tokens", "boundary_warmup_steps", "boundary_window", "boundary_quantile"):
        yaml_values.pop(key)
    other.write_text(yaml.safe_dump(yaml_values))
    code = main(["train", "--config", str(other), "--resume_from_checkpoint", str(out / "checkpoint-3")])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "was saved by method 'MOTAB', not 'OPD'" in line

    code = main(["train", "--config", str(recipe), "--boundary_window", "6", "--resume_from_checkpoint", "true"])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "boundary_window=12 (now 6)" in line

    code = main(
        [
            "train",
            "--config",
            str(recipe),
            "--resume_ignore_method_state",
            "true",
            "--resume_from_checkpoint",
            str(out / "checkpoint-2"),
        ]
    )
    assert code == 0


def test_sigterm_saves_and_the_resume_is_exact(tmp_path, tiny_pair_dir, arithmetic_jsonl):
    out = tmp_path / "out"
    recipe = _recipe(tmp_path, tiny_pair_dir, arithmetic_jsonl, out, save_strategy="no", lr_scheduler_type="constant")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [str(TRL_OPD), "train", "--config", str(recipe), "--max_steps", "1000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**env, "HF_HUB_OFFLINE": "1"},
    )
    lines = []
    for line in process.stdout:  # the Trainer prints each step's logs: training is under way
        lines.append(line)
        if "'loss'" in line:
            process.send_signal(signal.SIGTERM)
            break
    rest, _ = process.communicate(timeout=300)
    output = "".join(lines) + rest
    assert process.returncode == 0, output
    saved = [line for line in output.splitlines() if line.startswith("stopped on SIGTERM: saved ")]
    assert len(saved) == 1, output
    checkpoint = Path(saved[0].split("saved ")[1].split(";")[0])
    assert (checkpoint / "trainer_state.json").is_file() and (checkpoint / STATE_FILE).is_file()
    assert not (out / "model.safetensors").exists()  # stopped, not finished
    step = int(checkpoint.name.split("-")[1])
    assert 1 <= step < 1000

    steps = ["--max_steps", str(step + 1)]
    assert main(["train", "--config", str(recipe), *steps, "--resume_from_checkpoint", "true"]) == 0
    reference = tmp_path / "reference"
    assert main(["train", "--config", str(recipe), *steps, "--output_dir", str(reference)]) == 0
    assert _same(_weights(out), _weights(reference))
