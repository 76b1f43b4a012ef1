# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""Offline tiny-model kit: tiny Qwen3 students/teachers and a local tokenizer, for tests and the demo."""

from .tiny import (
    CHAT_TEMPLATE,
    SPECIAL_TOKENS,
    build_tiny_model,
    build_tiny_tokenizer,
    fixed_generation_batch,
    qwen3_tokenizer_dir,
    save_tiny_pair,
    tiny_qwen3_config,
    tiny_training_kwargs,
)


__all__ = [
    "CHAT_TEMPLATE",
    "SPECIAL_TOKENS",
    "build_tiny_model",
    "build_tiny_tokenizer",
    "fixed_generation_batch",
    "qwen3_tokenizer_dir",
    "save_tiny_pair",
    "tiny_qwen3_config",
    "tiny_training_kwargs",
]
