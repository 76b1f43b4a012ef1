# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""MOTAB's segment-wise rollout, when it never backtracks, samples from the distribution plain generation samples from.

A seeded statistical test on a tiny model made peaked (its `lm_head` scaled), so that token frequencies carry
information: the first token's frequencies against the exact next-token probabilities, and the frequencies at every
position against `model.generate`'s under the same temperature / top-k / top-p, by chi-square. The test is shown to
have power: the same comparison against generation at another temperature fails.
"""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chi2_contingency, chisquare

from trl_opd.testing import build_tiny_model
from trl_opd.trainers.motab_backends import HFStepBackend
from trl_opd.trainers.motab_rollout import SegmentRollout, SegmentStopper


N, NEW_TOKENS = 2000, 4


class _NoDelimiter(SegmentStopper):
    """Segments end only at EOS or the budget (the delimiter is never produced by token ids alone here)."""

    def __init__(self, eos):
        super().__init__(None, "\n\n", eos)

    def step(self, row, token):
        return token in self.eos


@pytest.fixture(scope="module")
def peaked_model(tiny_tokenizer):
    model = build_tiny_model(tiny_tokenizer, "student", seed=3, tie_word_embeddings=False).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(12.0)  # a few likely tokens per step instead of a near-uniform 512
    return model


def rollout_tokens(model, prompt, sampling, seed) -> torch.Tensor:
    """`(N, NEW_TOKENS)` tokens of MOTAB's rollout at boundary `+∞` (never strays), student = teacher = `model`."""
    eos = model.generation_config.eos_token_id
    backends = [HFStepBackend(model, pad_token_id=model.config.pad_token_id, **sampling) for _ in range(2)]
    engine = SegmentRollout(*backends, _NoDelimiter([eos]), NEW_TOKENS, max_segment_tokens=2, max_backtracks=4)
    torch.manual_seed(seed)
    with torch.no_grad():
        traces = engine.run([prompt] * N, [prompt] * N, float("inf"))
    assert all(t.backtracks == 0 and sum(t.teacher_mask) == 0 for t in traces)
    return _padded([t.tokens for t in traces], model.config.pad_token_id)


def generate_tokens(model, prompt, sampling, seed) -> torch.Tensor:
    torch.manual_seed(seed)
    ids = torch.tensor([prompt] * N)
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            do_sample=True,
            max_new_tokens=NEW_TOKENS,
            pad_token_id=model.config.pad_token_id,
            **sampling,
        )
    return out[:, len(prompt) :]


def _padded(rows, pad) -> torch.Tensor:
    return torch.tensor([r + [pad] * (NEW_TOKENS - len(r)) for r in rows])


def _two_sample_p(a: torch.Tensor, b: torch.Tensor) -> float:
    """Chi-square p-value that two samples of token ids come from one categorical (bins with < 10 pooled samples
    merged into one)."""
    values = torch.cat([a, b]).unique()
    counts = torch.stack([(a[:, None] == values).sum(0), (b[:, None] == values).sum(0)])
    common = counts.sum(0) >= 10
    table = torch.cat([counts[:, common], counts[:, ~common].sum(1, keepdim=True)], dim=1)
    table = table[:, table.sum(0) > 0]
    if table.size(1) < 2:
        return 1.0
    return float(chi2_contingency(table.numpy())[1])


SAMPLINGS = {
    "plain": {"temperature": 1.0, "top_k": 0, "top_p": 1.0},
    "warped": {"temperature": 0.7, "top_k": 20, "top_p": 0.9},
}


@pytest.mark.parametrize("name", sorted(SAMPLINGS))
def test_never_strayed_rollout_is_distributed_like_generate(name, peaked_model, tiny_tokenizer):
    sampling = SAMPLINGS[name]
    prompt = tiny_tokenizer.encode("Compute 7+5-3.", add_special_tokens=False)
    ours = rollout_tokens(peaked_model, prompt, sampling, seed=0)
    theirs = generate_tokens(peaked_model, prompt, sampling, seed=1)
    # the first token against the exact next-token distribution of the warped logits
    with torch.no_grad():
        logits = peaked_model(input_ids=torch.tensor([prompt])).logits[0, -1] / sampling["temperature"]
    probs = torch.softmax(HFStepBackend(peaked_model, **sampling).warpers(None, logits[None].clone())[0], -1)
    support = probs > 0
    observed = torch.bincount(ours[:, 0], minlength=probs.numel()).double()
    assert observed[~support].sum() == 0  # never a token that top-k / top-p excluded
    expected = probs[support].double() * N
    big = expected >= 10
    obs = torch.cat([observed[support][big], observed[support][~big].sum(0, keepdim=True)])
    exp = torch.cat([expected[big], expected[~big].sum(0, keepdim=True)])
    obs, exp = obs[exp > 0], exp[exp > 0]  # no pooled bin when every token is common
    exp = exp * obs.sum() / exp.sum()  # float32 probabilities sum to 1 only within rounding
    assert chisquare(obs.numpy(), exp.numpy()).pvalue > 1e-3
    for position in range(NEW_TOKENS):  # every position against plain generation
        assert _two_sample_p(ours[:, position], theirs[:, position]) > 1e-3, position


def test_the_comparison_has_power(peaked_model, tiny_tokenizer):
    """The same two-sample test tells generation at temperature 1.0 from generation at 0.8."""
    prompt = tiny_tokenizer.encode("Compute 7+5-3.", add_special_tokens=False)
    ours = rollout_tokens(peaked_model, prompt, SAMPLINGS["plain"], seed=0)
    hotter = generate_tokens(peaked_model, prompt, {"temperature": 0.8, "top_k": 0, "top_p": 1.0}, seed=1)
    assert min(_two_sample_p(ours[:, p], hotter[:, p]) for p in range(NEW_TOKENS)) < 1e-6


def test_sample_categorical_draws_each_row_from_its_probabilities():
    """The inverse-CDF sampler against the probabilities themselves (chi-square per row), never a zero-probability
    token, also for unnormalised rows (float32 softmax rounding) and a row with all mass on its last token."""
    from trl_opd.trainers.motab_backends import sample_categorical

    probs = torch.tensor(
        [
            [0.0, 0.2, 0.0, 0.5, 0.3, 0.0],
            [0.1, 0.1, 0.1, 0.1, 0.1, 0.5],
            [0.0, 0.0, 0.0, 0.0, 0.0, 1.0],
            [0.6, 0.0, 0.0, 0.0, 0.0, 0.0],  # unnormalised: mass 0.6 on the first token only
        ]
    )
    torch.manual_seed(0)
    draws = torch.stack([sample_categorical(probs) for _ in range(N)])  # (N, 4)
    for row in range(probs.size(0)):
        counts = torch.bincount(draws[:, row], minlength=probs.size(1)).double()
        support = probs[row] > 0
        assert counts[~support].sum() == 0, row
        if support.sum() > 1:
            expected = probs[row][support].double() / probs[row].sum() * N
            assert chisquare(counts[support].numpy(), expected.numpy()).pvalue > 1e-3, row
