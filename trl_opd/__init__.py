# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""trl-opd: on-policy distillation trainers for LLM reasoning, on Hugging Face TRL.

Configs and trainers are imported lazily (`from trl_opd import OPDTrainer`), so `import trl_opd` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any


__version__ = "0.1.0"

_EXPORTS = {
    "OPDConfig": "trl_opd.opd_config",
    "OPDTrainer": "trl_opd.opd_trainer",
    "GKDBaselineConfig": "trl_opd.baselines",
    "GRPOBaselineConfig": "trl_opd.baselines",
    "MOTABConfig": "trl_opd.motab_config",
    "MOTABTrainer": "trl_opd.motab_trainer",
    "TrOPDConfig": "trl_opd.tropd_config",
    "TrOPDTrainer": "trl_opd.tropd_trainer",
    "EGRSDConfig": "trl_opd.egrsd_config",
    "EGRSDTrainer": "trl_opd.egrsd_trainer",
    "ATESDConfig": "trl_opd.atesd_config",
    "ATESDTrainer": "trl_opd.atesd_trainer",
    "math_accuracy_reward": "trl_opd.rewards",
    "METHODS": "trl_opd.methods",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'trl_opd' has no attribute {name!r}")
