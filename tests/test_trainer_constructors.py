# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""Each trainer accepts what its TRL parent accepts, constructed the way TRL's own tests construct the parent.

`trl.DistillationTrainer`: model and teacher as path strings (the teacher loaded with `teacher_model_init_kwargs`), as
instances, with a PEFT config; an instance teacher *with* `teacher_model_init_kwargs` is the parent's own error.
`trl.GRPOTrainer`: a path string, user reward functions, a prompt-only dataset (at the reducing setting EGRSD needs no
`answer` or `solution` column). Each construction then trains one optimizer step.
"""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from trl import DistillationConfig, DistillationTrainer

from trl_opd import (
    ATESDConfig,
    ATESDTrainer,
    EGRSDConfig,
    EGRSDTrainer,
    MOTABConfig,
    MOTABTrainer,
    OPDConfig,
    OPDTrainer,
    TrOPDConfig,
    TrOPDTrainer,
)
from trl_opd.data import DatasetValidationError
from trl_opd.testing import build_tiny_model, tiny_training_kwargs


DISTILLATION_TRAINERS = [
    (OPDTrainer, OPDConfig, {}),
    (MOTABTrainer, MOTABConfig, {"step_delimiter": "\n"}),
    (TrOPDTrainer, TrOPDConfig, {}),
]
TEACHER_KWARGS = {"dtype": "float32", "attn_implementation": "sdpa"}
LORA = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")


def _kwargs(tmp_path, **overrides):
    return tiny_training_kwargs(tmp_path, max_steps=1, max_completion_length=6, **overrides)


@pytest.fixture(scope="module")
def standard_prompts(arithmetic_dataset) -> Dataset:
    """Prompt-only text rows, as TRL's `standard_prompt_only` test data."""
    return Dataset.from_dict({"prompt": arithmetic_dataset["problem"]})


def _trains_one_step(trainer) -> None:
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    assert trainer.state.global_step == 1
    after = dict(trainer.model.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before), "no trainable parameter moved"


# ----------------------------------------------------------------- DistillationTrainer family
@pytest.mark.parametrize("cls,config_cls,extra", DISTILLATION_TRAINERS, ids=lambda x: getattr(x, "__name__", ""))
def test_string_teacher_with_init_kwargs(cls, config_cls, extra, tmp_path, tiny_pair_dir, arithmetic_dataset):
    args = config_cls(**_kwargs(tmp_path, teacher_model_init_kwargs=dict(TEACHER_KWARGS), **extra))
    trainer = cls(
        model=str(tiny_pair_dir / "student"),
        teacher_model=str(tiny_pair_dir / "teacher"),
        args=args,
        train_dataset=arithmetic_dataset,
    )
    assert trainer.teacher_model is not None and not trainer.teacher_model.training
    assert args.teacher_model_init_kwargs == TEACHER_KWARGS  # the caller's config is left as it was
    _trains_one_step(trainer)


def test_string_teacher_with_init_kwargs_is_accepted_by_trl_too(tmp_path, tiny_pair_dir, arithmetic_dataset):
    """The parent's contract that the subclasses follow (guards against a TRL upgrade changing it)."""
    args = DistillationConfig(
        **_kwargs(tmp_path, teacher_model_init_kwargs=dict(TEACHER_KWARGS)), bf16=False, gradient_checkpointing=False
    )
    trainer = DistillationTrainer(
        model=str(tiny_pair_dir / "student"),
        teacher_model=str(tiny_pair_dir / "teacher"),
        args=args,
        train_dataset=arithmetic_dataset,
    )
    assert trainer.teacher_model is not None


@pytest.mark.parametrize("cls,config_cls,extra", DISTILLATION_TRAINERS, ids=lambda x: getattr(x, "__name__", ""))
def test_instances_and_peft_config(cls, config_cls, extra, tmp_path, tiny_tokenizer, arithmetic_dataset):
    trainer = cls(
        model=build_tiny_model(tiny_tokenizer, "student", seed=0),
        teacher_model=build_tiny_model(tiny_tokenizer, "teacher", seed=1),
        args=config_cls(**_kwargs(tmp_path, **extra)),
        train_dataset=arithmetic_dataset,
        processing_class=tiny_tokenizer,
        peft_config=LORA,
    )
    assert hasattr(trainer.model, "peft_config")
    _trains_one_step(trainer)


@pytest.mark.parametrize("cls,config_cls,extra", DISTILLATION_TRAINERS, ids=lambda x: getattr(x, "__name__", ""))
def test_instance_teacher_with_init_kwargs_is_trls_error(
    cls, config_cls, extra, tmp_path, tiny_tokenizer, arithmetic_dataset
):
    def build(trainer_cls, args):
        return trainer_cls(
            model=build_tiny_model(tiny_tokenizer, "student", seed=0),
            teacher_model=build_tiny_model(tiny_tokenizer, "teacher", seed=1),
            args=args,
            train_dataset=arithmetic_dataset,
            processing_class=tiny_tokenizer,
        )

    with pytest.raises(ValueError) as theirs:
        build(
            DistillationTrainer,
            DistillationConfig(
                **_kwargs(tmp_path / "trl", teacher_model_init_kwargs={}), bf16=False, gradient_checkpointing=False
            ),
        )
    with pytest.raises(ValueError) as ours:
        build(cls, config_cls(**_kwargs(tmp_path / "ours", teacher_model_init_kwargs={}, **extra)))
    assert str(ours.value) == str(theirs.value)


def test_atesd_from_a_model_path_with_peft(tmp_path, tiny_pair_dir, arithmetic_dataset):
    trainer = ATESDTrainer(
        model=str(tiny_pair_dir / "student"),
        args=ATESDConfig(**_kwargs(tmp_path)),
        train_dataset=arithmetic_dataset,
        peft_config=LORA,
    )
    assert trainer.teacher_model is None  # the frozen self-teacher is the student with its adapter off
    _trains_one_step(trainer)


# ----------------------------------------------------------------- GRPOTrainer family
def _length_reward(completions, **kwargs):
    """A user reward: the completion's length in characters (text or conversational completions)."""
    return [float(len(c if isinstance(c, str) else c[-1]["content"])) for c in completions]


def _egrsd_args(tmp_path, **overrides):
    return EGRSDConfig(**_kwargs(tmp_path, num_generations=2, per_device_train_batch_size=4, **overrides))


def test_egrsd_at_the_grpo_setting_takes_grpos_inputs(tmp_path, tiny_pair_dir, standard_prompts):
    """Prompt-only data and user reward functions, as `trl.GRPOTrainer`'s tests: no `answer`, no `solution`."""
    trainer = EGRSDTrainer(
        model=str(tiny_pair_dir / "student"),
        reward_funcs=[_length_reward],
        args=_egrsd_args(tmp_path, g_min=1.0, epsilon_w=0.0, learning_rate=1e-2),
        train_dataset=standard_prompts,
    )
    assert trainer.teacher_model is None
    _trains_one_step(trainer)


def test_egrsd_with_a_user_reward_needs_solution_only(tmp_path, tiny_pair_dir, arithmetic_dataset):
    data = arithmetic_dataset.remove_columns("answer")
    trainer = EGRSDTrainer(
        model=str(tiny_pair_dir / "student"),
        reward_funcs=_length_reward,
        args=_egrsd_args(tmp_path, learning_rate=1e-2),
        train_dataset=data,
        peft_config=LORA,
    )
    _trains_one_step(trainer)


@pytest.mark.parametrize(
    "overrides,reward,missing",
    [
        ({}, None, "'answer'"),  # the default reward reads the answer
        ({}, _length_reward, "'solution'"),  # the self-teacher reads the reference
        ({"g_min": 1.0, "epsilon_w": 0.0}, None, "'answer'"),
    ],
)
def test_egrsd_names_the_column_it_needs(tmp_path, standard_prompts, overrides, reward, missing):
    with pytest.raises(DatasetValidationError, match=missing):
        EGRSDTrainer(
            model=str(tmp_path / "never-loaded"),
            reward_funcs=reward,
            args=_egrsd_args(tmp_path, **overrides),
            train_dataset=standard_prompts,
        )
