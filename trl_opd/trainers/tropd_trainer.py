# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""[`TrOPDTrainer`]: trust-region on-policy distillation with outlier handling and teacher-prefix guidance."""

from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Any

import torch
from trl.generation.vllm_generation import VLLMGeneration

from ..ops import masked_mean
from ..ops.chunked_topk import FusedOutlierKL
from ..ops.tropd import (
    linear_decay,
    prefix_length,
    provenance_mask,
    tropd_token_losses,
    trust_cutoff,
    trust_ratio,
)
from .opd_trainer import OPDTrainer
from .tropd_config import TrOPDConfig


class TrOPDTrainer(OPDTrainer):
    r"""
    Trust-region on-policy distillation (TrOPD, arXiv 2606.01249) on [`OPDTrainer`].

    What differs from the parent:
    - [`TrOPDTrainer.token_losses`] routes each completion token: student tokens whose trust ratio
      `min(p_T(y_t)/p_S(y_t), 1)` passes the trust mask get the fused pass's dense JSD_`beta` (the parent's per-token
      loss; `trust_region_loss="k1"`: the paper's K1 policy-gradient loss); the other student tokens
      (outliers) get the forward KL over the teacher's top-k (with a tail bucket, or renormalised), weighted by
      `lambda_out`; teacher-written prefix tokens get the fused pass's teacher-forced JSD_`beta` (forward KL by
      default), weighted by `lambda_off`. The outlier KL is computed by the parent's fused pass itself
      ([`TrOPDTrainer.fused_outlier_kl`], [`~trl_opd.ops.chunked_topk.FusedOutlierKL`]): the teacher's top-k from
      the pass's own tiles, its gradient in the pass's backward (no extra projection, no full logits).
    - Guidance ([`TrOPDTrainer._generate_single_turn`]): in training, with probability `p_guide(step)` a prompt starts
      from the first `rho(step)` share of a teacher rollout and the student continues from prompt + prefix. The
      teacher rolls out the student's prompt through the parent's own generation layer with the teacher swapped in
      (transformers `generate` under `unwrap_model_for_generation`, or a second vLLM engine/server). The completion
      is prefix + continuation (cut to `max_completion_length`); the batch gets `teacher_token_mask` `(B, C)`, 1 on
      teacher-written tokens.
    - Collapse repair (the parent's `collapse_repair`, on by default here): where a student token's teacher log-prob
      falls below `teacher_collapse_logp`, [`TrOPDTrainer.repair_continuations`] has the teacher sample the rest
      through the same generation layer (so it runs under ZeRO-3, FSDP and vLLM, unlike the parent's greedy repair),
      and those tokens join `teacher_token_mask`.
    - Logged: `tropd/loss_trust_region`, `tropd/loss_outlier`, `tropd/loss_prefix` (per-token means of the unweighted
      parts over the loss tokens), `tropd/trusted_fraction` and `tropd/mean_trust_ratio` (over student tokens),
      `guidance/guided_fraction` (prompts given a non-empty prefix), `guidance/mean_prefix_length` (over those),
      `guidance/p_guide`, `guidance/rho`.

    With `trust_threshold=0`, guidance off and no collapse handling (`teacher_collapse_logp=None`,
    `collapse_repair=False`) the loss and gradients are the parent's with `divergence="jsd"` (with `divergence="k1"`
    at `trust_region_loss="k1"`).
    """

    _tag_names = ["trl", "trl-opd", "on-policy-distillation", "tropd"]
    _name = "TrOPD"
    _paper = {
        "title": "TrOPD: Trust Region On-Policy Distillation",
        "id": "2606.01249",
    }  # TRL's card would say GKD (inherited)

    def __init__(self, model, teacher_model=None, args: TrOPDConfig | None = None, **kwargs):
        """The parent's arguments (`train_dataset=...`, `peft_config=...` by keyword after the first three)."""
        args = args if args is not None else TrOPDConfig(output_dir="tropd-output")
        if not isinstance(args, TrOPDConfig):
            raise TypeError(f"TrOPDTrainer needs a TrOPDConfig, got {type(args).__name__}")
        super().__init__(model=model, teacher_model=teacher_model, args=args, **kwargs)
        vocab = self.accelerator.unwrap_model(self.model).config.get_text_config().vocab_size
        if args.outlier_top_k > vocab:
            raise ValueError(f"outlier_top_k ({args.outlier_top_k}) is larger than the vocabulary ({vocab})")
        if args.guidance_enabled and self.tools:
            raise ValueError("TrOPD guidance does not support tool calling: set guidance_prob_start: 0 or drop tools")
        if args.guidance_enabled and self.teacher_model is None:
            raise ValueError(
                "TrOPD guidance needs a separate teacher model to write prefixes (this teacher is the student's own "
                "weights): pass a teacher or set guidance_prob_start: 0"
            )
        if args.collapse_repair and self.teacher_model is None and self._sharded_weights():
            raise ValueError(
                "TrOPD's collapse_repair with a self-teacher writes greedily on whole weights, not under ZeRO-3 or "
                "FSDP: pass a teacher, launch with ddp or zero2, or set collapse_repair: false"
            )
        self._pending_prefix_lengths: list[int] | None = None
        self.teacher_vllm_generation = None
        teacher_writes = args.guidance_enabled or args.collapse_repair
        if self.use_vllm and teacher_writes and self.teacher_model is not None:  # built on every rank at once
            self.teacher_vllm_generation = self._build_teacher_vllm(args)

    # ----------------------------------------------------------------- guidance
    def guidance_schedule(self) -> tuple[float, float]:
        """`(p_guide(step), rho(step))` at the current optimizer step: linear decays to 0 (pure, from the config)."""
        args, step, total = self.args, self.state.global_step, self.state.max_steps
        return (
            linear_decay(step, total, args.guidance_prob_start, args.guidance_prob_decay_share),
            linear_decay(step, total, args.guidance_rho_start, args.guidance_rho_decay_share),
        )

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, has_tool_images=False):
        """The parent's generation, preceded (in training, while `p_guide, rho > 0`) by teacher prefixes.

        Each guided prompt's student generation starts from `prompt + prefix`; the returned completion is
        `prefix + continuation`. The prefix lengths are kept for [`_generate_and_score_completions`].
        """
        p_guide, rho = self.guidance_schedule()
        if not self.model.training or not self.args.guidance_enabled or images is not None:
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, has_tool_images)
        prefixes: list[list[int]] = [[] for _ in prompt_ids]
        if p_guide > 0.0 and rho > 0.0:
            rng = random.Random(
                f"{self.args.seed}-{self.state.global_step}-{self._step}-{self.accelerator.process_index}"
            )
            guided = [rng.random() < p_guide for _ in prompt_ids]
            # The teacher rolls out every prompt of the rank: vLLM's server and tensor-parallel paths slice their
            # gathered outputs by rank assuming equal counts, and ZeRO-3 gathers must stay in step across ranks.
            rollouts = self.teacher_rollouts(prompt_ids)
            for i, rollout in enumerate(rollouts):
                ends_with_eos = bool(rollout) and rollout[-1] in self.eos_token_ids
                if guided[i]:
                    prefixes[i] = list(rollout[: prefix_length(len(rollout), rho, ends_with_eos)])
        contexts = [list(p) + x for p, x in zip(prompt_ids, prefixes)]
        continuations = super()._generate_single_turn(contexts, images, multimodal_fields, has_tool_images)
        limit = self.max_completion_length
        completions = [(x + list(c))[:limit] for x, c in zip(prefixes, continuations)]
        if self._sampler_logps is not None:  # the teacher's prefix was not sampled by the student's engine
            nan = float("nan")
            self._sampler_logps = [([nan] * len(x) + list(s))[:limit] for x, s in zip(prefixes, self._sampler_logps)]
        self._pending_prefix_lengths = [min(len(x), limit) for x in prefixes]
        self._log_guidance(self._pending_prefix_lengths, p_guide, rho)
        return completions

    def repair_continuations(
        self, prefixes: list[list[int]], budgets: list[int], collapsed: list[bool]
    ) -> dict[int, list[int]]:
        """The parent's hook, through the guidance's generation layer ([`teacher_rollouts`]): the teacher samples a
        continuation of every row's prefix (a row that did not collapse asks for its prompt's, discarded), so every
        process makes the same calls with as many prompts (ZeRO-3/FSDP `generate`, vLLM). A self-teacher (no
        separate teacher model) writes greedily, as in the parent."""
        if self.teacher_model is None:
            return super().repair_continuations(prefixes, budgets, collapsed)
        rollouts = self.teacher_rollouts(prefixes)
        return {b: list(rollouts[b][: budgets[b]]) for b, c in enumerate(collapsed) if c}

    def teacher_rollouts(self, prompt_ids: list[list[int]]) -> list[list[int]]:
        """Teacher completions (EOS included, nothing after it) through the parent's generation layer."""
        with self._teacher_generates():
            return super()._generate_single_turn(prompt_ids, None, {})

    @contextmanager
    def _teacher_generates(self):
        """Swap the teacher in where the parent's `_generate_single_turn` looks for the generating model: the wrapped
        model (transformers path) and the vLLM engine (the teacher's weights are never synced)."""
        saved = (self.model_wrapped, getattr(self, "vllm_generation", None), getattr(self, "_last_loaded_step", None))
        self.model_wrapped = self.teacher_model
        if self.use_vllm:
            self.vllm_generation, self._last_loaded_step = self.teacher_vllm_generation, self.state.global_step
        try:
            yield
        finally:
            self.model_wrapped = saved[0]
            if self.use_vllm:
                self.vllm_generation, self._last_loaded_step = saved[1], saved[2]

    def _build_teacher_vllm(self, args: TrOPDConfig) -> VLLMGeneration:
        """A second [`~trl.generation.vllm_generation.VLLMGeneration`] holding the teacher (colocated engine, or a
        `trl vllm-serve --model <teacher>` server), with the student's sampling settings."""
        return VLLMGeneration(
            model=self._unwrap(self.teacher_model),
            accelerator=self.accelerator,
            processing_class=self.processing_class,
            mode=args.teacher_vllm_mode or args.vllm_mode,
            server_base_url=args.teacher_vllm_server_base_url,
            server_host=args.vllm_server_host,
            server_port=args.teacher_vllm_server_port,
            group_port=args.teacher_vllm_group_port,
            server_timeout=args.vllm_server_timeout,
            tensor_parallel_size=args.vllm_tensor_parallel_size,
            gpu_memory_utilization=args.teacher_vllm_gpu_memory_utilization,
            max_model_length=args.vllm_max_model_length,
            max_num_seqs=args.per_device_train_batch_size
            * args.vllm_tensor_parallel_size
            * args.gradient_accumulation_steps,
            model_impl=args.vllm_model_impl,
            trust_remote_code=args.trust_remote_code,
            repetition_penalty=self.repetition_penalty,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            min_p=self.min_p,
            max_completion_length=self.max_completion_length,
            logprobs=None,
            generation_kwargs=args.generation_kwargs,
        )

    def _log_guidance(self, prefix_lengths: list[int], p_guide: float, rho: float) -> None:
        lengths = self.accelerator.gather(torch.tensor(prefix_lengths, device=self.accelerator.device)).float()
        guided = lengths > 0
        metrics = self._metrics["train"]
        metrics["guidance/guided_fraction"].append(guided.float().mean().item())
        metrics["guidance/mean_prefix_length"].append(lengths[guided].mean().item() if guided.any() else 0.0)
        metrics["guidance/p_guide"].append(p_guide)
        metrics["guidance/rho"].append(rho)

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        """The parent's batch plus `teacher_token_mask` `(B, C)`: 1 on teacher-written completion tokens, the guidance
        prefix and, with `collapse_repair`, the teacher's continuation after a collapse (`teacher_written`)."""
        self._pending_prefix_lengths = None
        output = super()._generate_and_score_completions(inputs)
        completion_mask = output["completion_mask"]
        lengths = self._pending_prefix_lengths or [0] * completion_mask.size(0)
        self._pending_prefix_lengths = None
        teacher_tokens = provenance_mask(lengths, completion_mask.size(1), completion_mask.device)
        if "teacher_written" in output:
            teacher_tokens = torch.maximum(teacher_tokens, output["teacher_written"].to(teacher_tokens.dtype))
        output["teacher_token_mask"] = teacher_tokens * completion_mask
        return output

    # ----------------------------------------------------------------- loss
    def fused_outlier_kl(self, inputs: dict[str, Any]) -> FusedOutlierKL:
        """The outlier KL, computed by the parent's fused pass on the student tokens outside the trust region (the
        trust cutoff drawn here, the ratio there): the teacher's top-k from the pass's own tiles, its gradient in the
        pass's backward ([`~trl_opd.ops.chunked_topk.FusedOutlierKL`])."""
        mask = self.loss_mask(inputs)
        on_policy = mask * (1 - inputs.get("teacher_token_mask", torch.zeros_like(mask)).to(mask.device))
        cutoff = trust_cutoff(mask, self.args.trust_mode, self.args.trust_threshold)
        return FusedOutlierKL(
            self.args.outlier_top_k, self.args.outlier_tail_bucket, on_policy.bool(), cutoff, self.args.lambda_out != 0
        )

    def token_losses(self, stats: dict[str, torch.Tensor], inputs: dict[str, Any]) -> torch.Tensor:
        """`ℓ_t = (1 − O_t)[M_t ℓ^TR_t + λ_out (1 − M_t) KL_topk,t] + λ_off O_t JSD_β,t`, `(B, K)`; see
        [`~trl_opd.ops.tropd.tropd_token_losses`]. `O` is `teacher_token_mask`, `M` the trust mask (1 off the fused
        pass's `outlier` positions), `ℓ^TR` the dense `JSD_β` (`trust_region_loss="divergence"`) or the K1 loss
        (`"k1"`)."""
        student_logp, teacher_logp = stats["student_logp"], stats["teacher_logp"]
        mask = self.loss_mask(inputs).to(student_logp.device)
        prefix = inputs.get("teacher_token_mask", torch.zeros_like(mask)).to(mask.device) * mask
        on_policy = mask * (1 - prefix)
        ratio = trust_ratio(student_logp, teacher_logp)
        trusted = 1.0 - stats["outlier"]
        # Parts not routed anywhere are constant zeros, so they cost nothing in the backward.
        prefix_div = stats["divergence"] if prefix.any() else torch.zeros_like(student_logp)
        in_region = self.k1_losses(stats, inputs) if self.args.trust_region_loss == "k1" else stats["divergence"]
        parts = tropd_token_losses(
            in_region,
            stats["outlier_kl"],
            prefix_div,
            trusted,
            prefix,
            self.args.lambda_out,
            self.args.lambda_off,
        )
        self._log_trust(parts, ratio, trusted, on_policy, mask)
        return parts["total"]

    def _log_trust(self, parts, ratio, trusted, on_policy, mask) -> None:
        metrics = self._metrics["train" if self.model.training else "eval"]
        for name in ("trust_region", "outlier", "prefix"):
            metrics[f"tropd/loss_{name}"].append(masked_mean(parts[name].detach(), mask).item())
        metrics["tropd/trusted_fraction"].append(masked_mean(trusted, on_policy).item())
        metrics["tropd/mean_trust_ratio"].append(masked_mean(ratio, on_policy).item())
