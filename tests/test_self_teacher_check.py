# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""The self-teacher check at the start of ATESD / OPSD training (`self_teacher_check`).

The three scores (the teacher's mean log-prob per reference-answer token with no, half and the full reference) equal a
plain forward of the rendered texts; a reference that does not help (a random tiny model cannot copy) is one warning
line (`warn`, training goes on), a one-line error before any optimizer step (`error`), or never scored (`off`).
"""

from __future__ import annotations

import copy
import logging

import pytest
import torch

from trl_opd.data import privileged_prompt
from trl_opd.demo.task import make_dataset
from trl_opd.errors import UserError
from trl_opd.launch.methods import METHODS
from trl_opd.teacher import reference_helps, self_teacher_verdict
from trl_opd.testing import build_tiny_model, tiny_training_kwargs
from trl_opd.trainers.atesd_config import SELF_TEACHER_MARGIN, ATESDConfig
from trl_opd.trainers.atesd_trainer import ATESDTrainer, SelfTeacherCheckError, exposed_reference


SCORES = ("none", "partial", "full")
OPSD = METHODS["opsd"].config_overrides


def _trainer(tmp_path, tokenizer, model=None, **overrides) -> ATESDTrainer:
    model = model if model is not None else build_tiny_model(tokenizer, "student", seed=0)
    args = ATESDConfig(**tiny_training_kwargs(tmp_path, **overrides))
    return ATESDTrainer(
        model=model, args=args, train_dataset=make_dataset(8, seed=3), processing_class=copy.deepcopy(tokenizer)
    )


def _dense_solution_logp(model, tok, prompts, solutions) -> float:
    """Token-weighted mean log-prob of the reference solution after each rendered prompt, one unpadded forward each."""
    total, count = 0.0, 0
    with torch.no_grad():
        for prompt, solution in zip(prompts, solutions, strict=True):
            text = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
            context = tok(text, add_special_tokens=False)["input_ids"]
            target = tok(solution, add_special_tokens=False)["input_ids"]
            logits = model(torch.tensor([context + target])).logits[0, len(context) - 1 : -1]
            total += logits.log_softmax(-1).gather(-1, torch.tensor(target)[:, None]).sum().item()
            count += len(target)
    return total / count


def _check_records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith("Self-teacher check")]


def test_scores_equal_a_plain_forward_of_the_rendered_texts(tmp_path, tiny_tokenizer):
    model = build_tiny_model(tiny_tokenizer, "student", seed=0)
    initial = copy.deepcopy(model).eval()
    trainer = _trainer(tmp_path, tiny_tokenizer, model, self_teacher_check_rows=3)
    with torch.no_grad():  # the student moves: the check scores the frozen initial model
        for p in trainer.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    scores = trainer.self_teacher_scores()
    rows = [trainer.train_dataset[i] for i in range(3)]
    tok, solutions = trainer.processing_class, [row["solution"] for row in rows]
    prompts = {
        "none": [row["prompt"] for row in rows],
        "partial": [privileged_prompt(row["prompt"], exposed_reference(row["solution"], 0.5)) for row in rows],
        "full": [privileged_prompt(row["prompt"], row["solution"]) for row in rows],
    }
    assert prompts["partial"] != prompts["full"]
    for name in SCORES:
        assert scores[name] == pytest.approx(_dense_solution_logp(initial, tok, prompts[name], solutions), rel=1e-5)


@pytest.mark.parametrize(
    ("full", "passes"), [(-3.0 + SELF_TEACHER_MARGIN, False), (-3.0 + SELF_TEACHER_MARGIN + 1e-3, True)]
)
def test_full_reference_must_beat_none_by_the_margin(tmp_path, tiny_tokenizer, caplog, full, passes):
    trainer = _trainer(tmp_path, tiny_tokenizer, self_teacher_check="error")
    trainer.self_teacher_scores = lambda: {"none": -3.0, "partial": -2.0, "full": full}
    if passes:
        trainer.check_self_teacher()
    else:
        with pytest.raises(SelfTeacherCheckError, match="does not help the self-teacher"):
            trainer.check_self_teacher()
    trainer.args.self_teacher_check = "warn"
    with caplog.at_level(logging.WARNING, logger="trl_opd"):
        trainer.check_self_teacher()
    assert len(_check_records(caplog)) == (0 if passes else 1)
    assert trainer._metrics["train"]["atesd/self_teacher_logp_full"] == [full, full]


@pytest.mark.parametrize(
    ("none", "full", "helps"),
    [
        (-3.0, -2.95, False),  # neither 0.1 nats nor half the NLL
        (-3.0, -2.85, True),  # 0.15 nats
        (-0.10, -0.027, True),  # the warm `privileged` student: 0.073 nats, but 73 % of its NLL
        (-0.10, -0.06, False),  # 40 % of the NLL, 0.04 nats
        (-0.75, -2.28, False),  # `arith`: the reference makes the teacher worse
        (0.0, 0.0, False),  # nothing left to remove
    ],
)
def test_reference_helps_by_a_margin_or_by_half_the_nll(none, full, helps):
    assert reference_helps(none, full) is helps
    assert (self_teacher_verdict({"none": none, "full": full}, 8) is None) is helps


def test_error_mode_stops_in_one_line_before_any_step(tmp_path, tiny_tokenizer):
    trainer = _trainer(tmp_path, tiny_tokenizer, self_teacher_check="error")
    with pytest.raises(SelfTeacherCheckError) as caught:
        trainer.train()
    assert isinstance(caught.value, UserError)
    message = str(caught.value)
    assert "\n" not in message and "self-distillation trains on noise" in message
    assert trainer.state.global_step == 0 and trainer.state.log_history == []


def test_warn_mode_warns_in_one_line_and_trains_opsd(tmp_path, tiny_tokenizer, caplog):
    trainer = _trainer(tmp_path, tiny_tokenizer, **OPSD)
    with caplog.at_level(logging.WARNING, logger="trl_opd"):
        trainer.train()
    records = _check_records(caplog)
    assert len(records) == 1 and "\n" not in records[0].getMessage()
    assert trainer.state.global_step == 2
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert {f"atesd/self_teacher_logp_{name}" for name in SCORES} <= set(logs[0])
    assert not any(key.startswith("atesd/self_teacher") for key in logs[1])


def test_off_mode_scores_nothing(tmp_path, tiny_tokenizer, caplog):
    trainer = _trainer(tmp_path, tiny_tokenizer, max_steps=1, self_teacher_check="off")

    def forbidden():
        raise AssertionError("self_teacher_check: off must not score")

    trainer.self_teacher_scores = forbidden
    with caplog.at_level(logging.WARNING, logger="trl_opd"):
        trainer.train()
    assert trainer.state.global_step == 1 and not _check_records(caplog)
    assert not any(key.startswith("atesd/self_teacher") for h in trainer.state.log_history for key in h)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"self_teacher_check": "maybe"}, "self_teacher_check must be one of"), ({"self_teacher_check_rows": 0}, ">= 1")],
)
def test_bad_config(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        ATESDConfig(**tiny_training_kwargs(tmp_path, **overrides))


def test_a_checkpoint_does_not_pin_the_check(tmp_path):
    """The check changes no trajectory: a run resumes with another setting."""
    from trl_opd.checkpoints import method_config

    config = method_config(ATESDConfig(**tiny_training_kwargs(tmp_path)))
    assert "alpha" in config and not {"self_teacher_check", "self_teacher_check_rows"} & set(config)
