# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""EGRSD's self-teacher check (`self_teacher_check`): the two scores equal a plain forward of the rendered texts; a
reference that does not help the teacher (a random tiny model cannot copy) makes `fallback` (the default) train
exactly as plain GRPO, `warn` keep the teacher's token weights, `error` stop before any step, `off` score nothing;
the RLSD baseline keeps its published behaviour (`warn`)."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from test_self_teacher_check import _dense_solution_logp  # the same plain forward of the rendered texts

from trl_opd.data import privileged_prompt
from trl_opd.demo.task import make_dataset
from trl_opd.errors import UserError
from trl_opd.launch.methods import METHODS
from trl_opd.teacher import SELF_TEACHER_MARGIN, SelfTeacherCheckError
from trl_opd.testing import build_tiny_model, tiny_training_kwargs
from trl_opd.trainers.egrsd_config import EGRSDConfig
from trl_opd.trainers.egrsd_trainer import EGRSDTrainer


G = 4


def distinct_characters(completions, **kwargs) -> list[float]:
    """A reward that varies between a random tiny model's rollouts (math accuracy is 0 on every one of them)."""
    return [float(len(set(str(c)))) for c in completions]


def _trainer(tmp_path, tokenizer, model=None, **overrides) -> EGRSDTrainer:
    base = {"num_generations": G, "per_device_train_batch_size": 2 * G, "max_completion_length": 8, "beta": 0.0}
    args = EGRSDConfig(**tiny_training_kwargs(tmp_path, **{**base, **overrides}))
    model = model if model is not None else build_tiny_model(tokenizer, "student", seed=0)
    return EGRSDTrainer(
        model=model,
        reward_funcs=[distinct_characters],
        args=args,
        train_dataset=make_dataset(8, seed=3),
        processing_class=copy.deepcopy(tokenizer),
    )


def _check_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("Self-teacher check")]


def test_scores_equal_a_plain_forward_of_the_rendered_texts(tmp_path, tiny_tokenizer):
    model = build_tiny_model(tiny_tokenizer, "student", seed=0)
    initial = copy.deepcopy(model).eval()
    trainer = _trainer(tmp_path, tiny_tokenizer, model, self_teacher_check_rows=3)
    with torch.no_grad():  # the student moves: the check scores the frozen initial weights
        for p in trainer.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    scores = trainer.self_teacher_scores()
    rows = [trainer.train_dataset[i] for i in range(3)]
    solutions = [row["solution"] for row in rows]
    prompts = {
        "none": [row["prompt"] for row in rows],
        "full": [privileged_prompt(row["prompt"], row["solution"]) for row in rows],
    }
    assert set(scores) == {"none", "full"}
    for name, texts in prompts.items():
        expected = _dense_solution_logp(initial, trainer.processing_class, texts, solutions)
        assert scores[name] == pytest.approx(expected, rel=1e-5), name


def _final_parameters(trainer) -> dict[str, torch.Tensor]:
    trainer.train()
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


def test_fallback_trains_exactly_as_plain_grpo(tmp_path, tiny_tokenizer, caplog):
    """A random tiny teacher cannot use the reference: the default warns in one line and the run is the GRPO
    reduction's (`g_min=1, epsilon_w=0`: no teacher), parameter for parameter; `warn` trains something else."""
    with caplog.at_level(logging.WARNING, logger="trl_opd"):
        fallback = _trainer(tmp_path / "fallback", tiny_tokenizer, max_steps=2, learning_rate=1e-2)
        after_fallback = _final_parameters(fallback)
    lines = _check_lines(caplog)
    assert len(lines) == 1 and "\n" not in lines[0] and "plain GRPO" in lines[0]
    assert not fallback.teacher_weights_on
    logged = {k for entry in fallback.state.log_history for k in entry}
    assert {"egrsd/self_teacher_logp_none", "egrsd/self_teacher_logp_full", "egrsd/teacher_off"} <= logged
    assert not any(k.startswith("egrsd/gate") for k in logged)
    grpo = _trainer(tmp_path / "grpo", tiny_tokenizer, max_steps=2, learning_rate=1e-2, g_min=1.0, epsilon_w=0.0)
    assert grpo.teacher_model is None
    after_grpo = _final_parameters(grpo)
    for name, value in after_grpo.items():
        assert torch.equal(after_fallback[name], value), name
    kept = _trainer(tmp_path / "warn", tiny_tokenizer, max_steps=2, learning_rate=1e-2, self_teacher_check="warn")
    after_warn = _final_parameters(kept)
    assert kept.teacher_weights_on
    assert any(not torch.equal(after_warn[n], v) for n, v in after_grpo.items())


@pytest.mark.parametrize("mode", ["fallback", "warn", "error"])
def test_a_reference_that_helps_keeps_the_teacher(tmp_path, tiny_tokenizer, caplog, mode):
    trainer = _trainer(tmp_path, tiny_tokenizer, self_teacher_check=mode)
    trainer.self_teacher_scores = lambda: {"none": -3.0, "full": -3.0 + SELF_TEACHER_MARGIN + 1e-3}
    with caplog.at_level(logging.WARNING, logger="trl_opd"):
        trainer.check_self_teacher()
    assert trainer.teacher_weights_on and not _check_lines(caplog)


def test_error_mode_stops_in_one_line_before_any_step(tmp_path, tiny_tokenizer):
    trainer = _trainer(tmp_path, tiny_tokenizer, self_teacher_check="error")
    with pytest.raises(SelfTeacherCheckError) as caught:
        trainer.train()
    assert isinstance(caught.value, UserError) and "\n" not in str(caught.value)
    assert trainer.state.global_step == 0 and trainer.state.log_history == []


def test_off_mode_and_the_grpo_setting_score_nothing(tmp_path, tiny_tokenizer):
    def forbidden():
        raise AssertionError("the check must not score here")

    for name, overrides in (("off", {"self_teacher_check": "off"}), ("grpo", {"g_min": 1.0, "epsilon_w": 0.0})):
        trainer = _trainer(tmp_path / name, tiny_tokenizer, max_steps=1, **overrides)
        trainer.self_teacher_scores = forbidden
        trainer.train()
        assert trainer.state.global_step == 1
        assert trainer.teacher_weights_on == (name == "off")


def test_rlsd_baseline_keeps_its_published_behaviour(tmp_path):
    assert METHODS["rlsd"].config_overrides["self_teacher_check"] == "warn"
    assert EGRSDConfig(output_dir=str(tmp_path)).self_teacher_check == "fallback"
    with pytest.raises(ValueError, match="self_teacher_check must be one of"):
        EGRSDConfig(output_dir=str(tmp_path), self_teacher_check="maybe")
    with pytest.raises(ValueError, match="self_teacher_check_rows"):
        EGRSDConfig(output_dir=str(tmp_path), self_teacher_check_rows=0)
