# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""How a causal LM turns its last hidden state into logits, read from the model as `trl.DistillationTrainer` reads it.

Every chunked pass of trl-opd projects `h · Wᵀ` itself instead of calling the model's `lm_head`, so it must apply what
the model's forward would: the head's bias, a logit scale (Cohere `logit_scale`, Muse `output_multiplier`, Falcon-H1
`lm_head_multiplier`, Granite/MiniCPM3 `1 / logits_scaling`, HyperCLOVA X `logits_scaling`) and a final softcap
(Gemma 2/3 `final_logit_softcapping`).
"""

from __future__ import annotations

from torch import nn

from .ops.chunked import LogitHead


def logit_head(model: nn.Module) -> LogitHead:
    """The [`~trl_opd.ops.chunked.LogitHead`] of `model` (an unwrapped causal LM, PEFT or not): its output
    embedding's bias and its config's logit scale and softcap, in TRL's order of precedence."""
    config = model.config.get_text_config()
    scale = None
    for name in ("logit_scale", "output_multiplier", "lm_head_multiplier"):
        scale = getattr(config, name, None)
        if scale is not None:
            break
    logits_scaling = getattr(config, "logits_scaling", None)
    if scale is None and logits_scaling is not None:
        scale = logits_scaling if config.model_type == "hyperclovax" else 1.0 / logits_scaling
    return LogitHead(
        bias=getattr(model.get_output_embeddings(), "bias", None),
        scale=1.0 if scale is None else float(scale),
        softcap=getattr(config, "final_logit_softcapping", None),
    )
