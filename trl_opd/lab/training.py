# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""Supervised training of the lab's tiny models and held-out scoring (plain PyTorch, seconds on CPU)."""

from __future__ import annotations

import random
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from ..rewards import score_completion


def encode_example(tokenizer, prompt, solution: str) -> tuple[list[int], int]:
    """Token ids of `prompt` (chat template, generation prompt) + `solution` + EOS, and the prompt length."""
    prompt_ids = prompt_token_ids(tokenizer, prompt)
    completion = tokenizer(solution, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prompt_ids + completion, len(prompt_ids)


def prompt_token_ids(tokenizer, prompt) -> list[int]:
    ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=False)
    if isinstance(ids, dict):
        ids = ids["input_ids"]
    return list(ids)


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
    warmup_steps: int = 20,
    on_step: Callable[[int, object], bool] | None = None,
) -> list[float]:
    """Train `model` on `prompt -> solution` (loss on the solution tokens) for up to `steps` AdamW steps.

    The learning rate warms up over `warmup_steps`, then decays linearly to 0 (`decay`) or stays constant. After each
    step, `on_step(step, model)` may return True to stop early. Returns the losses.
    """
    rng = random.Random(seed)
    examples = [encode_example(tokenizer, row["prompt"], row["solution"]) for row in dataset]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(1.0, (s + 1) / max(1, warmup_steps)) * ((1 - s / (steps + 1)) if decay else 1.0),
    )
    model.train()
    losses = []
    for step in tqdm(range(1, steps + 1), desc=desc, leave=False):
        batch = rng.sample(examples, min(batch_size, len(examples)))
        input_ids, attention, labels = _batch(batch, tokenizer.pad_token_id)
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if on_step is not None:
            model.eval()
            stop = on_step(step, model)
            model.train()
            if stop:
                break
    model.eval()
    return losses


@torch.no_grad()
def generate_texts(
    model, tokenizer, texts: list[str], max_new_tokens: int, sample: bool = False, batch_size: int = 128
) -> tuple[list[str], list[int]]:
    """Greedy (or temperature-1 sampled) continuations of raw `texts`; returns the decoded texts and their lengths
    in tokens (EOS included, padding not)."""
    was_training = model.training
    model.eval()
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    outputs, lengths = [], []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(
            texts[start : start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False
        )
        out = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=sample,
            temperature=1.0 if sample else None,
            top_p=1.0 if sample else None,
            top_k=0 if sample else None,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        new = out[:, batch["input_ids"].shape[1] :]
        outputs += tokenizer.batch_decode(new, skip_special_tokens=True)
        lengths += (new != tokenizer.pad_token_id).sum(dim=1).tolist()
    tokenizer.padding_side = side
    model.train(was_training)
    return outputs, lengths


def prompt_texts(tokenizer, prompts) -> list[str]:
    return [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]


def heldout_accuracy(model, tokenizer, dataset, max_new_tokens: int = 48, prompts=None) -> float:
    """Greedy-decoding accuracy on `dataset` with the boxed-answer check of [`trl_opd.rewards.score_completion`].
    `prompts` replaces the dataset's prompts (e.g. privileged ones)."""
    texts = prompt_texts(tokenizer, prompts if prompts is not None else dataset["prompt"])
    completions, _ = generate_texts(model, tokenizer, texts, max_new_tokens)
    correct = sum(score_completion(c, a) for c, a in zip(completions, dataset["answer"]))
    return correct / max(1, len(dataset))


def score_model(model, tokenizer, dataset, max_new_tokens: int, k: int = 4, seed: int = 0) -> dict:
    """Greedy exact match, average@k of temperature-1 samples, and the samples' mean completion length (tokens)."""
    texts = prompt_texts(tokenizer, dataset["prompt"])
    answers = list(dataset["answer"])
    greedy, _ = generate_texts(model, tokenizer, texts, max_new_tokens)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sampled, lengths = generate_texts(model, tokenizer, [t for t in texts for _ in range(k)], max_new_tokens, True)
    return {
        "greedy": sum(score_completion(c, a) for c, a in zip(greedy, answers)) / max(1, len(answers)),
        "average_at_k": sum(score_completion(c, answers[i // k]) for i, c in enumerate(sampled))
        / max(1, len(sampled)),
        "mean_length": sum(lengths) / max(1, len(lengths)),
    }
