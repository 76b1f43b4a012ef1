# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""Facts about the machine the run is on, CPU-safe training defaults, and a cached `unwrap_model`.

TRL's configs default to `bf16=True` and gradient checkpointing; without a GPU, transformers raises on `bf16`. Every
trl-opd config (the baselines' included) applies [`CPUSafeConfigMixin`], so a recipe written for GPUs runs unchanged
on a CPU: the values are switched off and one log line says so.
"""

from __future__ import annotations

import logging
import os

import torch


logger = logging.getLogger("trl_opd")


def has_accelerator() -> bool:
    """Whether a GPU-class device that supports bf16 training is present (CUDA/ROCm or XPU)."""
    if torch.cuda.is_available():
        return True
    xpu = getattr(torch, "xpu", None)
    return bool(xpu is not None and xpu.is_available())


def launched_sharded() -> str | None:
    """`"ZeRO-3"` or `"FSDP"` when `accelerate launch` asked for parameter sharding (its environment variables), else
    `None`: known before any model is loaded, so a config can refuse a setting sharding does not support."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return "FSDP"
    if os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3":
        return "ZeRO-3"
    return None


class CPUSafeConfigMixin:
    """Turns `bf16`/`fp16` and gradient checkpointing off (one log line) and `use_cpu` on when no accelerator is present.

    Mix in before the TRL config class: `class MyConfig(CPUSafeConfigMixin, DistillationConfig)`.
    """

    def __post_init__(self):
        if not has_accelerator():
            changed = [name for name in ("bf16", "fp16", "gradient_checkpointing") if getattr(self, name, False)]
            if getattr(self, "bf16", False) is None:  # TRL's default: bf16 unless fp16
                changed.insert(0, "bf16")
            if changed:
                logger.warning("No GPU found: training on CPU; switched off: %s.", ", ".join(changed))
            self.bf16, self.fp16, self.gradient_checkpointing = False, False, False
            self.use_cpu = True  # also makes several processes (torchrun) use gloo on the CPU
        super().__post_init__()


class UnwrapCacheMixin:
    """`_unwrap(model)`: `accelerator.unwrap_model(model)`, computed once per wrapper object.

    accelerate's `unwrap_model` reads package metadata (`is_deepspeed_available`) on every call, about 2 ms on a CPU:
    a tenth of a tiny model's training step when a trainer unwraps several times per step. The wrapper is compared by
    identity, so a re-wrapped model (after `accelerator.prepare`) is unwrapped afresh.
    """

    def _unwrap(self, model):
        cache = self.__dict__.setdefault("_unwrapped", {})  # id(wrapper) -> (wrapper, module)
        if cache.get(id(model), (None,))[0] is not model:
            cache[id(model)] = (model, self.accelerator.unwrap_model(model))
        return cache[id(model)][1]
