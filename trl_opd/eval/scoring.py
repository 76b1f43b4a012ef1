# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""Per-problem scores from k sampled completions: Average@k, pass@k and mean completion length in tokens.

Pure Python (no lighteval import): the lighteval metric in [`trl_opd.eval.tasks`] is a thin wrapper around
[`score_samples`], and the answer check is [`trl_opd.rewards.score_completion`], the same one the trainers use.
"""

from __future__ import annotations

from collections.abc import Sequence

from trl_opd.eval.data import AVG_METRIC, K_METRIC, LENGTH_METRIC, PASS_METRIC
from trl_opd.rewards import score_completion


def completion_length(
    token_ids: Sequence[int], eos_token_ids: Sequence[int] = (), pad_token_id: int | None = None
) -> int:
    """Number of generated tokens, up to and including the first end-of-sequence token.

    Backends return generations padded to a common length (transformers pads finished sequences and the batch with
    the pad token), so the count stops at the first id in `eos_token_ids` and otherwise drops trailing `pad_token_id`s.
    With neither given every returned token counts (exact for vLLM, which does not pad).

    Args:
        token_ids (`Sequence[int]`): generated token ids of one completion.
        eos_token_ids (`Sequence[int]`, *optional*): ids that end a generation.
        pad_token_id (`int` or `None`, *optional*): the padding id.

    Returns:
        `int`: the completion's length in tokens.
    """
    ids = [int(t) for t in token_ids]
    eos = set(int(t) for t in eos_token_ids)
    for index, token in enumerate(ids):
        if token in eos:
            return index + 1
    end = len(ids)
    if pad_token_id is not None:
        while end > 0 and ids[end - 1] == pad_token_id:
            end -= 1
    return end


def score_samples(
    completions: Sequence[str], reference: str, lengths: Sequence[int] | None = None
) -> dict[str, float]:
    """Scores of one problem's k completions.

    Args:
        completions (`Sequence[str]`): the k sampled completions (raw text, thinking included).
        reference (`str`): the reference answer.
        lengths (`Sequence[int]` or `None`, *optional*): completion lengths in tokens; `None` reports a length of 0.

    Returns:
        `dict[str, float]`: `avg@k` (fraction of correct completions), `pass@k` (1 if any is correct, the unbiased
        estimator of pass@k with n = k), `mean_length` (mean tokens per completion) and `num_samples` (k).
    """
    if not completions:
        raise ValueError("score_samples needs at least one completion")
    scores = [score_completion(text, reference) for text in completions]
    lengths = list(lengths) if lengths else []
    return {
        AVG_METRIC: sum(scores) / len(scores),
        PASS_METRIC: float(any(s > 0 for s in scores)),
        LENGTH_METRIC: float(sum(lengths) / len(lengths)) if lengths else 0.0,
        K_METRIC: float(len(completions)),
    }
