# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""The ATESD exposure controller and its pure math, on scripted numbers."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from trl_opd.controllers.exposure import Decision, ExposureController
from trl_opd.ops.atesd import (
    beta_entropy,
    beta_log_prob,
    beta_mean_concentration,
    beta_parameters,
    beta_raw_for,
    discounted_learning_progress,
    discounted_reward,
    excess_entropy_penalty,
    normalize_rewards,
    reinforce_loss,
)


# ---------------------------------------------------------------------------------------------- pure math
def test_beta_math_matches_torch_distributions():
    raw = torch.tensor([[0.3, -1.2], [2.0, 0.5], [-3.0, 4.0]])
    a, b = beta_parameters(raw)
    torch.testing.assert_close(a, 1 + F.softplus(raw[:, 0]))
    torch.testing.assert_close(b, 1 + F.softplus(raw[:, 1]))
    x = torch.tensor([0.2, 0.5, 0.93])
    reference = torch.distributions.Beta(a, b)
    torch.testing.assert_close(beta_log_prob(x, a, b), reference.log_prob(x))
    torch.testing.assert_close(beta_entropy(a, b), reference.entropy())
    mean, concentration = beta_mean_concentration(a, b)
    torch.testing.assert_close(mean, reference.mean)
    torch.testing.assert_close(concentration, a + b)


def test_discounted_reward_by_hand():
    nll = torch.tensor([5.0, 4.0, 4.5, 3.0], dtype=torch.float64)
    # net gains ℓ_{i-1} − ℓ_i = 1, −0.5 (the NLL rose: it counts against), 1.5 with weights 1, γ, γ²
    assert discounted_learning_progress(nll, 0.5).item() == pytest.approx(1.0 - 0.25 + 0.25 * 1.5)
    assert discounted_learning_progress(nll, 1.0).item() == pytest.approx(5.0 - 3.0)  # γ = 1: ℓ_0 − ℓ_L
    grounding = torch.tensor([-1.0, -2.0, -3.0], dtype=torch.float64)
    expected = 1.125 + 0.1 * (-1.0 + 0.5 * -2.0 + 0.25 * -3.0)
    assert discounted_reward(nll, grounding, 0.5, 0.1).item() == pytest.approx(expected)


def test_normalized_rewards_and_penalty():
    adv = normalize_rewards(torch.tensor([1.0, 2.0, 3.0, 6.0]))
    assert adv.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert adv.pow(2).mean().sqrt().item() == pytest.approx(1.0, abs=1e-5)
    assert torch.equal(normalize_rewards(torch.tensor([2.0, 2.0])), torch.zeros(2))
    entropy = torch.tensor([-0.2, -0.8])
    assert excess_entropy_penalty(entropy, -0.5).item() == pytest.approx(0.3 / 2)
    assert excess_entropy_penalty(entropy, 0.0).item() == 0.0


def test_reinforce_loss_gradient_direction():
    log_prob = torch.zeros(2, requires_grad=True)
    loss = reinforce_loss(log_prob, torch.tensor([1.0, -1.0]), torch.tensor([-1.0, -1.0]), -0.5, 1.0)
    loss.backward()
    # descending the loss raises the log-prob of the positive-advantage action and lowers the other's
    assert log_prob.grad[0] < 0 < log_prob.grad[1]


# ---------------------------------------------------------------------------------------------- controller
def _constant_policy(controller: ExposureController, raw_a: float, raw_b: float) -> None:
    """Make the MLP ignore the state: zero weights, last bias = (raw_a, raw_b)."""
    with torch.no_grad():
        for param in controller.net.parameters():
            param.zero_()
        controller.net[-1].bias.copy_(torch.tensor([raw_a, raw_b]))


def test_beta_parameters_and_clipping():
    controller = ExposureController(alpha_min=0.1, alpha_max=0.9, seed=3)
    _constant_policy(controller, 0.7, -0.4)
    a, b = controller.beta(controller.state_vector(0, 10))
    assert a.item() == pytest.approx(1 + math.log1p(math.exp(0.7)))
    assert b.item() == pytest.approx(1 + math.log1p(math.exp(-0.4)))
    stats = controller.beta_stats(0, 10)
    assert stats["beta_mean"] == pytest.approx(a.item() / (a.item() + b.item()))
    assert stats["beta_concentration"] == pytest.approx(a.item() + b.item())
    _constant_policy(controller, -20.0, 8.0)  # Beta(1, 9): mass near 0, clipped up to alpha_min
    alphas = []
    for step in range(0, 100, controller.hold_steps):
        controller.observe_probe(1.0, step)
        alphas.append(controller.act(step, 100))
    assert min(alphas) >= 0.1 and max(alphas) <= 0.9 and 0.1 in alphas


def test_hold_window():
    controller = ExposureController(hold_steps=3, reward_horizon=50, seed=0)
    alphas = []
    for step in range(8):
        assert controller.decision_due(step) == (step % 3 == 0)
        controller.observe_probe(2.0, step)
        alphas.append(controller.act(step, 8))
    assert alphas[0] == alphas[1] == alphas[2] != alphas[3] == alphas[4] == alphas[5] != alphas[6] == alphas[7]
    assert [d.step for d in controller.open] == [0, 3, 6]


def test_delayed_discounted_reward():
    controller = ExposureController(hold_steps=2, reward_horizon=3, discount=0.5, lambda_gt=0.1, batch_decisions=99)
    nll = [5.0, 4.0, 4.5, 3.0, 2.5, 2.0]
    rewards = {}
    for step, value in enumerate(nll):
        logs = controller.observe_probe(value, step)
        if "reward" in logs:
            rewards[step] = logs["reward"]
        controller.act(step, len(nll))
        if controller.current.step == step:
            controller.set_grounding(-float(step + 1))
    # the decision of step 0 is rewarded only once ℓ_3 is known; the one of step 2 once ℓ_5 is
    assert sorted(rewards) == [3, 5]
    assert rewards[3] == pytest.approx((1.0 - 0.5 * 0.5 + 0.25 * 1.5) + 0.1 * -1.0 * (1 + 0.5 + 0.25))  # net progress
    assert rewards[5] == pytest.approx((1.5 + 0.5 * 0.5 + 0.25 * 0.5) + 0.1 * -3.0 * 1.75)
    assert [d.step for d in controller.finished] == [0, 2]


@pytest.mark.parametrize("hold,horizon", [(4, 4), (2, 3), (3, 2)])
def test_undiscounted_reward_probes_only_the_window_ends(hold, horizon):
    """With `γ = 1` the probe runs only at decision steps and at the steps where a window closes, and each reward is
    `ℓ_{t0} − ℓ_{t0+L} + λ_gt·L·g`, computed here from the full series of probe values (one per step)."""
    controller = ExposureController(
        hold_steps=hold, reward_horizon=horizon, discount=1.0, lambda_gt=0.1, batch_decisions=99
    )
    nll = [5.0 - 0.3 * step + 0.2 * ((step * 7) % 3) for step in range(20)]
    probed, rewards, grounding = [], {}, {}
    for step, value in enumerate(nll):
        if controller.needs_probe(step):
            probed.append(step)
            logs = controller.observe_probe(value, step)
            if "reward" in logs:
                rewards[step] = logs["reward"]
        controller.act(step, len(nll))
        if controller.current.step == step:
            grounding[step] = -0.1 * step
            controller.set_grounding(grounding[step])
    decisions = list(range(0, 20, hold))
    assert probed == sorted({*decisions, *(t + horizon for t in decisions if t + horizon < 20)})
    for t0 in decisions:
        if t0 + horizon < 20:
            expected = nll[t0] - nll[t0 + horizon] + 0.1 * horizon * grounding[t0]
            assert rewards[t0 + horizon] == pytest.approx(expected)
    assert [d.step for d in controller.finished] == [t for t in decisions if t + horizon < 20]


def _decisions(samples, rewards, state):
    return [
        Decision(step=i, alpha=s, sample=s, state=state, reward=r) for i, (s, r) in enumerate(zip(samples, rewards))
    ]


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_reinforce_step_moves_mean_toward_rewarded_exposure(sign):
    controller = ExposureController(lr=0.05, entropy_coef=0.0, seed=1)
    state = controller.state_vector(0, 10).tolist()
    mean_before = controller.beta_stats(0, 10)["beta_mean"]
    controller.update(_decisions([0.85, 0.15], [sign, -sign], state))
    mean_after = controller.beta_stats(0, 10)["beta_mean"]
    assert (mean_after - mean_before) * sign > 0


def test_entropy_penalty_only_above_target():
    below = ExposureController(entropy_target=0.5, entropy_coef=1.0, seed=2)  # Beta entropy is always <= 0
    state = below.state_vector(0, 10).tolist()
    before = copy.deepcopy(below.net.state_dict())
    below.update(_decisions([0.3, 0.6], [1.0, 1.0], state))  # equal rewards: zero advantages
    for name, value in below.net.state_dict().items():
        assert torch.equal(value, before[name]), name
    above = ExposureController(entropy_target=-3.0, entropy_coef=1.0, lr=0.05, seed=2)
    a, b = above.beta(torch.tensor(state))
    entropy_before = beta_entropy(a, b).item()
    above.update(_decisions([0.3, 0.6], [1.0, 1.0], state))
    a, b = above.beta(torch.tensor(state))
    assert entropy_before > -3.0 and beta_entropy(a, b).item() < entropy_before


def _script(controller, steps, start=0):
    """Drive the controller like the trainer does, with scripted statistics; returns the α per step."""
    alphas = []
    for step in range(start, start + steps):
        controller.observe(loss=1.0 / (step + 1), mismatch=0.1 * step, confidence=0.5)
        if controller.needs_probe(step):
            controller.observe_probe(3.0 - 0.1 * step + 0.05 * (step % 3), step)
        alphas.append(controller.act(step, 30))
        controller.set_grounding(-0.5 * alphas[-1])
    return alphas


def test_state_dict_round_trip_continues_the_same_trajectory():
    kwargs = {"hold_steps": 2, "reward_horizon": 3, "batch_decisions": 2, "lr": 0.05}
    reference = ExposureController(seed=7, **kwargs)
    first = _script(reference, 9)
    snapshot = copy.deepcopy(reference.state_dict())
    expected = _script(reference, 12, start=9)
    assert reference.num_updates >= 2 and reference.open  # updates happened and windows were open at the snapshot
    resumed = ExposureController(seed=99, **kwargs)
    resumed.load_state_dict(snapshot)
    assert _script(resumed, 12, start=9) == expected
    assert len(set(first + expected)) > 3
    for name, value in reference.net.state_dict().items():
        assert torch.equal(value, resumed.net.state_dict()[name])


def test_fixed_and_random_policies():
    fixed = ExposureController(policy="fixed", alpha=0.4)
    assert [fixed.act(s, 10) for s in range(5)] == [0.4] * 5 and not fixed.needs_probe(0)
    random_policy = ExposureController(policy="random", alpha_min=0.2, alpha_max=0.6, hold_steps=2, seed=0)
    alphas = [random_policy.act(s, 10) for s in range(6)]
    assert all(0.2 <= a <= 0.6 for a in alphas) and not random_policy.needs_probe(0)
    assert alphas[0] == alphas[1] and alphas[2] == alphas[3] and len(set(alphas)) == 3


def test_controller_leaves_global_rng_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    controller = ExposureController(hold_steps=1, seed=5)
    for step in range(4):
        controller.observe_probe(1.0, step)
        controller.act(step, 4)
    assert torch.equal(torch.rand(3), expected)


def test_bad_controller_arguments():
    with pytest.raises(ValueError, match="alpha_min"):
        ExposureController(alpha_min=0.8, alpha_max=0.2)
    with pytest.raises(ValueError, match="policy"):
        ExposureController(policy="greedy")


def test_prior_sets_the_starting_beta_at_every_state():
    """`prior_mean`/`prior_concentration` give Beta(mean·c, (1−mean)·c) whatever the state (the raw values inverted
    through `beta_parameters`); a Beta the policy cannot express is one clear error."""
    a, b = beta_parameters(beta_raw_for(0.9, 20.0))
    assert a.item() == pytest.approx(18.0, rel=1e-5) and b.item() == pytest.approx(2.0, rel=1e-5)
    controller = ExposureController(prior_mean=0.9, prior_concentration=20.0, seed=3)
    for state in (controller.state_vector(0, 100), torch.randn(6), torch.randn(6) * 5):
        a, b = controller.beta(state)
        assert a.item() == pytest.approx(18.0, rel=1e-5) and b.item() == pytest.approx(2.0, rel=1e-5)
    assert all(p.grad is None for p in controller.net.parameters())
    with pytest.raises(ValueError, match="both > 1"):
        beta_raw_for(0.99, 20.0)


def test_a_high_prior_holds_near_full_exposure_for_a_few_hundred_steps():
    """The trade-off of starting near full exposure (documented in docs/methods.md): a Beta(18, 2) explores α in about
    0.9 ± 0.07, where a reward slope of 0.01 per step and unit α is far below the probe's noise, so in 400 simulated
    steps the policy stays near 0.9 whether high exposure, low exposure or nothing pays (from the random start it
    learns both ways, test below)."""
    for slope in (0.01, 0.0, -0.01):
        ends = [_simulate(slope, seed, 400, prior_mean=0.9)[1] for seed in range(4)]
        assert all(0.8 < end < 0.97 for end in ends), (slope, ends)


def _simulate(slope: float, seed: int, steps: int, noise: float = 0.02, **controller_kwargs) -> tuple[float, float]:
    """A training run in miniature: the probe NLL falls by `slope·α` per step (or by `|slope|·(1−α)` for a negative
    slope: low exposure pays) under noise of std `noise`, and the controller (its defaults, or `controller_kwargs`)
    observes it as the trainer does. Returns the Beta mean before and after."""
    controller = ExposureController(**{"seed": seed, **controller_kwargs})
    generator = torch.Generator().manual_seed(100 + seed)
    nll, start = 5.0, controller.beta_stats(0, steps)["beta_mean"]
    for step in range(steps):
        controller.observe(loss=1.0, mismatch=0.5, confidence=0.5)
        if controller.needs_probe(step):
            controller.observe_probe(nll, step)
        alpha = controller.act(step, steps)
        controller.set_grounding(-1.0)
        progress = slope * alpha if slope >= 0 else -slope * (1.0 - alpha)
        nll -= progress - noise * torch.randn((), generator=generator).item()
    return start, controller.beta_stats(steps, steps)["beta_mean"]


@pytest.mark.parametrize("slope", [0.01, -0.01], ids=["high-exposure-pays", "low-exposure-pays"])
def test_the_configs_default_controller_learns_a_clean_reward_either_way(slope, tmp_path):
    """Issue 15's test at `ATESDConfig`'s own defaults (the prior Beta(18, 2) included, built through the mapping the
    trainer uses): a synthetic reward without noise that favours high (low) exposure moves the policy up (down) within
    400 steps on every seed; measured 0.90 -> 0.95 up and 0.90 -> 0.53-0.63 down. With the probe noise of the test
    above (std 0.02 per step) the same policy stays near 0.9: Beta(18, 2) explores only about ±0.07 of α, so its
    reward differences are a tenth of that noise (docs/methods.md)."""
    from trl_opd.trainers.atesd_config import ATESDConfig

    kwargs = ATESDConfig(output_dir=str(tmp_path)).controller_kwargs()
    del kwargs["seed"]  # `_simulate` seeds the controller
    assert kwargs["policy"] == "learned" and kwargs["prior_mean"] == 0.9
    for seed in range(3):
        start, end = _simulate(slope, seed, 400, noise=0.0, **kwargs)
        assert start == pytest.approx(0.9, abs=1e-4)
        assert (end > start + 0.03) if slope > 0 else (end < start - 0.2), (seed, start, end)


@pytest.mark.parametrize("slope", [0.01, -0.01], ids=["high-exposure-pays", "low-exposure-pays"])
def test_controller_learns_the_rewarded_exposure_within_a_few_hundred_steps(slope):
    """At its defaults the learned policy moves the right way in 400 steps, on every seed (at the first defaults,
    lr 1e-3 with 8-decision batches, it made 4 updates in 400 steps and drifted the same way either way)."""
    for seed in range(3):
        start, end = _simulate(slope, seed, 400)
        assert (end > start + 0.1) if slope > 0 else (end < start - 0.05), (seed, start, end)


def test_controller_does_not_walk_to_a_corner_when_the_reward_is_noise():
    """A probe that only fluctuates must leave the policy about where it started. With Adam (the optimiser before)
    it did not: its per-parameter normalisation made steady steps of the skewed, zero-mean REINFORCE noise, and in
    400 steps the Beta mean ended anywhere from 0.07 to 0.96 over 10 seeds. Plain SGD keeps it within 0.3-0.7."""
    ends = [_simulate(0.0, seed, 400)[1] for seed in range(8)]
    assert all(0.2 < end < 0.8 for end in ends), ends
    assert sum(abs(end - 0.5) for end in ends) / len(ends) < 0.15, ends
