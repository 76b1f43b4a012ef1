# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""The ATESD teacher-exposure controller: a small Beta policy over the share `α` of the reference the teacher sees.

Plain Python (no trainer, no distributed code): the trainer feeds it reduced scalars and asks it for `α`. Its whole
state — policy parameters, optimiser, open and finished decisions, EMAs and RNG — round-trips through
[`ExposureController.state_dict`], so a resumed run continues the same `α` trajectory.

One optimizer step `t` of the trainer, in order:
1. [`ExposureController.observe`] the previous step's loss, mismatch and student confidence (EMAs);
2. when [`ExposureController.needs_probe`], [`ExposureController.observe_probe`] the probe NLL `ℓ_t` (closes the
   reward windows that reach `L` steps and, every `B` finished decisions, updates the policy). With `γ < 1` the reward
   reads every step of a window, so the probe runs at every step; with `γ = 1` (the default) it telescopes to
   `ℓ_{t0} − ℓ_{t0+L}`, so the probe runs only where a decision is made or a window closes (every `H` steps when
   `H = L`);
3. [`ExposureController.act`] returns `α_t`: a new decision every `H` steps, else the held one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..ops.atesd import (
    beta_entropy,
    beta_log_prob,
    beta_mean_concentration,
    beta_parameters,
    beta_raw_for,
    discounted_reward,
    normalize_rewards,
    reinforce_loss,
)


EXPOSURE_POLICIES = ("learned", "fixed", "random")
#: The controller's state features, in order.
STATE_FEATURES = ("step", "alpha_ema", "loss_ema", "mismatch_ema", "probe_nll_ema", "confidence")
_EPS = 1e-6


@dataclass
class Decision:
    """One exposure decision: made at `step`, held for `H` steps, rewarded over the `L` steps after it."""

    step: int
    alpha: float
    sample: float  # the unclipped Beta sample, whose log-prob the policy gradient uses
    state: list[float]
    probe_nll: list[float] = field(default_factory=list)  # ℓ_{t0}, ℓ_{t0+1}, ...
    grounding: float = 0.0
    reward: float | None = None


def _squash(x: float) -> float:
    """`sign(x)·log(1+|x|)`: keeps unbounded state features (losses, NLLs) on the MLP's scale. **[design]**"""
    return math.copysign(math.log1p(abs(x)), x)


class ExposureController:
    r"""
    Chooses the teacher's exposure `α ∈ [α_min, α_max]` (ATESD, arXiv 2605.11458).

    - `policy="learned"`: state `s` (see `STATE_FEATURES`) → MLP `f_φ` → `a, b = 1 + softplus(f_φ(s))`,
      `α ~ Beta(a, b)` clipped to `[α_min, α_max]`, held for `hold_steps` steps. A decision made at `t0` is rewarded
      `R = Σ_{i=1..L} γ^{i−1} [(ℓ_{t0+i−1} − ℓ_{t0+i}) + λ_gt·g]` (net progress) from the probe NLLs `ℓ` and the
      teacher-grounded log-prob `g`; every `batch_decisions` finished decisions the policy takes one plain-SGD
      REINFORCE step on normalised rewards, plus a penalty on the Beta entropy above `entropy_target`. (Not Adam: its
      per-parameter normalisation turned the zero-mean but skewed noise of the REINFORCE gradients into steady steps,
      and under a reward of pure noise the policy walked to `α ≈ 0` or `α ≈ 1` whatever the reward favoured.)
    - `policy="fixed"`: always `alpha` (OPSD when `alpha=1`). `policy="random"`: `α ~ U[α_min, α_max]`, held for
      `hold_steps` steps (the paper's ablations).

    Args:
        policy: `learned`, `fixed` or `random`.
        alpha: The exposure of the `fixed` policy, and the current `α` before the first decision.
        alpha_min, alpha_max: Clipping range of sampled exposures.
        hold_steps: `H`, optimizer steps a sampled `α` is held.
        reward_horizon: `L`, steps after a decision that its reward looks at.
        discount: `γ` of the reward; at 1 the probe is only evaluated at the ends of the reward windows.
        lambda_gt: `λ_gt`, weight of the teacher-grounded term.
        batch_decisions: `B`, finished decisions per policy update.
        entropy_target, entropy_coef: The excess-entropy penalty `c_H · max(0, H − H_target)`.
        lr: SGD learning rate of the policy.
        hidden_size: Width of the policy MLP.
        ema_decay: Decay of the state EMAs.
        prior_mean, prior_concentration: When `prior_mean` is set, the learned policy starts as
            Beta(`prior_mean`, `prior_concentration`) at every state instead of a random initialisation.
        seed: Seeds the policy's initialisation and its own sampling generator.
    """

    def __init__(
        self,
        policy: str = "learned",
        alpha: float = 1.0,
        alpha_min: float = 0.05,
        alpha_max: float = 1.0,
        hold_steps: int = 4,
        reward_horizon: int = 4,
        discount: float = 1.0,
        lambda_gt: float = 0.1,
        batch_decisions: int = 4,
        entropy_target: float = -0.5,
        entropy_coef: float = 0.01,
        lr: float = 0.1,
        hidden_size: int = 32,
        ema_decay: float = 0.9,
        prior_mean: float | None = None,
        prior_concentration: float = 20.0,
        seed: int = 0,
    ):
        if policy not in EXPOSURE_POLICIES:
            raise ValueError(f"exposure policy must be one of {EXPOSURE_POLICIES}, got {policy!r}")
        if not 0.0 <= alpha_min <= alpha_max <= 1.0:
            raise ValueError(
                f"need 0 <= alpha_min <= alpha_max <= 1, got alpha_min={alpha_min}, alpha_max={alpha_max}"
            )
        self.policy, self.alpha_min, self.alpha_max = policy, alpha_min, alpha_max
        self.hold_steps, self.reward_horizon, self.discount = hold_steps, reward_horizon, discount
        self.lambda_gt, self.batch_decisions = lambda_gt, batch_decisions
        self.entropy_target, self.entropy_coef, self.ema_decay = entropy_target, entropy_coef, ema_decay
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = nn.Sequential(nn.Linear(len(STATE_FEATURES), hidden_size), nn.Tanh(), nn.Linear(hidden_size, 2))
        if prior_mean is not None:
            # Start from Beta(mean, concentration) at every state: the output layer's weights at 0, its bias at the
            # raw values of that Beta. The weights still get gradients (the hidden layer is not 0), so the policy
            # can learn away from the prior.
            raw = beta_raw_for(prior_mean, prior_concentration)
            with torch.no_grad():
                self.net[-1].weight.zero_()
                self.net[-1].bias.copy_(raw)
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=lr)
        self.generator = torch.Generator().manual_seed(seed + 1)
        self.alpha = float(alpha)
        self.ema: dict[str, float | None] = {"alpha": None, "loss": None, "mismatch": None, "probe_nll": None}
        self.confidence = 0.0
        self.last_probe_nll: float | None = None
        self.current: Decision | None = None
        self.open: list[Decision] = []
        self.finished: list[Decision] = []
        self.num_updates = 0

    # ------------------------------------------------------------------ policy
    def beta(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Beta parameters `a, b` of the policy at `state` `(..., F)` -> `(...), (...)`."""
        return beta_parameters(self.net(state))

    def state_vector(self, step: int, total_steps: int) -> torch.Tensor:
        """The state `s` `(F,)`: normalised step, EMAs of `α`, loss, mismatch and probe NLL, batch confidence."""
        ema = {k: (0.0 if v is None else v) for k, v in self.ema.items()}
        ema_alpha = self.alpha if self.ema["alpha"] is None else ema["alpha"]
        values = [
            step / max(total_steps, 1),
            ema_alpha,
            _squash(ema["loss"]),
            _squash(ema["mismatch"]),
            _squash(ema["probe_nll"]),
            self.confidence,
        ]
        return torch.tensor(values, dtype=torch.float32)

    def decision_due(self, step: int) -> bool:
        """Whether step `step` opens a new decision (every `hold_steps` steps; never for the fixed policy)."""
        if self.policy == "fixed":
            return False
        return self.current is None or step - self.current.step >= self.hold_steps

    def needs_probe(self, step: int) -> bool:
        """Whether the probe NLL at `step` is used: by a decision made now, or by an open reward window (with `γ = 1`
        only by a window that closes at `step`: the undiscounted reward reads the window's two ends)."""
        if self.policy != "learned":
            return False
        if self.decision_due(step):
            return True
        if self.discount < 1.0:
            return bool(self.open)
        return any(step == decision.step + self.reward_horizon for decision in self.open)

    def act(self, step: int, total_steps: int) -> float:
        """The exposure `α` for optimizer step `step`: a new decision when one is due, else the held one."""
        if not self.decision_due(step):
            return self.alpha
        if self.policy == "random":
            u = torch.rand((), generator=self.generator).item()
            self.alpha = self.alpha_min + u * (self.alpha_max - self.alpha_min)
            self.current = Decision(step, self.alpha, u, [])
            return self.alpha
        state = self.state_vector(step, total_steps)
        with torch.no_grad():
            a, b = self.beta(state)
        sample = self._sample_beta(a, b)
        self.alpha = min(max(sample, self.alpha_min), self.alpha_max)
        first_nll = [] if self.last_probe_nll is None else [self.last_probe_nll]
        self.current = Decision(step, self.alpha, sample, state.tolist(), first_nll)
        self.open.append(self.current)
        return self.alpha

    def _sample_beta(self, a: torch.Tensor, b: torch.Tensor) -> float:
        """One Beta(a, b) draw from the controller's own generator (the global RNG is left untouched)."""
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self.generator.get_state())
            sample = torch.distributions.Beta(a, b).sample()
            self.generator.set_state(torch.get_rng_state())
        return float(sample.clamp(_EPS, 1.0 - _EPS))

    def set_grounding(self, value: float) -> None:
        """The teacher-grounded log-prob `g` of the decision just made (mean over the probe set)."""
        if self.current is not None:
            self.current.grounding = float(value)

    def beta_stats(self, step: int, total_steps: int) -> dict[str, float]:
        """Mean and concentration of the policy's Beta at the current state, for logging."""
        with torch.no_grad():
            a, b = self.beta(self.state_vector(step, total_steps))
        mean, concentration = beta_mean_concentration(a, b)
        return {"beta_mean": mean.item(), "beta_concentration": concentration.item()}

    # ------------------------------------------------------------------ observations
    def _update_ema(self, name: str, value: float) -> None:
        old = self.ema[name]
        self.ema[name] = value if old is None else self.ema_decay * old + (1.0 - self.ema_decay) * value

    def observe(self, loss: float, mismatch: float, confidence: float) -> None:
        """Fold one finished optimizer step's (globally averaged) loss, mismatch and confidence into the state."""
        self._update_ema("alpha", self.alpha)
        self._update_ema("loss", float(loss))
        self._update_ema("mismatch", float(mismatch))
        self.confidence = float(confidence)

    def observe_probe(self, nll: float, step: int) -> dict[str, float]:
        """Record the probe NLL `ℓ_step`: extends the open reward windows (every one with `γ < 1`; with `γ = 1` only
        those that end at `step`), closes those that reach `L` steps, and updates the policy every `batch_decisions`
        finished decisions. Returns logging values."""
        nll = float(nll)
        self.last_probe_nll = nll
        self._update_ema("probe_nll", nll)
        logs: dict[str, float] = {}
        still_open = []
        for decision in self.open:
            ends = step >= decision.step + self.reward_horizon
            if ends or self.discount < 1.0:
                decision.probe_nll.append(nll)
            if not ends:
                still_open.append(decision)
            elif len(decision.probe_nll) >= 2:  # a window without its start value (none was probed) is dropped
                decision.reward = self._reward(decision)
                self.finished.append(decision)
                logs["reward"] = decision.reward
        self.open = still_open
        if len(self.finished) >= self.batch_decisions:
            logs["controller_loss"] = self.update(self.finished[: self.batch_decisions])
            self.finished = self.finished[self.batch_decisions :]
        return logs

    def _reward(self, decision: Decision) -> float:
        # γ < 1: ℓ_{t0}, ..., ℓ_{t0+L}; γ = 1: ℓ_{t0}, ℓ_{t0+L}, whose one difference is the telescoped sum
        nll = torch.tensor(decision.probe_nll[: self.reward_horizon + 1], dtype=torch.float64)
        grounding = torch.full((self.reward_horizon,), decision.grounding, dtype=torch.float64)
        return discounted_reward(nll, grounding, self.discount, self.lambda_gt).item()

    def update(self, decisions: list[Decision]) -> float:
        """One REINFORCE step on finished decisions (normalised rewards, excess-entropy penalty). Returns the loss."""
        states = torch.tensor([d.state for d in decisions], dtype=torch.float32)
        samples = torch.tensor([d.sample for d in decisions], dtype=torch.float32)
        rewards = torch.tensor([d.reward for d in decisions], dtype=torch.float32)
        a, b = self.beta(states)
        loss = reinforce_loss(
            beta_log_prob(samples, a, b),
            normalize_rewards(rewards),
            beta_entropy(a, b),
            self.entropy_target,
            self.entropy_coef,
        )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.num_updates += 1
        return loss.item()

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the same trajectory: policy, optimiser, decisions, EMAs and RNG."""
        return {
            "net": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "alpha": self.alpha,
            "ema": dict(self.ema),
            "confidence": self.confidence,
            "last_probe_nll": self.last_probe_nll,
            "current": None if self.current is None else asdict(self.current),
            "open": [asdict(d) for d in self.open],
            "finished": [asdict(d) for d in self.finished],
            "num_updates": self.num_updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what [`state_dict`] returned."""
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.alpha, self.ema, self.confidence = state["alpha"], dict(state["ema"]), state["confidence"]
        self.last_probe_nll, self.num_updates = state["last_probe_nll"], state["num_updates"]
        self.open = [Decision(**d) for d in state["open"]]
        self.finished = [Decision(**d) for d in state["finished"]]
        current = state["current"]
        # the current decision is usually also open: keep them one object
        same = [d for d in self.open if current is not None and d.step == current["step"]]
        self.current = same[0] if same else (None if current is None else Decision(**current))
