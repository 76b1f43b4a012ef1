# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""Pure tensor math: tensors in, tensors out. No trainer state, configs or logging; never imports a trainer.

Shared math, re-exported here: `divergences`, `chunked` (fused chunked statistics), `chunked_topk` (the top-k forward
KL from hidden states), `reductions`, `policy_gradient`.
Per-method math, imported from its module (named by method): `motab`, `tropd`, `egrsd`, `atesd`.
"""

from .chunked import FusedDistillationFunction, fused_distillation_stats, token_logprobs_and_entropy
from .chunked_topk import chunked_topk_forward_kl
from .divergences import (
    forward_kl,
    generalized_jsd,
    k1_estimator,
    k3_estimator,
    reverse_kl,
    skew_kl,
    topk_forward_kl,
)
from .policy_gradient import k1_advantage, k1_policy_gradient_loss
from .reductions import global_token_normalizer, masked_global_mean, masked_mean, masked_sum


__all__ = [
    "FusedDistillationFunction",
    "chunked_topk_forward_kl",
    "forward_kl",
    "fused_distillation_stats",
    "generalized_jsd",
    "global_token_normalizer",
    "k1_advantage",
    "k1_estimator",
    "k1_policy_gradient_loss",
    "k3_estimator",
    "masked_global_mean",
    "masked_mean",
    "masked_sum",
    "reverse_kl",
    "skew_kl",
    "token_logprobs_and_entropy",
    "topk_forward_kl",
]
