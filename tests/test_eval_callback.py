# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""LightevalCallback's bookkeeping with a stand-in for the evaluation (the real run is in test_model_card.py)."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from transformers import TrainerControl, TrainerState

from trl_opd.eval import callback as callback_module
from trl_opd.eval.callback import LightevalCallback
from trl_opd.eval.process import EvalError


def fake_result(model_dir: str, step_hint: int = 0) -> dict:
    return {
        "model": model_dir,
        "num_samples": 2,
        "sampling": {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "max_new_tokens": 8},
        "backend": "transformers",
        "results": [
            {"task": "aime24", "title": "AIME 2024", "average_at_k": 0.5, "pass_at_k": 1.0, "mean_length": 7.0, "k": 2}
        ],
    }


@pytest.fixture
def calls(monkeypatch):
    seen = []

    def evaluate_model(model, **options):
        seen.append((Path(model), options))
        assert (Path(model) / "config.json").is_file(), "the callback must evaluate a saved model folder"
        return fake_result(model)

    monkeypatch.setattr(callback_module, "evaluate_model", evaluate_model)
    return seen


def _args(tmp_path):
    return SimpleNamespace(output_dir=str(tmp_path))


def _checkpoint(tmp_path, step: int) -> Path:
    path = tmp_path / f"checkpoint-{step}"
    path.mkdir()
    (path / "config.json").write_text("{}")
    return path


def test_on_save_evaluates_the_checkpoint_and_records_it(tmp_path, calls):
    cb = LightevalCallback(tasks=["aime24"], num_samples=2, data_dir="/data", max_new_tokens=8)
    state = TrainerState(global_step=3)
    _checkpoint(tmp_path, 3)
    cb.on_save(_args(tmp_path), state, TrainerControl())
    (model, options), = calls  # fmt: skip
    assert model == tmp_path / "checkpoint-3"
    assert options == {"output_dir": str(tmp_path / "eval" / "checkpoint-3"), "tasks": "aime24", "num_samples": 2,
                       "data_dir": "/data", "max_new_tokens": 8}  # fmt: skip
    assert state.log_history[-1] == {
        "step": 3, "eval/aime24/avg@k": 0.5, "eval/aime24/pass@k": 1.0, "eval/aime24/mean_length": 7.0,
        "eval/num_samples": 2,
    }  # fmt: skip
    latest = json.loads((tmp_path / "eval_results.json").read_text())
    assert latest["step"] == 3 and latest["checkpoint"] == "checkpoint-3"
    assert len(json.loads((tmp_path / "eval_history.json").read_text())) == 1


def test_on_train_end_reuses_the_final_checkpoint_or_saves_the_model(tmp_path, calls):
    cb = LightevalCallback(tasks="aime24", num_samples=2)
    _checkpoint(tmp_path, 2)
    cb.on_save(_args(tmp_path), TrainerState(global_step=2), TrainerControl())
    cb.on_train_end(_args(tmp_path), TrainerState(global_step=2), TrainerControl(), model=None)
    assert len(calls) == 1 and json.loads((tmp_path / "eval_results.json").read_text())["final"] is True

    class Saver:  # stands in for the model and the tokenizer
        def save_pretrained(self, path):
            Path(path).mkdir(parents=True, exist_ok=True)
            (Path(path) / "config.json").write_text("{}")

    state = TrainerState(global_step=5)
    cb.on_train_end(_args(tmp_path), state, TrainerControl(), model=Saver(), processing_class=Saver())
    assert len(calls) == 2 and calls[1][0] == tmp_path / "eval" / "final-model"
    assert not (tmp_path / "eval" / "final-model").exists()  # the temporary copy is removed
    latest = json.loads((tmp_path / "eval_results.json").read_text())
    assert latest["step"] == 5 and latest["final"] is True and state.log_history[-1]["step"] == 5


def test_failures_are_logged_not_raised_unless_asked(tmp_path, monkeypatch):
    def failing(model, **options):
        raise EvalError("lighteval failed (exit 1): boom")

    monkeypatch.setattr(callback_module, "evaluate_model", failing)
    _checkpoint(tmp_path, 1)
    state = TrainerState(global_step=1)
    LightevalCallback().on_save(_args(tmp_path), state, TrainerControl())
    assert state.log_history == [] and not (tmp_path / "eval_results.json").exists()
    with pytest.raises(EvalError):
        LightevalCallback(raise_on_error=True).on_save(_args(tmp_path), state, TrainerControl())


def test_skips_missing_checkpoints_and_other_processes(tmp_path, calls):
    cb = LightevalCallback()
    cb.on_save(_args(tmp_path), TrainerState(global_step=7), TrainerControl())  # nothing saved at step 7
    _checkpoint(tmp_path, 8)
    cb.on_save(_args(tmp_path), TrainerState(global_step=8, is_world_process_zero=False), TrainerControl())
    assert calls == []
    with pytest.raises(ValueError):
        LightevalCallback(num_samples=0)
