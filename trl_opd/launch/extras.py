# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""What a run needs beyond the base install, and the extra (`pip install 'trl-opd[...]'`) that brings it.

A recipe asks for optional packages through its keys: `use_vllm: true` (vLLM generation), `eval_tasks` (lighteval), `report_to: trackio` or
`wandb` (a logger), `load_in_4bit`/`load_in_8bit` (bitsandbytes), `deepspeed:` (a DeepSpeed config). A DeepSpeed
accelerate config (`accelerate launch --config_file recipes/accelerate_configs/zero3.yaml`) is not part of the recipe:
it is seen through the environment accelerate sets for the processes it launches (`ACCELERATE_USE_DEEPSPEED=true`),
so a dry run (not launched through accelerate) cannot see it; the recipe headers name that extra.

A dry run reports every need as a `needs:` line (a missing package is a warning there: recipes are written for GPU
machines); a real run stops with one `error:` line naming the extra, before any model loads.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import Any

from ..errors import UserError


@dataclass(frozen=True)
class Need:
    """One optional package a run needs: why (`reason`), the module to import, and how to install it."""

    reason: str
    module: str
    install: str

    @property
    def available(self) -> bool:
        try:
            return importlib.util.find_spec(self.module) is not None
        except (ImportError, ValueError):
            return False


class MissingExtraError(UserError):
    """A run needs an optional package that is not installed."""


def _extra(name: str) -> str:
    return f"pip install 'trl-opd[{name}]'"


def _report_to(config: Any) -> list[str]:
    value = getattr(config, "report_to", None) or []
    values = [value] if isinstance(value, str) else list(value)
    return [str(v).lower() for v in values]


def _truthy(value: str | None) -> bool:
    return str(value or "").strip().lower() in {"1", "true", "yes", "on"}


def run_needs(config: Any, model_args: Any = None, script_args: Any = None) -> list[Need]:
    """The optional packages a parsed run needs, from its config, model config, script arguments (`eval_tasks`) and
    the accelerate environment."""
    needs = []
    if script_args is not None and getattr(script_args, "eval_tasks", None):
        needs.append(Need("eval_tasks", "lighteval", _extra("eval")))
    if getattr(config, "use_vllm", False):
        needs.append(Need("use_vllm: true", "vllm", _extra("vllm")))
    loggers = _report_to(config)
    if "trackio" in loggers:
        needs.append(Need("report_to: trackio", "trackio", _extra("trackio")))
    if "wandb" in loggers:
        needs.append(Need("report_to: wandb", "wandb", "pip install wandb"))
    if model_args is not None and (
        getattr(model_args, "load_in_4bit", False) or getattr(model_args, "load_in_8bit", False)
    ):
        needs.append(Need("load_in_4bit/load_in_8bit", "bitsandbytes", _extra("quant")))
    if getattr(config, "deepspeed", None) or _truthy(os.environ.get("ACCELERATE_USE_DEEPSPEED")):
        needs.append(Need("a DeepSpeed config", "deepspeed", _extra("deepspeed")))
    return needs


def check_launch_needs() -> None:
    """Before the recipe is parsed: `accelerate launch` with a DeepSpeed config sets `ACCELERATE_USE_DEEPSPEED=true`,
    and transformers' `TrainingArguments` then fails with a raw traceback when deepspeed is not installed."""
    if _truthy(os.environ.get("ACCELERATE_USE_DEEPSPEED")):
        check_needs(
            [Need("a DeepSpeed accelerate config (ACCELERATE_USE_DEEPSPEED=true)", "deepspeed", _extra("deepspeed"))]
        )


def needs_line(needs: list[Need]) -> str | None:
    """`needs: vllm (use_vllm: true) ok, trackio (report_to: trackio) missing: pip install 'trl-opd[trackio]'`."""
    if not needs:
        return None
    parts = [f"{n.module} ({n.reason}) " + ("ok" if n.available else f"missing: {n.install}") for n in needs]
    return "needs: " + ", ".join(parts)


def check_needs(needs: list[Need]) -> None:
    """Raise [`MissingExtraError`] for the first need that is not installed."""
    for need in needs:
        if not need.available:
            raise MissingExtraError(
                f"{need.reason} needs the `{need.module}` package, which is not installed: {need.install}"
            )


__all__ = ["MissingExtraError", "Need", "check_launch_needs", "check_needs", "needs_line", "run_needs"]
