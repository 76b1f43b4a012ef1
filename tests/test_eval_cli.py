# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""`trl-opd eval` end to end: the real lighteval CLI on a tiny model over the local 30-problem files, and bad input."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from trl_opd.eval.runner import load_generations, main


SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DATA_FILES = ("aime24.jsonl", "aime25.jsonl", "hmmt_feb_2025.jsonl")
# Tiny and fast: 2 problems per task, 2 samples each, 16 new tokens. The tiny tokenizer spends about one token per
# two characters, so the longest problems need a context of 2048 (the model's RoPE handles it).
FAST = ["--num-samples", "2", "--max-new-tokens", "16", "--max-samples", "2", "--device", "cpu", "--dtype", "float32"]
FAST += ["--batch-size", "8", "--max-length", "2048"]

needs_shared_data = pytest.mark.skipif(
    not all((SHARED_DATA / name).is_file() for name in DATA_FILES),
    reason=f"the shared eval data ({', '.join(DATA_FILES)}) is not in {SHARED_DATA}",
)


def _save_tiny_student(path: Path, seed: int) -> None:
    from trl_opd.testing.tiny import build_tiny_model, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    build_tiny_model(tokenizer, "student", seed=seed).save_pretrained(path)
    tokenizer.save_pretrained(path)


@pytest.fixture(scope="session")
def tiny_student(tmp_path_factory) -> Path:
    """A saved tiny Qwen3 student (read-only for tests: copy it before changing it)."""
    path = tmp_path_factory.mktemp("tiny") / "student"
    _save_tiny_student(path, seed=0)
    return path


def _eval_command() -> list[str]:
    """`trl-opd eval` once the CLI exists; until then the runner module behind it."""
    script = Path(sys.executable).with_name("trl-opd")
    if script.is_file() and importlib.util.find_spec("trl_opd.cli") is not None:
        return [str(script), "eval"]
    return [sys.executable, "-m", "trl_opd.eval.runner"]


def run_eval(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([*_eval_command(), *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def first_eval(tiny_student, tmp_path_factory):
    """One `trl-opd eval` of all three tasks on a private copy of the tiny student."""
    root = tmp_path_factory.mktemp("eval")
    model = root / "student"
    shutil.copytree(tiny_student, model)
    before = sorted(p.name for p in model.iterdir())
    out = root / "results"
    proc = run_eval("--model", str(model), "--tasks", "aime24,aime25,hmmt25", "--data-dir", str(SHARED_DATA),
                    "--output-dir", str(out), *FAST)  # fmt: skip
    return model, out, before, proc


@needs_shared_data
def test_eval_prints_table_for_all_three_tasks(first_eval):
    model, out, before, proc = first_eval
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = [line for line in proc.stdout.splitlines() if line.startswith("|")]
    assert table[0] == "| task | Average@k | pass@k | mean length | k |"
    assert [row.split("|")[1].strip() for row in table[2:]] == ["aime24", "aime25", "hmmt25"]
    assert all(row.split("|")[5].strip() == "2" for row in table[2:])
    result = json.loads((out / "eval_results.json").read_text())
    assert (out / "eval_results.md").read_text().startswith("| task |")
    assert result["sampling"] == {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "max_new_tokens": 16}
    for row in result["results"]:
        assert row["k"] == 2 and row["num_problems"] == 2
        assert 0.0 <= row["average_at_k"] <= row["pass_at_k"] <= 1.0
        assert 1.0 <= row["mean_length"] <= 16.0
    # lighteval's generation cache did not land inside the model folder
    assert sorted(p.name for p in model.iterdir()) == before


@needs_shared_data
def test_changed_checkpoint_at_same_path_gets_fresh_generations(first_eval):
    model, out, _, proc = first_eval
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = json.loads((out / "eval_results.json").read_text())
    old = load_generations(first["lighteval_run_dir"], "opd_aime24")
    args = [
        "--model",
        str(model),
        "--tasks",
        "aime24",
        "--data-dir",
        str(SHARED_DATA),
        "--output-dir",
        str(out),
        *FAST,
    ]

    # Same weights: lighteval's cache is live and answers (so a stale cache would be visible here) ...
    again = run_eval(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    same = json.loads((out / "eval_results.json").read_text())
    assert same["model_fingerprint"] == first["model_fingerprint"]
    assert load_generations(same["lighteval_run_dir"], "opd_aime24") == old

    # ... new weights at the same path: fresh generations, not the cached answers of the old checkpoint.
    _save_tiny_student(model, seed=1)
    changed = run_eval(*args)
    assert changed.returncode == 0, changed.stderr[-3000:]
    fresh = json.loads((out / "eval_results.json").read_text())
    assert fresh["model_fingerprint"] != first["model_fingerprint"]
    new = load_generations(fresh["lighteval_run_dir"], "opd_aime24")
    assert len(new) == len(old) == 2 and new != old


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--tasks", "aime24,lighteval|aime24|0|0"],
            "unknown task 'lighteval|aime24|0|0'; valid tasks: aime24, aime25, hmmt25",
        ),
        (["--tasks", "gsm8k"], "valid tasks: aime24, aime25, hmmt25"),
        (["--num-samples", "0"], "--num-samples must be >= 1"),
        (["--num-samples", "-3"], "--num-samples must be >= 1"),
        (["--num-samples", "many"], "invalid int value"),
        (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
    ],
)
def test_bad_arguments_give_one_error_line(tiny_student, capsys, argv, message):
    assert main(["--model", str(tiny_student), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err


def test_bad_data_dir_gives_one_error_line(tiny_student, tmp_path, capsys):
    assert main(["--model", str(tiny_student), "--data-dir", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["--model", str(tiny_student), "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no file for aime24; expected one of: aime24.jsonl" in err
    (tmp_path / "aime24.jsonl").write_text(json.dumps({"question": "1+1?", "answer": "2"}) + "\n")
    assert main(["--model", str(tiny_student), "--data-dir", str(tmp_path), "--tasks", "aime24"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "aime24.jsonl:1: missing column(s) problem" in err


def test_missing_model_path_gives_one_error_line_without_traceback(tmp_path, capsys, monkeypatch):
    proc = run_eval("--model", str(tmp_path / "no-such-model"), "--tasks", "aime24")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: model path '{tmp_path / 'no-such-model'}' does not exist"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["--model", "someone/not-downloaded-model", "--tasks", "aime24"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: model path 'someone/not-downloaded-model' does not exist")
