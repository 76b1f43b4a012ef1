# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""Supervised warm-up of the demo's tiny models and their held-out scoring (plain PyTorch, a few seconds on CPU)."""

from __future__ import annotations

import random

import torch
from tqdm.auto import tqdm

from ..rewards import score_completion


def encode_example(tokenizer, prompt, solution: str) -> tuple[list[int], int]:
    """Token ids of `prompt` (chat template, generation prompt) + `solution` + EOS, and the prompt length."""
    prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=False)
    if isinstance(prompt_ids, dict):
        prompt_ids = prompt_ids["input_ids"]
    completion = tokenizer(solution, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return list(prompt_ids) + completion, len(prompt_ids)


def _batch(examples: list[tuple[list[int], int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), -100)
    for row, (ids, prompt_len) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention[row, : len(ids)] = 1
        labels[row, prompt_len : len(ids)] = torch.tensor(ids[prompt_len:])
    return input_ids, attention, labels


def supervised_warmup(
    model,
    tokenizer,
    dataset,
    steps: int,
    batch_size: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
    desc: str = "SFT",
    decay: bool = True,
) -> list[float]:
    """Train `model` on `prompt -> solution` (loss on the solution tokens) for `steps` AdamW steps. Returns losses.

    The learning rate warms up over 20 steps, then decays linearly to 0 (`decay`) or stays constant, which leaves a
    model that further training at the same rate continues smoothly (the demo's student).
    """
    rng = random.Random(seed)
    examples = [encode_example(tokenizer, row["prompt"], row["solution"]) for row in dataset]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / 20) * ((1 - s / (steps + 1)) if decay else 1.0)
    )
    model.train()
    losses = []
    for _ in tqdm(range(steps), desc=desc, leave=False):
        input_ids, attention, labels = _batch(rng.sample(examples, batch_size), tokenizer.pad_token_id)
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    return losses


@torch.no_grad()
def heldout_accuracy(model, tokenizer, dataset, max_new_tokens: int = 48, batch_size: int = 64) -> float:
    """Greedy-decoding accuracy on `dataset` with the boxed-answer check of [`trl_opd.rewards.score_completion`]."""
    was_training = model.training
    model.eval()
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    correct = 0.0
    for start in range(0, len(dataset), batch_size):
        rows = dataset[start : start + batch_size]
        texts = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in rows["prompt"]]
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        out = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        completions = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        correct += sum(score_completion(c, a) for c, a in zip(completions, rows["answer"]))
    tokenizer.padding_side = side
    model.train(was_training)
    return correct / max(1, len(dataset))
