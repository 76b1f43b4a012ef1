# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""The method registry: recipe `method:` name -> config class, trainer class, and what the method needs.

Classes are named by import path and imported on use, so a method is *available* when its module imports.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from trl_opd.errors import UserError


@dataclass(frozen=True)
class MethodSpec:
    """One trainable method. `family` selects how the trainer is built: `distillation`, `grpo` or `gkd`."""

    name: str
    config: str
    trainer: str
    family: str
    paper: str
    needs_teacher: bool
    required_columns: tuple[str, ...]
    config_overrides: dict[str, Any] = field(default_factory=dict)
    description: str = ""


METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in [
        MethodSpec(
            "opd",
            "trl_opd.opd_config:OPDConfig",
            "trl_opd.opd_trainer:OPDTrainer",
            "distillation",
            "TRL DistillationTrainer",
            True,
            ("prompt",),
            description="on-policy distillation (JSD_β or K1)",
        ),
        MethodSpec(
            "gkd",
            "trl_opd.baselines:GKDBaselineConfig",
            "trl.experimental.gkd:GKDTrainer",
            "gkd",
            "arXiv 2306.13649",
            True,
            ("prompt", "solution"),
            description="generalized KD (TRL GKDTrainer)",
        ),
        MethodSpec(
            "grpo",
            "trl_opd.baselines:GRPOBaselineConfig",
            "trl:GRPOTrainer",
            "grpo",
            "arXiv 2402.03300",
            False,
            ("prompt", "answer"),
            description="GRPO with the verifiable math reward",
        ),
        MethodSpec(
            "motab",
            "trl_opd.motab_config:MOTABConfig",
            "trl_opd.motab_trainer:MOTABTrainer",
            "distillation",
            "arXiv 2605.19433",
            True,
            ("prompt",),
            description="monitored rollouts that backtrack when the student strays",
        ),
        MethodSpec(
            "tropd",
            "trl_opd.tropd_config:TrOPDConfig",
            "trl_opd.tropd_trainer:TrOPDTrainer",
            "distillation",
            "arXiv 2606.01249",
            True,
            ("prompt",),
            description="trust-region OPD with top-k outliers and teacher-prefix guidance",
        ),
        MethodSpec(
            "egrsd",
            "trl_opd.egrsd_config:EGRSDConfig",
            "trl_opd.egrsd_trainer:EGRSDTrainer",
            "grpo",
            "arXiv 2605.13255",
            False,
            ("prompt", "answer", "solution"),
            description="entropy-gated reinforced self-distillation",
        ),
        MethodSpec(
            "cl-egrsd",
            "trl_opd.egrsd_config:EGRSDConfig",
            "trl_opd.egrsd_trainer:EGRSDTrainer",
            "grpo",
            "arXiv 2605.13255",
            False,
            ("prompt", "answer", "solution"),
            {"entropy_lookahead": 32},
            description="EGRSD with a causal entropy lookahead",
        ),
        MethodSpec(
            "atesd",
            "trl_opd.atesd_config:ATESDConfig",
            "trl_opd.atesd_trainer:ATESDTrainer",
            "distillation",
            "arXiv 2605.11458",
            False,
            ("prompt", "solution"),
            description="self-distillation with a learned teacher-exposure controller",
        ),
        MethodSpec(
            "opsd",
            "trl_opd.atesd_config:ATESDConfig",
            "trl_opd.atesd_trainer:ATESDTrainer",
            "distillation",
            "arXiv 2605.11458",
            False,
            ("prompt", "solution"),
            {"exposure_policy": "fixed", "alpha": 1.0},
            description="on-policy self-distillation, full reference exposure",
        ),
    ]
}


class UnknownMethodError(UserError):
    """A recipe names a method that does not exist or is not available in this install."""


def _import(path: str):
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def is_available(name: str) -> bool:
    """Whether the method's config and trainer import (its implementation is present)."""
    try:
        load_method(name)
    except (ImportError, AttributeError, UnknownMethodError):
        return False
    return True


def available_methods() -> list[str]:
    return [name for name in METHODS if is_available(name)]


def get_spec(name: str) -> MethodSpec:
    if name not in METHODS:
        raise UnknownMethodError(f"Unknown method {name!r}; valid methods: {', '.join(METHODS)}.")
    return METHODS[name]


def load_method(name: str) -> tuple[type, type]:
    """`(config_class, trainer_class)` of a method."""
    spec = get_spec(name)
    try:
        return _import(spec.config), _import(spec.trainer)
    except (ImportError, AttributeError) as err:
        raise UnknownMethodError(f"Method {name!r} is not available in this install ({err}).") from err
