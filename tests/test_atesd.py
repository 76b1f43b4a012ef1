# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""ATESD / OPSD trainer: exposure-truncated teacher context, bad input, the OPSD reduction, resume, recipes."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from trl_opd.data import DatasetValidationError, privileged_prompt, split_reasoning_segments
from trl_opd.launch.methods import get_spec
from trl_opd.testing import build_tiny_model, tiny_training_kwargs
from trl_opd.trainers.atesd_config import ATESDConfig
from trl_opd.trainers.atesd_trainer import PROBE_PREFIX, ATESDTrainer, exposed_reference, usable_rows


REPO = Path(__file__).resolve().parents[1]
SOLUTION = "Step one: 2+3=5.\n\nStep two: 5*4=20.\n\nStep three: 20-1=19.\n\nStep four: check.\n\nSo \\boxed{19}."
LOGGED = (
    "alpha",
    "beta_mean",
    "beta_concentration",
    "reward",
    "controller_loss",
    "mismatch",
    "probe_nll",
    "teacher_grounding",
)


def _config(tmp_path, **overrides) -> ATESDConfig:
    return ATESDConfig(**tiny_training_kwargs(tmp_path, **overrides))


def _unboxed(dataset: Dataset, rows: tuple[int, ...]) -> Dataset:
    def strip(row, i):
        return {"solution": row["solution"].replace("\\boxed", "")} if i in rows else {}

    return dataset.map(strip, with_indices=True)


# ---------------------------------------------------------------------------------------------- teacher context
# SOLUTION has m = 4 reasoning segments: α shows level ⌊α·(m+2)⌋ of m+2 (the last one: the reference verbatim)
@pytest.mark.parametrize(("alpha", "kept"), [(0.0, 0), (0.2, 1), (0.4, 2), (0.55, 3), (0.7, 4)])
def test_exposed_reference_truncates_segments(alpha, kept):
    segments = split_reasoning_segments(SOLUTION)[:4]
    text = exposed_reference(SOLUTION, alpha)
    assert text.endswith("The final answer is \\boxed{19}.")
    assert text.count("\\boxed{19}") == 1
    assert [s for s in segments if s in text] == segments[:kept]


def test_full_exposure_is_the_verbatim_reference():
    assert exposed_reference(SOLUTION, 1.0) == SOLUTION
    assert exposed_reference(SOLUTION, 1.0 - 1e-6) == SOLUTION  # a Beta sample clipped below 1 reaches it too
    assert exposed_reference(SOLUTION, 0.84) == SOLUTION  # every α ≥ (m+1)/(m+2)
    mid_box = "a=1\n\nso \\boxed{1}, and\n\ncheck: 1=1"
    assert exposed_reference(mid_box, 0.0) == "The final answer is \\boxed{1}."
    assert exposed_reference("no answer here", 0.5) is None


def test_reference_delimiter_splits_one_step_a_line():
    lines = "2+3=5\n5*4=20\n20-1=19\nSo \\boxed{19}."
    assert exposed_reference(lines, 0.3) == "The final answer is \\boxed{19}."  # blank-line default: no segments
    assert exposed_reference(lines, 0.5) == lines  # ... so the answer alone, or the whole reference
    assert exposed_reference(lines, 0.5, "\n") == "2+3=5\n5*4=20\nThe final answer is \\boxed{19}."
    assert exposed_reference(lines, 0.0, "\n") == "The final answer is \\boxed{19}."
    assert exposed_reference(lines, 1.0, "\n") == lines


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"alpha_min": 0.8, "alpha_max": 0.3}, "alpha_min"),
        ({"alpha": 1.5}, "alpha must be in"),
        ({"alpha": -0.1}, "alpha must be in"),
        ({"alpha_max": 1.2}, "alpha_max must be in"),
        ({"exposure_policy": "greedy"}, "exposure_policy"),
        ({"privileged_context": False}, "privileged_context"),
        ({"controller_batch": 1}, "controller_batch"),
        ({"discount": 0.0}, "discount"),
        ({"probe_target": "answers"}, "probe_target"),
    ],
)
def test_bad_config(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        _config(tmp_path, **overrides)


def test_rows_without_boxed_answer_are_reported_and_skipped(arithmetic_dataset, caplog):
    with caplog.at_level(logging.WARNING, logger="trl_opd"):
        kept = usable_rows(_unboxed(arithmetic_dataset, (1, 5, 9)))
    assert len(kept) == len(arithmetic_dataset) - 3
    assert "3 of 16 rows" in caplog.text
    assert all("\\boxed" in s for s in kept["solution"])
    with pytest.raises(DatasetValidationError, match="None of the 16 rows"):
        usable_rows(_unboxed(arithmetic_dataset, tuple(range(16))))
    with pytest.raises(DatasetValidationError, match="'solution'"):
        usable_rows(arithmetic_dataset.remove_columns("solution"))


# ---------------------------------------------------------------------------------------------- OPSD reduction
@pytest.fixture(scope="module")
def opsd(tmp_path_factory, tiny_tokenizer, arithmetic_dataset):
    """An OPSD trainer (`fixed`, α=1) built from data with two unusable rows, an untouched copy of the student,
    and one generated batch."""
    model = build_tiny_model(tiny_tokenizer, "student", seed=0)
    initial = copy.deepcopy(model)
    preset = get_spec("opsd").config_overrides  # fixed full exposure, no guard, no repair
    assert preset["exposure_policy"] == "fixed" and preset["alpha"] == 1.0
    args = _config(tmp_path_factory.mktemp("opsd"), **preset)
    trainer = ATESDTrainer(
        model=model,
        args=args,
        train_dataset=_unboxed(arithmetic_dataset, (2, 3)),
        processing_class=copy.deepcopy(tiny_tokenizer),
    )
    rows = [trainer.train_dataset[i] for i in range(4)]
    trainer.model.train()
    torch.manual_seed(0)
    inputs = trainer._generate_and_score_completions(rows)
    return trainer, initial, rows, inputs


def test_opsd_skips_unusable_rows_and_never_probes(opsd):
    trainer, _, _, _ = opsd
    assert len(trainer.train_dataset) == 14
    assert trainer.alpha == 1.0 and "atesd/probe_nll" not in trainer._metrics["train"]


def test_student_prompt_never_holds_the_reference(opsd):
    trainer, _, rows, inputs = opsd
    tok = trainer.processing_class
    for i, row in enumerate(rows):
        student = tok.decode(inputs["prompt_ids"][i][inputs["prompt_mask"][i].bool()])
        teacher = tok.decode(inputs["teacher_prompt_ids"][i][inputs["teacher_prompt_mask"][i].bool()])
        segments = split_reasoning_segments(row["solution"])
        assert not any(s in student for s in segments) and "\\boxed{" + row["answer"] not in student
        assert all(s in teacher for s in segments)
    trainer.alpha = 0.3  # two reasoning steps: levels of 1/4 each, 0.3 shows the first step and the answer
    try:
        prompt = trainer.teacher_prompt(rows[0])[-1]["content"]
    finally:
        trainer.alpha = 1.0
    steps = split_reasoning_segments(rows[0]["solution"])[:-1]
    assert steps[0] in prompt and steps[1] not in prompt and f"\\boxed{{{rows[0]['answer']}}}" in prompt


def _dense_forward_kl(student, teacher, tok, rows, inputs):
    """`(1/N) Σ_t Σ_v p_T log(p_T / p_S)` with full logits, row by row and unpadded, the teacher on problem + full
    reference + transition, both prompts tokenized from the chat template text."""
    total, count = 0.0, 0
    for i, row in enumerate(rows):
        completion = inputs["completion_ids"][i][inputs["completion_mask"][i].bool()]
        losses = []
        for model, prompt in ((student, row["prompt"]), (teacher, privileged_prompt(row["prompt"], row["solution"]))):
            text = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
            ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"])
            logits = model(torch.cat([ids, completion]).unsqueeze(0)).logits[0, len(ids) - 1 : -1]
            losses.append(logits.log_softmax(-1))
        log_ps, log_pt = losses
        total = total + (log_pt.exp() * (log_pt - log_ps)).sum()
        count += completion.numel()
    return total / count


def test_fixed_full_exposure_is_the_opsd_loss(opsd):
    trainer, initial, rows, inputs = opsd
    for row in rows:
        assert trainer.teacher_prompt(row) == privileged_prompt(row["prompt"], row["solution"])
    reference_student = copy.deepcopy(trainer.model)
    loss = trainer.compute_loss(trainer.model, inputs)
    loss.backward()
    reference = _dense_forward_kl(reference_student, initial, trainer.processing_class, rows, inputs)
    reference.backward()
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-7)
    grads = dict(reference_student.named_parameters())
    for name, param in trainer.model.named_parameters():
        torch.testing.assert_close(param.grad, grads[name].grad, rtol=1e-4, atol=1e-7, msg=name)
    trainer.model.zero_grad()


def _dense_probe_nll(model, tok, prompts, targets, prefix=""):
    """Token-weighted mean NLL of each `target` after its chat-rendered prompt (and `prefix`), full logits, row by
    row."""
    total, count = 0.0, 0
    for prompt, target_text in zip(prompts, targets):
        text = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        context = tok(text, add_special_tokens=False)["input_ids"] + tok(prefix, add_special_tokens=False)["input_ids"]
        target = tok(target_text, add_special_tokens=False)["input_ids"]
        logits = model(torch.tensor([context + target])).logits[0, len(context) - 1 : -1]
        total += -logits.log_softmax(-1).gather(-1, torch.tensor(target).unsqueeze(-1)).sum().item()
        count += len(target)
    return total / count


@torch.no_grad()
@pytest.mark.parametrize("probe_target", ["solution", "answer"])
def test_probe_nll_and_teacher_grounding_against_dense(opsd, probe_target):
    trainer, initial, _, _ = opsd
    trainer.args.probe_target, trainer._probe_batch = probe_target, None
    tok, rows = trainer.processing_class, trainer.probe_rows
    assert len(rows) == trainer.args.probe_size
    if probe_target == "solution":  # the whole reference solution after the problem
        targets, prefix = [row["solution"] for row in rows], ""
    else:  # `answer}` after the probe's answer phrase
        targets, prefix = [row["answer"] + "}" for row in rows], PROBE_PREFIX
    expected = _dense_probe_nll(trainer.model, tok, [row["prompt"] for row in rows], targets, prefix)
    assert trainer._probe_nll() == pytest.approx(expected, rel=1e-5)
    teacher_prompts = [privileged_prompt(row["prompt"], row["solution"]) for row in rows]
    assert trainer._teacher_grounding() == pytest.approx(
        -_dense_probe_nll(initial, tok, teacher_prompts, targets, prefix), rel=1e-5
    )
    trainer.args.probe_target, trainer._probe_batch = "answer", None


def test_teacher_grounding_is_scored_once_per_exposure_for_a_fixed_teacher(opsd, monkeypatch):
    """The frozen self-teacher gives the same grounding for the same exposed prompts: the second call reads the cache
    (no forward) and returns the same number; a live self-teacher is scored every time."""
    trainer, _, _, _ = opsd
    calls = []
    score = trainer._probe_score
    monkeypatch.setattr(
        trainer, "_probe_score", lambda inputs, teacher: calls.append(teacher) or score(inputs, teacher)
    )
    trainer._grounding_cache.clear()
    first, second = trainer._teacher_grounding(), trainer._teacher_grounding()
    assert first == second and calls == [True]
    monkeypatch.setattr(trainer, "_self_teacher_kind", "live")
    assert trainer._teacher_grounding() == pytest.approx(first) and calls == [True, True]


# ---------------------------------------------------------------------------------------------- resume
def _run(tmp_path, tokenizer, dataset, resume=None, **overrides):
    args = _config(
        tmp_path,
        max_steps=5,
        save_strategy="steps",
        save_steps=3,
        hold_steps=1,
        reward_horizon=1,
        controller_batch=2,
        probe_size=3,
        controller_lr=0.05,
        **overrides,
    )
    trainer = ATESDTrainer(
        model=build_tiny_model(tokenizer, "student", seed=0),
        args=args,
        train_dataset=dataset,
        processing_class=copy.deepcopy(tokenizer),
    )
    trainer.train(resume_from_checkpoint=resume)
    return trainer, {h["step"]: h for h in trainer.state.log_history if "loss" in h}


def test_resume_continues_the_same_alpha_trajectory(tmp_path, tiny_tokenizer, arithmetic_dataset):
    full, logs = _run(tmp_path / "full", tiny_tokenizer, arithmetic_dataset)
    assert sorted(logs) == [1, 2, 3, 4, 5]
    seen = {key for h in logs.values() for key in h}
    assert {f"atesd/{name}" for name in LOGGED} <= seen
    assert full.controller.num_updates == 2  # one update before the checkpoint, one after
    resumed, resumed_logs = _run(
        tmp_path / "resumed", tiny_tokenizer, arithmetic_dataset, resume=str(tmp_path / "full" / "checkpoint-3")
    )
    assert resumed.state.global_step == 5 and {4, 5} <= set(resumed_logs)
    for step in (4, 5):
        for key in ("loss", "atesd/alpha", "atesd/reward", "atesd/probe_nll", "atesd/beta_mean"):
            assert resumed_logs[step][key] == pytest.approx(logs[step][key], rel=1e-6, abs=1e-9), (step, key)
    assert len({logs[s]["atesd/alpha"] for s in logs}) == 5
    for name, value in full.controller.net.state_dict().items():
        torch.testing.assert_close(resumed.controller.net.state_dict()[name], value)


# ---------------------------------------------------------------------------------------------- recipes
RECIPES = sorted(REPO.glob("recipes/Qwen3-*/atesd/*.yaml")) + sorted(REPO.glob("recipes/Qwen3-*/opsd/*.yaml"))


def test_recipes_for_the_three_sizes_parse():
    from trl_opd.launch.recipe import parse_recipe

    assert len(RECIPES) == 6
    for path in RECIPES:
        script_args, config, model_args = parse_recipe(str(path))
        assert isinstance(config, ATESDConfig) and model_args.use_peft and config.use_vllm
        assert config.chat_template_kwargs == {"enable_thinking": True} and config.beta == 0.0
        if script_args.method == "opsd":
            assert (config.exposure_policy, config.alpha) == ("fixed", 1.0)
        else:
            assert config.exposure_policy == "learned"


def test_chat_rendered_string_prompts_are_refused(tmp_path, tiny_tokenizer, arithmetic_dataset):
    """A pre-rendered chat string would get the reference inside the assistant's turn: one clear error instead."""
    rendered = arithmetic_dataset.map(
        lambda row: {
            "prompt": tiny_tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        }
    )
    with pytest.raises(DatasetValidationError, match="already rendered with a chat template"):
        ATESDTrainer(
            model=build_tiny_model(tiny_tokenizer, "student", seed=0),
            args=ATESDConfig(**tiny_training_kwargs(tmp_path)),
            train_dataset=rendered,
            processing_class=tiny_tokenizer,
        )


def test_teacher_prompt_longer_than_the_context_is_refused(tmp_path, tiny_tokenizer, arithmetic_dataset):
    from trl_opd.errors import ConfigValueError

    small = build_tiny_model(tiny_tokenizer, "student", seed=0, max_position_embeddings=64)
    with pytest.raises(ConfigValueError, match="exceeds the model's context of 64 tokens"):
        ATESDTrainer(
            model=small,
            args=ATESDConfig(**tiny_training_kwargs(tmp_path)),
            train_dataset=arithmetic_dataset,
            processing_class=tiny_tokenizer,
        )
