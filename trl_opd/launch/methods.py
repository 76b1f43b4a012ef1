# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""The method registry: recipe `method:` name -> config class, trainer class, and what the method needs.

Classes are named by import path and imported on use, so a method is *available* when its module imports.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from ..errors import UserError


TEACHER_KINDS = ("external", "self", "none")


@dataclass(frozen=True)
class MethodSpec:
    """Every fact about one trainable method, in one place: the CLI, `build`, the model card and the demo read it.

    Attributes:
        name: the recipe's `method:` value.
        display_name: how the method is named in cards, tables and logs (e.g. `CL-EGRSD`).
        config, trainer: `module:Class` import paths, imported on use.
        family: how the trainer is built: `distillation`, `grpo` or `gkd`.
        paper_id, paper_title: the arXiv id and title of the paper that defines the method (for a TRL baseline: the
            paper of the algorithm TRL implements).
        teacher: `external` (a teacher checkpoint is required), `self` (the student's own weights with privileged
            context) or `none` (reinforcement learning only).
        required_columns: dataset columns the method reads (checked before any weights load).
        config_overrides: a preset's config values (defaults that the recipe and the command line override).
        description: one line for `trl-opd methods` and the model card.
        in_demo: part of `trl-opd demo`'s default table (the others are reachable with `--methods`).
        baselines: the methods it must beat (the lab pairs it with each of them when they run beside it).
    """

    name: str
    display_name: str
    config: str
    trainer: str
    family: str
    paper_id: str
    paper_title: str
    teacher: str
    required_columns: tuple[str, ...]
    config_overrides: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    in_demo: bool = True
    baselines: tuple[str, ...] = ()

    def __post_init__(self):
        if self.teacher not in TEACHER_KINDS:
            raise ValueError(f"MethodSpec.teacher must be one of {TEACHER_KINDS}, got {self.teacher!r}")
        if self.family not in ("distillation", "grpo", "gkd"):
            raise ValueError(f"MethodSpec.family must be distillation, grpo or gkd, got {self.family!r}")

    @property
    def needs_teacher(self) -> bool:
        """Whether a recipe must name a teacher checkpoint (`teacher_model_name_or_path`)."""
        return self.teacher == "external"

    @property
    def paper(self) -> str:
        """`arXiv <id>`, as the CLI and the demo table print it."""
        return f"arXiv {self.paper_id}"


_GKD_PAPER = ("2306.13649", "On-Policy Distillation of Language Models: Learning from Self-Generated Mistakes")
_EGRSD_PAPER = ("2605.13255", "EGRSD: Entropy-Guided Reinforced Self-Distillation")
_ATESD_PAPER = ("2605.11458", "ATESD: Adaptive Teacher Exposure for Self-Distillation")
_OPD = ("trl_opd.trainers.opd_config:OPDConfig", "trl_opd.trainers.opd_trainer:OPDTrainer")
_MOTAB = ("trl_opd.trainers.motab_config:MOTABConfig", "trl_opd.trainers.motab_trainer:MOTABTrainer")
_TROPD = ("trl_opd.trainers.tropd_config:TrOPDConfig", "trl_opd.trainers.tropd_trainer:TrOPDTrainer")
_EGRSD = ("trl_opd.trainers.egrsd_config:EGRSDConfig", "trl_opd.trainers.egrsd_trainer:EGRSDTrainer")
_ATESD = ("trl_opd.trainers.atesd_config:ATESDConfig", "trl_opd.trainers.atesd_trainer:ATESDTrainer")
_EGRSD_COLUMNS = ("prompt", "answer", "solution")

METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in [
        MethodSpec(
            "opd",
            "OPD",
            *_OPD,
            "distillation",
            *_GKD_PAPER,
            "external",
            ("prompt",),
            description="on-policy distillation, TRL DistillationTrainer with JSD_β or K1",
        ),
        MethodSpec(
            "gkd",
            "GKD",
            "trl_opd.trainers.baselines:GKDBaselineConfig",
            "trl.experimental.gkd:GKDTrainer",
            "gkd",
            *_GKD_PAPER,
            "external",
            ("prompt", "solution"),
            description="generalized KD, TRL GKDTrainer",
            in_demo=False,
        ),
        MethodSpec(
            "grpo",
            "GRPO",
            "trl_opd.trainers.baselines:GRPOBaselineConfig",
            "trl:GRPOTrainer",
            "grpo",
            "2402.03300",
            "DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language Models",
            "none",
            ("prompt", "answer"),
            description="TRL GRPOTrainer with the verifiable math reward",
            in_demo=False,
        ),
        MethodSpec(
            "motab",
            "MOTAB",
            *_MOTAB,
            "distillation",
            "2605.19433",
            "MOTAB: Monitoring Trajectories And Backtracking for on-policy distillation",
            "external",
            ("prompt",),
            description="monitored rollouts that backtrack when the student strays",
            baselines=("opd",),
        ),
        MethodSpec(
            "tropd",
            "TrOPD",
            *_TROPD,
            "distillation",
            "2606.01249",
            "TrOPD: Trust Region On-Policy Distillation",
            "external",
            ("prompt",),
            description="trust-region OPD with top-k outliers, teacher-prefix guidance and collapse repair",
            baselines=("opd",),
        ),
        MethodSpec(
            "egrsd",
            "EGRSD",
            *_EGRSD,
            "grpo",
            *_EGRSD_PAPER,
            "self",
            _EGRSD_COLUMNS,
            description="entropy-gated reinforced self-distillation",
            baselines=("grpo", "rlsd"),
        ),
        MethodSpec(
            "cl-egrsd",
            "CL-EGRSD",
            *_EGRSD,
            "grpo",
            *_EGRSD_PAPER,
            "self",
            _EGRSD_COLUMNS,
            {"entropy_lookahead": 32},
            description="EGRSD with a causal entropy lookahead",
            in_demo=False,
            baselines=("grpo", "rlsd"),
        ),
        MethodSpec(
            "rlsd",
            "RLSD",
            *_EGRSD,
            "grpo",
            "2604.03128",
            "RLSD: Reinforced Self-Distillation",
            "self",
            _EGRSD_COLUMNS,
            {"g_min": 1.0, "self_teacher_check": "warn"},  # as published: no fallback to GRPO
            description="EGRSD with the entropy gate off, g_min = 1",
            in_demo=False,
            baselines=("grpo",),
        ),
        MethodSpec(
            "atesd",
            "ATESD",
            *_ATESD,
            "distillation",
            *_ATESD_PAPER,
            "self",
            ("prompt", "solution"),
            description="self-distillation with a learned teacher-exposure controller",
            baselines=("opsd",),
        ),
        MethodSpec(
            "opsd",
            "OPSD",
            *_ATESD,
            "distillation",
            *_ATESD_PAPER,
            "self",
            ("prompt", "solution"),
            {"exposure_policy": "fixed", "alpha": 1.0, "teacher_collapse_logp": None, "collapse_repair": False},
            description="on-policy self-distillation: ATESD at fixed full reference exposure",
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
