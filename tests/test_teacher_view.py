# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""The privileged teacher's view, held against a plain forward pass.

For every self-distillation path (OPSD, ATESD at several exposures, EGRSD's teacher), the per-token teacher log-probs
the trainer computes on a batch with uneven prompt, reference and completion lengths equal, token by token, those of
one unpadded forward of the rendered teacher text (chat template applied to the prompt with the reference, then the
completion) through the initial weights. This rules out misalignment under left padding, a wrong prompt at α = 1 and
a teacher copy that is not the initial model.
"""

from __future__ import annotations

import copy

import pytest
import torch

from trl_opd.data import REFERENCE_HEADER, TRANSITION
from trl_opd.demo.task import make_dataset
from trl_opd.teacher import completion_hidden_states
from trl_opd.testing import build_tiny_model, tiny_training_kwargs
from trl_opd.trainers.atesd_config import ATESDConfig
from trl_opd.trainers.atesd_trainer import ATESDTrainer
from trl_opd.trainers.egrsd_config import EGRSDConfig
from trl_opd.trainers.egrsd_trainer import EGRSDTrainer


@pytest.fixture(scope="module")
def uneven_rows():
    """Four rows whose problems and references differ in length (1 to 4 steps)."""
    rows = [make_dataset(1, seed=10 + n, n_ops=n)[0] for n in (1, 4, 2, 3)]
    assert len({len(r["solution"]) for r in rows}) == 4
    return rows


def _completions(tokenizer, lengths=(3, 7, 5, 2)) -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    return [
        torch.randint(10, len(tokenizer) - 10, (n - 1,), generator=g).tolist() + [tokenizer.eos_token_id]
        for n in lengths
    ]


def _reference_logps(model, tokenizer, teacher_prompts, completions, chat_kwargs=None) -> list[torch.Tensor]:
    """Teacher log-probs of each completion from one unpadded forward of the rendered text, row by row."""
    out = []
    with torch.no_grad():
        for prompt, completion in zip(teacher_prompts, completions, strict=True):
            text = tokenizer.apply_chat_template(
                prompt, add_generation_prompt=True, tokenize=False, **(chat_kwargs or {})
            )
            prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([prompt_ids + completion])
            logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1]
            out.append(logits.log_softmax(-1).gather(-1, torch.tensor(completion)[:, None]).squeeze(-1))
    return out


def _assert_rowwise_equal(got: torch.Tensor, mask: torch.Tensor, want: list[torch.Tensor]) -> None:
    for i, expected in enumerate(want):
        n = int(mask[i].sum())
        assert n == expected.numel()
        torch.testing.assert_close(got[i, :n].float(), expected.float(), atol=1e-5, rtol=1e-5, msg=f"row {i}")


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0], ids=lambda a: f"alpha={a}")
def test_atesd_and_opsd_teacher_logprobs_equal_a_plain_forward(alpha, tmp_path, tiny_tokenizer, uneven_rows):
    model = build_tiny_model(tiny_tokenizer, "student", seed=0)
    initial = copy.deepcopy(model).eval()
    # the scoring path on the given completions: no repair rewrites them (tests/test_collapse_repair.py checks it)
    args = ATESDConfig(**tiny_training_kwargs(tmp_path), exposure_policy="fixed", alpha=alpha, collapse_repair=False)
    dataset = make_dataset(8, seed=3)
    trainer = ATESDTrainer(
        model=model, args=args, train_dataset=dataset, processing_class=copy.deepcopy(tiny_tokenizer)
    )
    with torch.no_grad():  # the student moves away from its start: the frozen teacher must not
        for p in trainer.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    completions = _completions(tiny_tokenizer)
    trainer._generate_single_turn = lambda prompt_ids, *a, **k: [list(c) for c in completions]
    trainer.model.train()
    inputs = trainer._generate_and_score_completions([dict(r) for r in uneven_rows])
    seen = {}
    token_losses = trainer.token_losses

    def capture(stats, batch):
        seen["teacher_logp"] = stats["teacher_logp"].detach()
        return token_losses(stats, batch)

    trainer.token_losses = capture
    trainer.compute_loss(trainer.model, inputs)
    prompts = [trainer.teacher_prompt(r) for r in uneven_rows]
    if alpha == 1.0:  # OPSD: the whole reference, verbatim, between the problem and the transition
        for prompt, row in zip(prompts, uneven_rows, strict=True):
            assert f"{REFERENCE_HEADER}\n{row['solution'].strip()}\n\n{TRANSITION}" in prompt[-1]["content"]
    want = _reference_logps(initial, tiny_tokenizer, prompts, completions)
    _assert_rowwise_equal(seen["teacher_logp"], inputs["completion_mask"], want)


@pytest.mark.parametrize("order", [(0, 1, 2, 3), (1, 0, 1, 2)], ids=["distinct", "repeated"])
def test_egrsd_teacher_logprobs_equal_a_plain_forward(order, tmp_path, tiny_tokenizer, uneven_rows):
    """`repeated`: two rows share a prompt, apart (their prompt runs once, its KV cache continued by each)."""
    uneven_rows = [uneven_rows[i] for i in order]
    model = build_tiny_model(tiny_tokenizer, "student", seed=0)
    initial = copy.deepcopy(model).eval()
    kwargs = tiny_training_kwargs(tmp_path, per_device_train_batch_size=4, num_generations=2)
    trainer = EGRSDTrainer(
        model=model,
        args=EGRSDConfig(**kwargs),
        train_dataset=make_dataset(8, seed=3),
        processing_class=copy.deepcopy(tiny_tokenizer),
    )
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    completions = _completions(tiny_tokenizer)
    trainer._generate_single_turn = lambda prompt_ids, *a, **k: ([list(c) for c in completions], None)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    seen = {}
    stats = trainer.teacher_token_stats

    def capture(inputs, output):
        seen["logp"], _ = result = stats(inputs, output)
        seen["mask"] = output["completion_mask"]
        return result

    trainer.teacher_token_stats = capture
    trainer._generate_and_score_completions([dict(r) for r in uneven_rows])
    want = _reference_logps(initial, tiny_tokenizer, [trainer.teacher_prompt(r) for r in uneven_rows], completions)
    _assert_rowwise_equal(seen["logp"], seen["mask"], want)


def test_shared_prompts_run_once_and_match_one_forward_per_row(tiny_tokenizer):
    model = build_tiny_model(tiny_tokenizer, "student", seed=0).eval()
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(10, 100, (n,), generator=g) for n in (5, 9, 3)]
    order = [1, 0, 1, 2, 1, 0]  # rows sharing prompts, apart, left-padded to 9
    prompt_ids = torch.stack([torch.nn.functional.pad(prompts[i], (9 - len(prompts[i]), 0)) for i in order])
    prompt_mask = torch.stack([torch.arange(9) >= 9 - len(prompts[i]) for i in order]).long()
    completion_ids = torch.randint(10, 100, (len(order), 6), generator=g)
    completion_mask = torch.ones_like(completion_ids)
    completion_mask[2, 4:] = 0
    batch_sizes = []
    hook = model.model.register_forward_pre_hook(
        lambda m, a, kw: batch_sizes.append(kw["input_ids"].size(0)), with_kwargs=True
    )
    with torch.no_grad():
        shared = completion_hidden_states(model, prompt_ids, prompt_mask, completion_ids, completion_mask)
        assert batch_sizes == [3, 6]  # the three distinct prompts, then the six completions
        dense = completion_hidden_states(model, prompt_ids, prompt_mask, completion_ids, completion_mask, False)
    hook.remove()
    torch.testing.assert_close(shared, dense, atol=1e-5, rtol=1e-5)
