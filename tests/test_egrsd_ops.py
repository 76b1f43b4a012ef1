# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""EGRSD token weights (`trl_opd.ops.egrsd`) on hand-built tensors, against hand-computed or brute-force references."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import mannwhitneyu

from trl_opd.ops.egrsd import (
    delta_gap_sums,
    egrsd_token_advantages,
    entropy_gate,
    likelihood_ratio_magnitude,
    lookahead_min,
    masked_median,
    rank_agreement,
    rollout_means,
)


def brute_lookahead_min(values: torch.Tensor, mask: torch.Tensor, lookahead: int) -> torch.Tensor:
    out = values.clone()
    for b in range(values.size(0)):
        for t in range(values.size(1)):
            if mask[b, t]:
                window = [values[b, j] for j in range(t, min(t + lookahead + 1, values.size(1))) if mask[b, j]]
                out[b, t] = min(window)
    return out


# right padding on row 0, a masked hole (tool tokens) inside row 1, row 2 fully unmasked
MASK = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 1, 1], [1, 1, 1, 1, 1, 1]])
VALUES = torch.tensor(
    [[5.0, 1.0, 4.0, 3.0, 0.0, -9.0], [2.0, 6.0, -7.0, 0.5, 9.0, 8.0], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]]
)


def test_lookahead_min_hand_built():
    got = lookahead_min(VALUES, MASK, 2)
    # row 0: window [t, t+2] stops at the last real token (3.0); the padding's 0.0 and -9.0 are never read
    assert got[0, :4].tolist() == [1.0, 1.0, 3.0, 3.0]
    # row 1: the masked -7.0 / 0.5 are skipped; position 1 sees only itself in [1, 3]
    assert got[1].tolist()[:2] == [2.0, 6.0] and got[1, 4:].tolist() == [8.0, 8.0]
    # row 2: clipped at the sequence end
    assert got[2].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert torch.equal(got[~MASK.bool()], VALUES[~MASK.bool()])  # masked positions keep their own value


@pytest.mark.parametrize("lookahead", [0, 1, 3, 32])
def test_lookahead_min_matches_brute_force(lookahead):
    gen = torch.Generator().manual_seed(lookahead)
    values = torch.rand(4, 17, generator=gen) * 5
    mask = (torch.rand(4, 17, generator=gen) > 0.2).int()
    mask[0, 9:] = 0  # a short rollout
    torch.testing.assert_close(lookahead_min(values, mask, lookahead), brute_lookahead_min(values, mask, lookahead))
    if lookahead == 0:
        assert torch.equal(lookahead_min(values, mask, 0), values)


def test_lookahead_min_rejects_negative():
    with pytest.raises(ValueError, match="lookahead"):
        lookahead_min(VALUES, MASK, -1)


def test_masked_median_uses_loss_tokens_only():
    values = torch.tensor([[1.0, 100.0, 3.0], [2.0, -50.0, 4.0]])
    mask = torch.tensor([[1, 0, 1], [1, 0, 1]])
    assert masked_median(values, mask).item() == 2.0  # lower middle of [1, 2, 3, 4], as torch.median
    assert masked_median(values, torch.zeros_like(mask)).item() == 0.0


def test_entropy_gate_hand_built():
    tau = 2.0
    entropy = torch.tensor([[0.0, 2.0, 4.0]])
    expected = torch.tensor([[1.0, 0.2 + 0.8 * math.exp(-1.0), 0.2 + 0.8 * math.exp(-2.0)]])
    torch.testing.assert_close(entropy_gate(entropy, tau, 0.2), expected)
    assert torch.equal(entropy_gate(entropy, tau, 1.0), torch.ones_like(entropy))  # gate off
    torch.testing.assert_close(entropy_gate(entropy, tau, 0.0), torch.exp(-entropy / tau))
    assert (entropy_gate(entropy, 0.0, 0.5)[0, 1:] == 0.5).all()  # τ floored: any uncertainty → the floor
    with pytest.raises(ValueError, match="g_min"):
        entropy_gate(entropy, tau, 1.5)


def test_magnitude_sign_handling_and_clipping():
    advantages = torch.tensor([1.5, -0.7, 0.0])
    delta = torch.tensor([0.1, -0.1, 1.0, -1.0])  # teacher minus student log-prob
    teacher = delta.expand(3, 4).clone()
    student = torch.zeros(3, 4)
    got = likelihood_ratio_magnitude(advantages, teacher, student, 0.2)
    e = math.exp
    expected = torch.tensor(
        [
            [e(0.1), e(-0.1), 1.2, 0.8],  # rewarded: push where the teacher agrees more
            [e(-0.1), e(0.1), 0.8, 1.2],  # penalised: the ratio flips
            [1.0, 1.0, 1.0, 1.0],  # zero advantage: neutral
        ]
    )
    torch.testing.assert_close(got, expected)
    assert torch.equal(likelihood_ratio_magnitude(advantages, teacher, student, 0.0), torch.ones(3, 4))
    with pytest.raises(ValueError, match="epsilon_w"):
        likelihood_ratio_magnitude(advantages, teacher, student, -0.1)


def test_token_advantages_full_formula_and_reductions():
    gen = torch.Generator().manual_seed(0)
    advantages = torch.tensor([1.0, -1.0, 0.5, 0.0])
    teacher_logp = -torch.rand(4, 6, generator=gen) * 3
    student_logp = -torch.rand(4, 6, generator=gen) * 3
    entropy = torch.rand(4, 6, generator=gen) * 4
    mask = torch.ones(4, 6, dtype=torch.int64)
    mask[1, 4:] = 0
    student_logp[1, 4:] = -float("inf")  # a masked position with a non-finite value stays exactly 0

    out = egrsd_token_advantages(advantages, teacher_logp, student_logp, entropy, mask, 0.3, 0.25, lookahead=2)
    tau = sorted(entropy[mask.bool()].tolist())[(int(mask.sum()) - 1) // 2]
    ent = brute_lookahead_min(entropy, mask, 2)
    gate = 0.3 + 0.7 * torch.exp(-ent / tau)
    mag = torch.exp(torch.sign(advantages)[:, None] * (teacher_logp - student_logp)).clamp(0.75, 1.25)
    expected = torch.where(mask.bool(), advantages[:, None] * mag * gate, torch.zeros(()))
    torch.testing.assert_close(out["advantages"], expected)
    assert out["advantages"][1, 4:].eq(0).all() and torch.isfinite(out["advantages"]).all()
    assert out["tau"].item() == pytest.approx(tau)

    rlsd = egrsd_token_advantages(advantages, teacher_logp, student_logp, entropy, mask, 1.0, 0.25)
    torch.testing.assert_close(rlsd["advantages"], torch.where(mask.bool(), advantages[:, None] * mag, 0.0))
    grpo = egrsd_token_advantages(advantages, teacher_logp, student_logp, entropy, mask, 1.0, 0.0, lookahead=4)
    assert torch.equal(grpo["advantages"], advantages[:, None].expand(4, 6) * mask)


def test_token_advantages_are_constants():
    teacher = torch.zeros(2, 3, requires_grad=True)
    student = torch.zeros(2, 3, requires_grad=True)
    entropy = torch.ones(2, 3, requires_grad=True)
    out = egrsd_token_advantages(torch.tensor([1.0, -1.0]), teacher, student, entropy, torch.ones(2, 3))
    assert not out["advantages"].requires_grad


def test_normalized_gate_reweights_without_changing_the_mean_and_varies_with_entropy():
    """A batch with varied teacher entropy gives varied gates; normalised, their mean over the loss tokens is 1, the
    ratios between tokens are the raw gate's, and padding stays 0."""
    from trl_opd.ops.egrsd import egrsd_token_advantages, normalize_gate

    entropy = torch.tensor([[0.0, 0.1, 2.0, 3.0], [0.5, 0.05, 4.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    advantages = torch.tensor([1.0, -0.5])
    zeros = torch.zeros_like(entropy)
    raw = egrsd_token_advantages(advantages, zeros, zeros, entropy, mask, g_min=0.2, epsilon_w=0.0)
    gate = raw["gate"][mask.bool()]
    assert gate.std() > 0.2 and gate.mean() < 0.8  # varied, and the raw gate shrinks the update
    mean = gate.mean()
    out = normalize_gate(raw, mean)
    torch.testing.assert_close(out["gate"][mask.bool()].mean(), torch.tensor(1.0))
    dense = torch.where(mask.bool(), advantages[:, None] * raw["gate"] / mean, torch.zeros(()))
    torch.testing.assert_close(out["advantages"], dense)
    torch.testing.assert_close(out["raw_gate"], raw["gate"])
    ones = egrsd_token_advantages(advantages, zeros, zeros, entropy, mask, g_min=1.0, epsilon_w=0.0)
    torch.testing.assert_close(normalize_gate(ones, 1.0)["advantages"], ones["advantages"])  # RLSD/GRPO unchanged


def test_centred_magnitude_ignores_a_teacher_that_is_uniformly_less_sure():
    torch.manual_seed(0)
    advantages = torch.tensor([1.0, -1.0, 0.5])
    student = torch.randn(3, 5) * 0.3 - 1.0
    teacher = student + torch.randn(3, 5) * 0.1
    mask = torch.ones(3, 5)

    def centred(teacher_logp):
        delta = teacher_logp - student
        return likelihood_ratio_magnitude(advantages, teacher_logp, student, 0.2, delta[mask.bool()].mean())

    # a self-teacher 2.3 nats less sure of every token (the lab's `ambiguous` world): uncentred, every rewarded token
    # is shrunk to 1 - ε_w and every penalised one grown to 1 + ε_w; centred, nothing changes
    shifted = teacher - 2.3
    plain = likelihood_ratio_magnitude(advantages, shifted, student, 0.2)
    assert torch.equal(plain[0], torch.full((5,), 0.8)) and torch.equal(plain[1], torch.full((5,), 1.2))
    torch.testing.assert_close(centred(shifted), centred(teacher))
    offset = (teacher - student).mean()
    expected = torch.exp(torch.sign(advantages)[:, None] * (teacher - student - offset)).clamp(0.8, 1.2)
    torch.testing.assert_close(centred(teacher), expected)


def test_per_rollout_weights_keep_each_rollouts_total_and_only_move_credit_within_it():
    """Against a row-by-row loop; a rollout's weights average 1 over its loss tokens (so `Σ_t A_i w̃_t = A_i n_i`,
    GRPO's total), their ratios are kept, masked positions do not count, a constant weight (a self-teacher uniformly
    less sure of every token: the magnitude clipped to `1 − ε_w` everywhere) becomes 1, and an all-masked row is
    left as it is."""
    from trl_opd.ops.egrsd import normalize_per_rollout

    weights = VALUES.abs() + 0.5
    mask = MASK.clone()
    mask[0] = 0  # an all-masked row
    out = normalize_per_rollout(weights, mask)
    for b in range(weights.size(0)):
        keep = mask[b].bool()
        expected = weights[b] / weights[b][keep].mean() if keep.any() else weights[b]
        torch.testing.assert_close(out[b], expected)
    for b in (1, 2):
        torch.testing.assert_close(out[b][mask[b].bool()].mean(), torch.tensor(1.0))
    torch.testing.assert_close(normalize_per_rollout(torch.full((3, 6), 0.8), MASK)[MASK.bool()], torch.ones(14))


def test_delta_gap_sums_against_a_loop_over_rollouts():
    torch.manual_seed(0)
    delta = torch.randn(5, 7)
    advantages = torch.tensor([0.5, -1.0, 0.0, 2.0, -0.3])
    mask = (torch.rand(5, 7) > 0.3).float()
    mask[1, :] = 0.0  # a penalised rollout without loss tokens counts for nothing
    kept = {
        sign: [delta[i, t].item() for i in range(5) for t in range(7) if mask[i, t] and sign * advantages[i] > 0]
        for sign in (1, -1)
    }
    want = [sum(kept[1]), len(kept[1]), sum(kept[-1]), len(kept[-1])]
    torch.testing.assert_close(delta_gap_sums(delta, advantages, mask), torch.tensor(want, dtype=torch.float32))
    rewarded, n_rewarded, penalised, n_penalised = delta_gap_sums(delta, advantages, mask).tolist()
    assert n_penalised == mask[4].sum() and n_rewarded == mask[0].sum() + mask[3].sum()  # A = 0: neither
    # a teacher that disagrees by the same amount everywhere has no gap
    same = delta_gap_sums(torch.full((5, 7), -0.7), advantages, mask)
    assert same[0] / same[1] - same[2] / same[3] == pytest.approx(0.0, abs=1e-6)


def test_rollout_means_against_a_loop():
    torch.manual_seed(1)
    values, mask = torch.randn(4, 6), (torch.rand(4, 6) > 0.4).float()
    mask[2, :] = 0.0  # no loss tokens: 0
    want = [values[b][mask[b].bool()].mean().item() if mask[b].any() else 0.0 for b in range(4)]
    torch.testing.assert_close(rollout_means(values, mask), torch.tensor(want))


def test_rank_agreement_is_somers_d_from_scipys_mann_whitney_u():
    torch.manual_seed(2)
    scores = torch.randn(40).round(decimals=1)  # rounded: ties count one half
    advantages = torch.randn(40)
    advantages[::7] = 0.0  # A = 0 takes no part
    rewarded, penalised = scores[advantages > 0], scores[advantages < 0]
    auc = mannwhitneyu(rewarded.numpy(), penalised.numpy()).statistic / (len(rewarded) * len(penalised))
    assert rank_agreement(scores, advantages).item() == pytest.approx(2 * auc - 1, abs=1e-6)
    # ordered as the reward orders them: 1; reversed: -1; one side missing: 0 (no evidence)
    assert rank_agreement(advantages, advantages).item() == 1.0
    assert rank_agreement(-advantages, advantages).item() == -1.0
    assert rank_agreement(scores, advantages.abs()).item() == 0.0
