# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""trl-opd: on-policy distillation trainers for LLM reasoning, on Hugging Face TRL.

Configs and trainers are imported lazily (`from trl_opd import OPDTrainer`), so `import trl_opd` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any


__version__ = "0.1.0"

_EXPORTS = {
    "OPDConfig": "trl_opd.trainers.opd_config",
    "OPDTrainer": "trl_opd.trainers.opd_trainer",
    "GKDBaselineConfig": "trl_opd.trainers.baselines",
    "GRPOBaselineConfig": "trl_opd.trainers.baselines",
    "MOTABConfig": "trl_opd.trainers.motab_config",
    "MOTABTrainer": "trl_opd.trainers.motab_trainer",
    "TrOPDConfig": "trl_opd.trainers.tropd_config",
    "TrOPDTrainer": "trl_opd.trainers.tropd_trainer",
    "EGRSDConfig": "trl_opd.trainers.egrsd_config",
    "EGRSDTrainer": "trl_opd.trainers.egrsd_trainer",
    "ATESDConfig": "trl_opd.trainers.atesd_config",
    "ATESDTrainer": "trl_opd.trainers.atesd_trainer",
    "math_accuracy_reward": "trl_opd.rewards",
    "METHODS": "trl_opd.launch.methods",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'trl_opd' has no attribute {name!r}")
