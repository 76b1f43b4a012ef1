# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""Teacher layer (vocabulary checks and alignment, EMA) and dataset/prompt helpers."""

import pytest
import torch

from trl_opd.data import (
    ColumnMap,
    DatasetValidationError,
    prepare_dataset,
    privileged_prompt,
    split_reasoning_segments,
    truncate_reference,
)
from trl_opd.teacher import (
    TeacherMismatchError,
    align_teacher_vocab,
    check_same_vocabulary,
    ema_update,
    quantization_config,
)
from trl_opd.testing import build_tiny_model, build_tiny_tokenizer


def test_tokenizer_mismatch_names_both_vocabularies(tiny_tokenizer, qwen3_tokenizer):
    check_same_vocabulary(tiny_tokenizer, build_tiny_tokenizer())
    with pytest.raises(TeacherMismatchError) as err:
        check_same_vocabulary(tiny_tokenizer, qwen3_tokenizer)
    message = str(err.value)
    assert f"{len(qwen3_tokenizer.get_vocab())} tokens" in message and f"{len(tiny_tokenizer.get_vocab())}" in message


def test_padded_teacher_head_is_cut_to_the_student_size(tiny_tokenizer):
    size = len(tiny_tokenizer)
    teacher = build_tiny_model(tiny_tokenizer, "teacher", vocab_size=size + 64)
    ids = torch.tensor([[1, 5, 9, 20]])
    before = teacher(input_ids=ids).logits[..., :size]
    align_teacher_vocab(teacher, size, size)
    after = teacher(input_ids=ids).logits
    assert after.shape[-1] == size
    torch.testing.assert_close(after, before)
    small = build_tiny_model(tiny_tokenizer, "teacher", vocab_size=size)
    with pytest.raises(TeacherMismatchError):
        align_teacher_vocab(small, size + 8, size)


def test_ema_update():
    teacher, student = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    expected = [0.75 * t.detach() + 0.25 * s.detach() for t, s in zip(teacher.parameters(), student.parameters())]
    ema_update(teacher, student, decay=0.75)
    for param, want in zip(teacher.parameters(), expected):
        torch.testing.assert_close(param.detach(), want)


def test_missing_column_error_suggests_the_nearest(arithmetic_dataset):
    with pytest.raises(DatasetValidationError, match="'solutoin'.*did you mean 'solution'"):
        prepare_dataset(arithmetic_dataset, ["prompt", "solution"], ColumnMap(solution="solutoin"))
    with pytest.raises(DatasetValidationError, match="empty"):
        prepare_dataset(arithmetic_dataset.select([]), ["prompt"])
    renamed = prepare_dataset(
        arithmetic_dataset.rename_column("solution", "ref"), ["solution"], ColumnMap(solution="ref")
    )
    assert "solution" in renamed.column_names and "ref" not in renamed.column_names


def test_reference_truncation_keeps_the_boxed_answer():
    solution = "Step one.\n\nStep two.\n\n  \n\nStep three.\n\nSo the answer is \\boxed{7}."
    assert split_reasoning_segments(solution)[:3] == ["Step one.", "Step two.", "Step three."]
    text, kept, total = truncate_reference(solution, 0.0)
    assert (kept, total) == (0, 3) and "Step" not in text and "\\boxed{7}" in text
    text, kept, _ = truncate_reference(solution, 0.45)
    assert kept == 2 and "Step two." in text and "Step three." not in text and text.endswith("\\boxed{7}.")
    text, kept, _ = truncate_reference(solution, 1.0)
    assert kept == 3 and "Step three." in text
    assert truncate_reference("no answer here", 1.0) is None


def test_privileged_prompt_keeps_the_instruction_last(arithmetic_dataset):
    row = arithmetic_dataset[0]
    instruction = "Put your final answer within \\boxed{}."
    teacher = privileged_prompt(row["prompt"], row["solution"], instruction=instruction)
    content = teacher[-1]["content"]
    assert row["solution"] in content and content.endswith(instruction)
    assert content.count(instruction) == 1
    assert row["solution"] not in row["prompt"][-1]["content"]
    assert privileged_prompt("What is 2+2?", "4").startswith("What is 2+2?")


def test_real_qwen3_tokenizer_thinking_template(qwen3_tokenizer):
    assert qwen3_tokenizer.convert_tokens_to_ids(["<think>", "</think>"]) == [151667, 151668]
    messages = [{"role": "user", "content": "Compute 1+1."}]
    off = qwen3_tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    on = qwen3_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert off == on + "<think>\n\n</think>\n\n"
    ids = qwen3_tokenizer(off, add_special_tokens=False)["input_ids"]
    assert ids[-4] == 151667 and 151668 in ids[-3:]


def test_tiny_template_mirrors_qwen3(tiny_tokenizer, qwen3_tokenizer):
    messages = [{"role": "user", "content": "Compute 1+1."}]
    for kwargs in ({}, {"enable_thinking": False}):
        tiny = tiny_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)
        real = qwen3_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)
        assert tiny == real


def test_teacher_quantization_configs():
    assert quantization_config(None) is None
    four = quantization_config("4bit")
    assert four.load_in_4bit and four.bnb_4bit_quant_type == "nf4" and four.bnb_4bit_use_double_quant
    assert quantization_config("8bit").load_in_8bit
    with pytest.raises(ValueError, match="quantization"):
        quantization_config("3bit")
