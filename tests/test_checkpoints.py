# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""The method-state file: plain contents, weights-only loading (a crafted pickle runs nothing), method and
configuration checks, the newest complete checkpoint."""

from __future__ import annotations

import os
import pickle
from collections import deque
from pathlib import Path

import numpy as np
import pytest
import torch

from trl_opd.checkpoints import (
    STATE_FILE,
    load_method_state,
    method_config,
    newest_complete_checkpoint,
    resolve_resume,
    save_method_state,
    to_plain,
)
from trl_opd.controllers.boundary import AdaptiveBoundary
from trl_opd.errors import CheckpointError, UserError
from trl_opd.trainers.motab_config import MOTABConfig


class _Exploit:
    marker: str = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _checkpoint(root: Path, step: int, *, trainer_state: bool = True, state: dict | None = None) -> Path:
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    if state is not None:
        save_method_state(folder, "MOTAB", {"boundary_window": "12"}, state)
    if trainer_state:
        (folder / "trainer_state.json").write_text("{}")
    return folder


def test_state_is_tensors_and_plain_containers_and_loads_weights_only(tmp_path):
    boundary = AdaptiveBoundary(quantile=0.5, window=4, warmup_steps=0)
    boundary.update([0.1, -0.2, float("nan")], num_backtracks=2)
    state = {
        "motab_boundary": boundary.state_dict(),
        "array": np.arange(3.0),
        "scalar": np.float32(1.5),
        "buffer": deque([1, 2]),
        "betas": (0.9, 0.999),
        "tensor": torch.ones(2),
    }
    save_method_state(tmp_path, "MOTAB", {"boundary_window": "4"}, state)
    loaded = load_method_state(tmp_path, "MOTAB", {"boundary_window": "4"}, required=True)
    assert torch.equal(loaded["array"], torch.arange(3.0, dtype=torch.float64))
    assert loaded["scalar"] == 1.5 and loaded["buffer"] == [1, 2] and loaded["betas"] == (0.9, 0.999)
    assert loaded["motab_boundary"]["scores"] == boundary.state_dict()["scores"]
    with pytest.raises(TypeError, match="method state must be tensors"):
        to_plain({"bad": object()})


def test_crafted_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    _Exploit.marker = str(marker)
    folder = tmp_path / "checkpoint-2"
    folder.mkdir()
    (folder / STATE_FILE).write_bytes(pickle.dumps({"state": _Exploit()}))
    with pytest.raises(CheckpointError, match=f"Cannot read {folder / STATE_FILE}") as info:
        load_method_state(folder, "MOTAB", {}, required=True)
    assert not marker.exists()
    assert isinstance(info.value, UserError) and "\n" not in str(info.value)


def test_missing_truncated_foreign_and_reconfigured_state_are_refused(tmp_path):
    folder = _checkpoint(tmp_path, 2, state={"motab_boundary": {"scores": [1.0]}})
    config = {"boundary_window": "12"}
    assert load_method_state(folder, "MOTAB", config, required=True) == {"motab_boundary": {"scores": [1.0]}}
    with pytest.raises(CheckpointError, match="saved by method 'MOTAB', not 'ATESD'"):
        load_method_state(folder, "ATESD", config, required=True)
    with pytest.raises(CheckpointError, match=r"boundary_window='12' \(now '32'\)|boundary_window=12 \(now 32\)"):
        load_method_state(folder, "MOTAB", {"boundary_window": "32"}, required=True)
    data = (folder / STATE_FILE).read_bytes()
    (folder / STATE_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_method_state(folder, "MOTAB", config, required=True)
    assert load_method_state(folder, "MOTAB", config, required=True, ignore=True) is None
    (folder / STATE_FILE).unlink()
    with pytest.raises(CheckpointError, match=f"Checkpoint {folder} has no {STATE_FILE}"):
        load_method_state(folder, "MOTAB", config, required=True)
    assert load_method_state(folder, "OPD", {}, required=False) is None


def test_method_config_is_our_fields_only(tmp_path):
    config = method_config(MOTABConfig(output_dir=str(tmp_path), boundary_window=7))
    assert config["boundary_window"] == "7" and "divergence" in config
    assert "learning_rate" not in config and "resume_ignore_method_state" not in config


def test_newest_complete_checkpoint_skips_partial_ones(tmp_path):
    _checkpoint(tmp_path, 2, state={})
    _checkpoint(tmp_path, 4, state={})
    _checkpoint(tmp_path, 6, state={}, trainer_state=False)  # killed in the Trainer's save
    _checkpoint(tmp_path, 8, state=None)  # the state file is missing
    assert newest_complete_checkpoint(tmp_path, needs_state=True).name == "checkpoint-4"
    assert newest_complete_checkpoint(tmp_path, needs_state=False).name == "checkpoint-8"
    assert resolve_resume("true", tmp_path, True).endswith("checkpoint-4")
    assert resolve_resume(True, tmp_path, True).endswith("checkpoint-4")
    assert resolve_resume("false", tmp_path, True) is None and resolve_resume(None, tmp_path, True) is None
    with pytest.raises(CheckpointError, match="incomplete"):
        resolve_resume(str(tmp_path / "checkpoint-6"), tmp_path, True)
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        resolve_resume(str(tmp_path / "checkpoint-9"), tmp_path, True)
    with pytest.raises(CheckpointError, match="holds no complete checkpoint"):
        resolve_resume(True, tmp_path / "empty", True)
