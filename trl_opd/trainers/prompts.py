# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""A prompt-length limit for TRL's on-policy trainers, which in TRL 1.16 have none (`DistillationTrainer`,
`GRPOTrainer`): a config mixin with the fields and a trainer mixin that applies them to the student's prompts.

Prompts longer than `max_prompt_length` tokens (chat template applied) are cut from the left, so the end of the
prompt, with the generation header, is kept; before training every prompt of the train dataset is measured once and
one warning gives how many will be cut (`prompt_truncation: left`), or the run is refused (`prompt_truncation: error`).
Teacher prompts (privileged context, other chat-template kwargs) are not cut: a reference cut in half would mislead
the teacher; they are checked against the model's context instead ([`~trl_opd.teacher.check_privileged_prompts`]).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ..errors import ConfigValueError


logger = logging.getLogger("trl_opd")

PROMPT_TRUNCATIONS = ("left", "error")


@dataclass
class PromptLimitConfigMixin:
    """`max_prompt_length` and `prompt_truncation`; mix in before the TRL config class."""

    max_prompt_length: int | None = field(
        default=None,
        metadata={
            "help": "Longest student prompt in tokens (chat template applied); longer ones are cut from the left "
            "(see `prompt_truncation`). None: no limit."
        },
    )
    prompt_truncation: str = field(
        default="left",
        metadata={
            "help": "What a prompt longer than `max_prompt_length` gets: `left` (cut from the left, one warning "
            "before training counts them) or `error` (refuse to train).",
            "choices": list(PROMPT_TRUNCATIONS),
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.max_prompt_length is not None and self.max_prompt_length < 1:
            raise ValueError(f"max_prompt_length must be >= 1 (or null), got {self.max_prompt_length}")
        if self.prompt_truncation not in PROMPT_TRUNCATIONS:
            raise ValueError(f"prompt_truncation must be one of {PROMPT_TRUNCATIONS}, got {self.prompt_truncation!r}")


def truncate_left(prompt_ids: list[list[int]], max_length: int) -> tuple[list[list[int]], int]:
    """Each id list cut to its last `max_length` ids; returns the lists and how many were cut."""
    cut = sum(len(ids) > max_length for ids in prompt_ids)
    return [list(ids[-max_length:]) if len(ids) > max_length else ids for ids in prompt_ids], cut


class PromptLimitMixin:
    """Applies `args.max_prompt_length` to the student's prompts; mix in before the TRL trainer class."""

    def _tokenize_full_prompts(self, prompts: list):
        """The TRL trainer's own prompt tokenization, uncut (the teacher's prompts go through this)."""
        return super()._tokenize_prompts(prompts)

    def _tokenize_prompts(self, prompts: list):
        prompt_ids, *rest = self._tokenize_full_prompts(prompts)
        if self.args.max_prompt_length is not None:
            prompt_ids, _ = truncate_left(prompt_ids, self.args.max_prompt_length)
        return (prompt_ids, *rest)

    def check_prompt_lengths(self, dataset, batch_size: int = 256) -> int:
        """Measure every prompt of `dataset` once; warn with the count of those longer than `max_prompt_length`
        (or raise with `prompt_truncation: error`). Returns the count."""
        limit = self.args.max_prompt_length
        if limit is None or dataset is None:
            return 0
        lengths = []
        for start in range(0, len(dataset), batch_size):
            ids, *_ = self._tokenize_full_prompts(dataset[start : start + batch_size]["prompt"])
            lengths.extend(len(p) for p in ids)
        long = [i for i, n in enumerate(lengths) if n > limit]
        if not long:
            return 0
        where = f"{len(long)} of {len(lengths)} prompts are longer than max_prompt_length ({limit} tokens; longest "
        where += f"{max(lengths)}, row {max(long, key=lengths.__getitem__)})"
        if self.args.prompt_truncation == "error":
            raise ConfigValueError(f"{where}. Raise max_prompt_length, or set prompt_truncation: left to cut them.")
        logger.warning("%s: they are cut from the left, keeping their end.", where)
        return len(long)
