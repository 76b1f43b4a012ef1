# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""`max_prompt_length`: long student prompts are cut from the left with one warning that counts them (or refused);
teacher prompts are never cut."""

from __future__ import annotations

import logging

import pytest

from trl_opd import EGRSDConfig, EGRSDTrainer, OPDConfig, OPDTrainer
from trl_opd.errors import ConfigValueError
from trl_opd.testing import build_tiny_model, tiny_training_kwargs
from trl_opd.trainers.prompts import truncate_left


def test_truncate_left_keeps_the_end():
    ids, cut = truncate_left([[1, 2, 3, 4, 5], [6, 7], [8, 9, 10]], 3)
    assert ids == [[3, 4, 5], [6, 7], [8, 9, 10]] and cut == 1


def _lengths(trainer, dataset):
    ids, *_ = trainer._tokenize_full_prompts(dataset[:]["prompt"])
    return [len(p) for p in ids]


@pytest.fixture
def uneven_prompts(arithmetic_dataset):
    """The task's rows with prompts of four different lengths."""

    def lengthen(row, i):
        message = dict(row["prompt"][-1], content=row["prompt"][-1]["content"] + " Think." * (i % 4))
        return {"prompt": [*row["prompt"][:-1], message]}

    return arithmetic_dataset.map(lengthen, with_indices=True)


def test_long_prompts_are_cut_with_one_counting_warning(tmp_path, tiny_tokenizer, uneven_prompts, caplog):
    arithmetic_dataset = uneven_prompts
    probe = OPDTrainer(
        model=build_tiny_model(tiny_tokenizer, "student", seed=0),
        teacher_model=build_tiny_model(tiny_tokenizer, "teacher", seed=1),
        args=OPDConfig(**tiny_training_kwargs(tmp_path / "probe")),
        train_dataset=arithmetic_dataset,
        processing_class=tiny_tokenizer,
    )
    lengths = _lengths(probe, arithmetic_dataset)
    limit = sorted(lengths)[len(lengths) // 2]
    expected = sum(n > limit for n in lengths)
    assert 0 < expected < len(lengths)
    with caplog.at_level(logging.WARNING, logger="trl_opd"):
        trainer = OPDTrainer(
            model=build_tiny_model(tiny_tokenizer, "student", seed=0),
            teacher_model=build_tiny_model(tiny_tokenizer, "teacher", seed=1),
            args=OPDConfig(**tiny_training_kwargs(tmp_path / "cut", max_prompt_length=limit), privileged_context=True),
            train_dataset=arithmetic_dataset,
            processing_class=tiny_tokenizer,
        )
    warnings = [r.getMessage() for r in caplog.records if "max_prompt_length" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith(f"{expected} of {len(lengths)} prompts are longer")
    rows = [arithmetic_dataset[i] for i in range(len(lengths))]
    full, *_ = trainer._tokenize_full_prompts([r["prompt"] for r in rows])
    cut, *_ = trainer._tokenize_prompts([r["prompt"] for r in rows])
    assert all(c == f[-limit:] for c, f in zip(cut, full))  # the end, with the generation header, is kept
    teacher = trainer._tokenize_teacher_prompts([trainer.teacher_prompt(r) for r in rows])
    assert int(teacher["teacher_prompt_mask"].sum(-1).max()) > limit  # teacher prompts are never cut


def test_prompt_truncation_error_refuses(tmp_path, tiny_tokenizer, arithmetic_dataset):
    with pytest.raises(ConfigValueError, match=r"16 of 16 prompts are longer than max_prompt_length \(4 tokens"):
        EGRSDTrainer(
            model=build_tiny_model(tiny_tokenizer, "student", seed=0),
            args=EGRSDConfig(
                **tiny_training_kwargs(tmp_path, num_generations=2), max_prompt_length=4, prompt_truncation="error"
            ),
            train_dataset=arithmetic_dataset,
            processing_class=tiny_tokenizer,
        )


@pytest.mark.parametrize("value", [0, -3])
def test_bad_limit_is_a_config_error(tmp_path, value):
    with pytest.raises(ValueError, match="max_prompt_length"):
        OPDConfig(**tiny_training_kwargs(tmp_path), max_prompt_length=value)
