# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""TRL's own trainers as baselines, with CPU-safe configs so they run from the same recipes as the methods."""

from __future__ import annotations

import os
from dataclasses import dataclass


os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from trl import GRPOConfig  # noqa: E402
from trl.experimental.gkd import GKDConfig  # noqa: E402

from ..runtime import CPUSafeConfigMixin  # noqa: E402


@dataclass
class GRPOBaselineConfig(CPUSafeConfigMixin, GRPOConfig):
    """[`~trl.GRPOConfig`] for the `grpo` baseline (verifiable math reward); CPU-safe."""


@dataclass
class GKDBaselineConfig(CPUSafeConfigMixin, GKDConfig):
    """[`~trl.experimental.gkd.GKDConfig`] for the `gkd` baseline (off-policy part: the reference solution); CPU-safe."""
