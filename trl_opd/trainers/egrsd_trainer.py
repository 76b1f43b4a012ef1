# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""[`EGRSDTrainer`]: GRPO whose advantages are reweighted per token by a privileged self-teacher (EGRSD, CL-EGRSD)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch
from accelerate.utils import is_peft_model
from torch import nn
from transformers import PreTrainedModel
from trl import GRPOTrainer
from trl.models import prepare_deepspeed, prepare_fsdp
from trl.models.utils import _ForwardRedirection, disable_gradient_checkpointing
from trl.trainer.utils import maybe_gather_lm_head_ctx, pad

from ..data import ColumnMap, prepare_dataset, privileged_prompt
from ..heads import logit_head
from ..ops import token_logprobs_and_entropy
from ..ops.egrsd import (
    egrsd_token_advantages,
    likelihood_ratio_magnitude,
    normalize_gate,
    normalize_per_rollout,
    penalized_rollout_mask,
    rank_agreement,
    rollout_means,
)
from ..ops.reductions import after_collapse_weights
from ..runtime import UnwrapCacheMixin
from ..teacher import (
    SelfTeacherCheckError,
    TeacherHandle,
    check_privileged_prompts,
    completion_hidden_states,
    scoring_teacher,
    self_teacher_copy,
    self_teacher_verdict,
    tokenize_teacher_prompts,
)
from .egrsd_config import EGRSDConfig
from .egrsd_stats import EGRSDStatsMixin
from .prompts import PromptLimitMixin


logger = logging.getLogger("trl_opd")


class EGRSDTrainer(EGRSDStatsMixin, UnwrapCacheMixin, PromptLimitMixin, GRPOTrainer):
    r"""
    Entropy-Guided Reinforced Self-Distillation (arXiv 2605.13255) on [`~trl.GRPOTrainer`].

    What differs from the parent: after the parent has generated and scored the rollouts (group advantages `A_i`
    from the verifiable reward), [`EGRSDTrainer._generate_and_score_completions`] scores the sampled tokens with the
    self-teacher (the student's initial weights, seeing the reference solution) in one chunked pass, and replaces the
    `(B,)` advantages by token advantages `(B, T)`:

    `Â_t = A_i · clip(exp(sign(A_i)·Δ_t), 1−ε_w, 1+ε_w) · (g_min + (1−g_min)·exp(−H̃_t/τ_H))`,

    `Δ_t = sg(log p_T(y_t) − log p_S(y_t))`, `H̃` the teacher entropy (or, for CL-EGRSD, its minimum over the next
    `entropy_lookahead` tokens), `τ_H` its median (or mean, `gate_tau`) over the loss tokens of the global generation
    batch. The parent's clipped surrogate and loss aggregation (`loss_type`) are used unchanged. With
    `teacher_collapse_logp` (the guard), every token after the first one whose teacher log-prob falls below it keeps the
    plain `A_i` (the gate's mean is then taken over the trusted tokens); `teacher_rollouts: penalized` does the same
    for every token of a rollout with `A_i >= 0`. `weight_normalization: rollout` rescales the weights `m_t g_t` to mean 1 over each
    rollout's (trusted) loss tokens instead, so the teacher only moves credit within a rollout. With `g_min=1` this is
    RLSD; with `g_min=1, epsilon_w=0` it is the parent exactly (the teacher is then not run). `magnitude_trust: rank`
    scales `ε_w` each step by how well the rollouts' mean `Δ` ranks rewarded above penalised rollouts (`max(0, D)`,
    Somers' `D`; logged as `egrsd/magnitude_trust`). When the parent has no old log-probs (no vLLM, aligned steps)
    and no option needs `Δ` at generation (`delta_centering`, `weight_normalization`, `magnitude_trust`), `log p_S` is
    the loss forward's own: the magnitude is applied there ([`EGRSDTrainer.token_advantages`]) instead of after a
    second, no-grad student forward.

    Before the first step, [`EGRSDTrainer.check_self_teacher`] checks that the reference helps the self-teacher; where
    it does not, `self_teacher_check: fallback` (the default) trains with the parent's own advantages.

    The teacher is a frozen copy of the student (prepared like GRPO's reference model: ZeRO-3 / FSDP / device), or,
    with PEFT, the student with its adapter switched off (no copy); `self_teacher: live` scores with the current
    weights. Logged: `egrsd/gate_mean`, `egrsd/gate_below_half`, `egrsd/magnitude_mean`, `egrsd/teacher_entropy`,
    `egrsd/tau_H`, `egrsd/delta_mean`, `egrsd/delta_gap` (mean `Δ` on rewarded minus on penalised rollouts: near 0, the
    teacher's disagreement does not track the reward), next to the parent's `reward` and `completions/mean_length`.
    """

    _tag_names = ["trl", "trl-opd", "grpo", "egrsd"]
    _name = "EGRSD"
    _paper = {
        "title": "EGRSD: Entropy-Guided Reinforced Self-Distillation",
        "id": "2605.13255",
    }  # not GRPOTrainer's DeepSeekMath
    #: Dataset columns the trainer can read: the prompt, the answer (default reward) and the solution (teacher's
    #: context). Which of them a run needs is [`EGRSDTrainer.needed_columns`].
    required_columns: tuple[str, ...] = ("prompt", "answer", "solution")

    def __init__(
        self,
        model: str | PreTrainedModel,
        reward_funcs=None,
        args: EGRSDConfig | None = None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        reward_processing_classes=None,
        callbacks=None,
        optimizers=(None, None),
        quantization_config=None,
        peft_config=None,
        tools=None,
        rollout_func=None,
        environment_factory=None,
    ):
        args = args if args is not None else EGRSDConfig(output_dir="egrsd-output")
        if not isinstance(args, EGRSDConfig):
            raise TypeError(f"EGRSDTrainer needs an EGRSDConfig, got {type(args).__name__}")
        self._needed_columns = self.needed_columns(args, default_reward=reward_funcs is None)
        if train_dataset is not None:  # checked before any weights load
            train_dataset = prepare_dataset(train_dataset, list(self._needed_columns), ColumnMap(), "train dataset")
        if reward_funcs is None:
            from ..rewards import math_accuracy_reward

            reward_funcs = [math_accuracy_reward]
        teacher = None
        if args.self_teacher == "frozen" and self._needs_teacher(args):
            is_peft = peft_config is not None or (not isinstance(model, str) and is_peft_model(model))
            teacher = self_teacher_copy(model, "frozen", is_peft, args.model_init_kwargs)
        super().__init__(
            model=model,
            reward_funcs=reward_funcs,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            reward_processing_classes=reward_processing_classes,
            callbacks=callbacks,
            optimizers=optimizers,
            quantization_config=quantization_config,
            peft_config=peft_config,
            tools=tools,
            rollout_func=rollout_func,
            environment_factory=environment_factory,
        )
        self.teacher_model = self._prepare_teacher(teacher) if teacher is not None else None
        self._forward_redirection = _ForwardRedirection()
        self._teacher_prompt_ids: dict[str, torch.Tensor] = {}  # teacher prompt -> its token ids
        self._loss_inputs: dict[str, Any] | None = None  # a loss micro-batch waiting for its forward's log-probs
        self.teacher_weights_on = self._needs_teacher(args)  # False after the self-teacher check's fallback
        if self._needs_teacher(args) and train_dataset is not None:
            check_privileged_prompts(self, self.train_dataset)
        self.check_prompt_lengths(self.train_dataset)

    @staticmethod
    def _needs_teacher(args: EGRSDConfig) -> bool:
        """At `g_min=1, epsilon_w=0` every weight is 1: the teacher is neither built nor run."""
        return args.g_min < 1.0 or args.epsilon_w > 0.0

    @classmethod
    def needed_columns(cls, args: EGRSDConfig, default_reward: bool) -> tuple[str, ...]:
        """The dataset columns a run reads: `prompt`; `answer` when the default math reward scores it; `solution`
        when the self-teacher runs (it sees the reference). At the GRPO setting with user rewards: `prompt` only,
        as `trl.GRPOTrainer`."""
        needed = (
            {"prompt"}
            | ({"answer"} if default_reward else set())
            | ({"solution"} if cls._needs_teacher(args) else set())
        )
        return tuple(c for c in cls.required_columns if c in needed)

    def _prepare_teacher(self, teacher: nn.Module) -> nn.Module:
        if self.is_deepspeed_enabled:
            return prepare_deepspeed(teacher, self.accelerator)
        if self.is_fsdp_enabled:
            return prepare_fsdp(teacher, self.accelerator)
        return self.accelerator.prepare_model(teacher, evaluation_mode=True)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        self._signature_columns = list(dict.fromkeys([*self._signature_columns, *self._needed_columns]))

    # ----------------------------------------------------------------- teacher
    def teacher_prompt(self, example: dict[str, Any]) -> Any:
        """The prompt the self-teacher sees: the problem, the reference solution, a transition sentence, then the
        student's boxed-answer instruction ([`~trl_opd.data.privileged_prompt`])."""
        return privileged_prompt(example["prompt"], example["solution"])

    def tokenize_teacher_prompts(self, inputs: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded teacher prompt ids and mask `(B, P_T)`, through the parent's own prompt tokenization (each
        distinct prompt once: the G rollouts of a prompt share it, and kept across steps;
        [`~trl_opd.teacher.tokenize_teacher_prompts`])."""
        prompts = [self.teacher_prompt(x) for x in inputs]
        return tokenize_teacher_prompts(self, prompts, cache=self._teacher_prompt_ids)

    @contextlib.contextmanager
    def _teacher_module(self) -> Iterator[TeacherHandle]:
        """The teacher without gradients ([`~trl_opd.teacher.scoring_teacher`]): the frozen copy, or the student
        (adapter off when `self_teacher` is `frozen`, gradient checkpointing off for the scoring forward)."""
        adapter_off = self.args.self_teacher == "frozen"
        if self.teacher_model is None:
            student = self._unwrap(self.model)
            checkpointing = disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs)
        else:
            student, checkpointing = None, contextlib.nullcontext()
        teacher = self.teacher_model
        with checkpointing, scoring_teacher(teacher, self.accelerator, student, adapter_off, self._unwrap) as handle:
            yield handle

    @staticmethod
    def _score(teacher, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature, share_prompts):
        """Teacher log-probs of `completion_ids` and teacher entropy `(B, K)`: backbone (each distinct prompt once
        when `share_prompts`; [`~trl_opd.teacher.completion_hidden_states`]), then one chunked projection."""
        hidden = completion_hidden_states(
            teacher, prompt_ids, prompt_mask, completion_ids, completion_mask, share_prompts
        )
        weight, head = teacher.get_output_embeddings().weight, logit_head(teacher)
        with maybe_gather_lm_head_ctx(weight, head.bias):
            return token_logprobs_and_entropy(hidden.to(weight.device), weight, completion_ids, temperature, head)

    def teacher_token_stats(
        self, inputs: list[dict[str, Any]], output: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher log-probs of the sampled tokens and teacher entropy, `(B, T)` each, in micro-batches of
        `per_device_train_batch_size` rows; no full logits are held. The rollouts of one prompt in a micro-batch share
        its forward, except with sharded weights (ZeRO-3, FSDP: every process must make the same calls)."""
        prompt_ids, prompt_mask = self.tokenize_teacher_prompts(inputs)
        completion_ids, completion_mask = output["completion_ids"], output["completion_mask"]
        share = not (self.is_deepspeed_enabled or self.is_fsdp_enabled)
        step = self.args.per_device_train_batch_size
        logps, entropies = [], []
        with self._teacher_module() as teacher:
            for a in range(0, prompt_ids.size(0), step):
                rows = slice(a, a + step)
                logp, entropy = teacher.run(
                    self._forward_redirection,
                    self._score,
                    prompt_ids[rows],
                    prompt_mask[rows],
                    completion_ids[rows],
                    completion_mask[rows],
                    self.temperature,
                    share,
                )
                logps.append(logp.float())
                entropies.append(entropy.float())
        return torch.cat(logps), torch.cat(entropies)

    def student_token_logps(self, output: dict[str, torch.Tensor]) -> torch.Tensor:
        """Student log-probs of the sampled tokens `(B, T)`: the parent's `old_per_token_logps` when it computed them
        (vLLM, misaligned steps), else one no-grad forward through the parent's own log-prob path."""
        if output.get("old_per_token_logps") is not None:
            return output["old_per_token_logps"].float()
        completion_ids = output["completion_ids"]
        input_ids = torch.cat([output["prompt_ids"], completion_ids], dim=1)
        attention_mask = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
        with torch.no_grad(), disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            logps, _, _ = self._get_per_token_logps_and_entropies(
                self.model,
                input_ids,
                attention_mask,
                completion_ids.size(1),
                batch_size=self.args.per_device_train_batch_size,
            )
        return logps.float()

    # ----------------------------------------------------------------- self-teacher check
    def self_teacher_scores(self) -> dict[str, float]:
        """Mean log-prob per token the self-teacher gives the reference solutions of the first
        `self_teacher_check_rows` training rows, teacher-forced after the student's prompt (`none`) and after the
        privileged prompt (`full`, [`EGRSDTrainer.teacher_prompt`]), through the teacher path that scores rollouts
        ([`EGRSDTrainer._score`]). Every process scores the same rows."""
        rows = [self.train_dataset[i] for i in range(self._check_rows())]
        device, tok = self.accelerator.device, self._tokenizer
        solutions = [
            torch.tensor(tok(r["solution"], add_special_tokens=False)["input_ids"], device=device) for r in rows
        ]
        completion_ids = pad(solutions, padding_value=tok.pad_token_id, padding_side="right")
        completion_mask = pad([torch.ones_like(c) for c in solutions], padding_value=0, padding_side="right")
        share = not (self.is_deepspeed_enabled or self.is_fsdp_enabled)
        prompts = {"none": [r["prompt"] for r in rows], "full": [self.teacher_prompt(r) for r in rows]}
        scores = {}
        with torch.no_grad(), self._teacher_module() as teacher:  # one teacher set-up for both scorings
            for name, texts in prompts.items():
                prompt_ids, prompt_mask = tokenize_teacher_prompts(self, texts)
                logp, _ = teacher.run(
                    self._forward_redirection,
                    self._score,
                    prompt_ids,
                    prompt_mask,
                    completion_ids,
                    completion_mask,
                    1.0,
                    share,
                )
                scores[name] = (logp.float() * completion_mask).sum().item() / completion_mask.sum().item()
        return scores

    def _check_rows(self) -> int:
        """How many training rows the self-teacher check scores."""
        return min(self.args.self_teacher_check_rows, len(self.train_dataset))

    def check_self_teacher(self) -> None:
        """Log [`EGRSDTrainer.self_teacher_scores`] (`egrsd/self_teacher_logp_*`). Unless the full reference helps
        ([`~trl_opd.teacher.reference_helps`]): `fallback` warns in one line and
        switches the teacher's token weights off (plain GRPO from here on), `warn` only warns, `error` raises
        [`~trl_opd.teacher.SelfTeacherCheckError`]."""
        scores = self.self_teacher_scores()
        for name, value in scores.items():
            self._metrics["train"][f"egrsd/self_teacher_logp_{name}"].append(value)
        message = self_teacher_verdict(scores, self._check_rows())
        if message is None:
            return
        mode = self.args.self_teacher_check
        if mode == "error":
            raise SelfTeacherCheckError(f"{message} Set self_teacher_check: warn (or fallback) to train anyway.")
        if mode == "fallback":
            self.teacher_weights_on = False
            self._metrics["train"]["egrsd/teacher_off"].append(1.0)
        if self.accelerator.is_main_process:
            then = (
                "Training as plain GRPO (self_teacher_check: fallback); set self_teacher_check: warn to keep the "
                "teacher's token weights."
                if mode == "fallback"
                else "Set self_teacher_check: fallback to train as plain GRPO, or error to stop."
            )
            logger.warning("%s %s", message, then)

    def _prepare_for_training(self, max_steps, train_dataloader, resume_from_checkpoint):
        """transformers' preparation (models wrapped, a checkpoint loaded), then the self-teacher check when the
        teacher runs: before the progress bar and any optimizer step (a resumed run checks again)."""
        prepared = super()._prepare_for_training(max_steps, train_dataloader, resume_from_checkpoint)
        self.teacher_weights_on = self._needs_teacher(self.args)
        if self.teacher_weights_on and self.args.self_teacher_check != "off":
            self.check_self_teacher()
        return prepared

    # ----------------------------------------------------------------- advantages
    def _defers_magnitude(self, output: dict[str, Any]) -> bool:
        """Whether the magnitude waits for the loss: with `ε_w > 0`, no offset to gather (`delta_centering: none`), no
        per-rollout normalisation (`weight_normalization: none`), no trust to gather (`magnitude_trust: none`) and no
        old log-probs (no vLLM, aligned steps: the parent then scores the loss at the sampling weights), the student
        log-probs `Δ` needs are the loss forward's own, and the no-grad forward is skipped."""
        return (
            self.args.epsilon_w > 0.0
            and self.args.delta_centering == "none"
            and self.args.weight_normalization == "none"
            and self.args.magnitude_trust == "none"
            and "old_per_token_logps" not in output
        )

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        output = super()._generate_and_score_completions(inputs)
        if self._needs_teacher(self.args) and not self.teacher_weights_on:  # the self-teacher check's fallback
            return output  # GRPO's own advantages
        mask = output["completion_mask"]
        mask = mask * output["tool_mask"] if "tool_mask" in output else mask
        zeros = torch.zeros_like(mask, dtype=torch.float32)
        teacher_logp, teacher_entropy, student_logp = zeros, zeros, zeros  # at g_min=1, ε_w=0: every weight is 1
        if self._needs_teacher(self.args):
            teacher_logp, teacher_entropy = self.teacher_token_stats(inputs, output)
        deferred = self._defers_magnitude(output)
        if self.args.epsilon_w > 0.0 and not deferred:
            student_logp = self.student_token_logps(output)
        delta = teacher_logp - student_logp  # Δ (deferred: computed again in the loss, from its forward)
        # deferred: magnitude 1 here, applied in the loss
        epsilon_w = 0.0 if deferred else self._trusted_epsilon_w(delta, output["advantages"], mask)
        weights = egrsd_token_advantages(
            output["advantages"].float(),
            teacher_logp,
            student_logp,
            teacher_entropy,
            mask,
            g_min=self.args.g_min,
            epsilon_w=epsilon_w,
            lookahead=self.args.entropy_lookahead,
            tau=self._gate_tau(teacher_entropy, mask),
            delta_offset=self._delta_offset(delta, mask),
        )
        trust = self._teacher_trust(teacher_logp, mask, output["advantages"])  # None: every token takes the weights
        raw_gate = weights["gate"]
        trusted = mask if trust is None else mask * trust
        if self.args.weight_normalization == "rollout":
            token_weights = normalize_per_rollout(weights["magnitude"] * raw_gate, trusted)
            weights["advantages"] = output["advantages"].float().unsqueeze(-1) * token_weights * mask
        elif self.args.gate_normalization == "mean":
            weights = normalize_gate(weights, self._global_masked_mean(raw_gate, trusted))
        advantages = weights["advantages"]
        if trust is not None:  # the guard and `teacher_rollouts`: elsewhere, the plain group advantage
            plain = output["advantages"].float().unsqueeze(-1) * mask
            advantages = torch.where(trust.bool(), advantages, plain)
        sign = torch.sign(output["advantages"].float())  # (B,): the group advantages' signs, before the weights
        if deferred:
            output["egrsd_sign"] = sign
            output["egrsd_teacher_logps"] = teacher_logp
            if trust is not None:
                output["egrsd_trust"] = trust
        output["advantages"] = advantages.to(output["advantages"].dtype)
        self._log_weights(weights, raw_gate, teacher_entropy, None if deferred else delta, mask)
        if not deferred and self.args.epsilon_w > 0.0:  # Δ from both models (ε_w = 0 skips the student's)
            self._log_delta_gap(delta, sign, mask)
        return output

    def token_advantages(self, inputs: dict[str, Any], student_logp: torch.Tensor | None = None) -> torch.Tensor:
        """The `(B, T)` advantages the loss uses: `inputs["advantages"]`, times the magnitude when it was deferred
        ([`EGRSDTrainer._defers_magnitude`]), from `student_logp` (the loss forward's log-probs; a no-grad forward
        when not given)."""
        if "egrsd_teacher_logps" not in inputs:
            return inputs["advantages"]
        student_logp = self.student_token_logps(inputs) if student_logp is None else student_logp.detach().float()
        teacher_logp, sign = inputs["egrsd_teacher_logps"], inputs["egrsd_sign"]
        magnitude = likelihood_ratio_magnitude(sign, teacher_logp, student_logp, self.args.epsilon_w)
        if "egrsd_trust" in inputs:  # the guard: no magnitude after the teacher's collapse
            magnitude = torch.where(inputs["egrsd_trust"].bool(), magnitude, torch.ones_like(magnitude))
        mask = inputs["completion_mask"] * inputs["tool_mask"] if "tool_mask" in inputs else inputs["completion_mask"]
        advantages = torch.where(mask.bool(), inputs["advantages"] * magnitude, 0.0).to(inputs["advantages"].dtype)
        if self._loss_inputs is not None:
            delta = teacher_logp - student_logp
            self._log_magnitude(magnitude, delta, mask)
            self._log_delta_gap(delta, sign, mask)
        return advantages

    def _compute_loss(self, model, inputs):
        if "egrsd_teacher_logps" not in inputs:
            return super()._compute_loss(model, inputs)
        self._loss_inputs = dict(inputs)  # a copy: the buffered batch may be reused (num_iterations > 1)
        try:
            return super()._compute_loss(model, self._loss_inputs)
        finally:
            self._loss_inputs = None

    def _get_per_token_logps_and_entropies(self, *args, **kwargs):
        result = super()._get_per_token_logps_and_entropies(*args, **kwargs)
        if self._loss_inputs is not None:  # the loss's forward: its log-probs complete the advantages it reads next
            self._loss_inputs["advantages"] = self.token_advantages(self._loss_inputs, result[0])
            self._loss_inputs = None
        return result

    def _teacher_trust(
        self, teacher_logp: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor
    ) -> torch.Tensor | None:
        """`(B, T)`: 1 where a token takes the teacher's weights, 0 where it keeps the plain `A_i`. The guard: 1 up to
        and including the first token whose teacher log-prob is below `teacher_collapse_logp`, 0 after it and at
        masked positions ([`~trl_opd.ops.after_collapse_weights`]); `teacher_rollouts: penalized`: 0 on rollouts with
        `A_i >= 0` ([`~trl_opd.ops.egrsd.penalized_rollout_mask`]). None when neither is on or the teacher does not
        run. Logs `guard/after_collapse` (the share of loss tokens after a collapse) and `egrsd/teacher_weighted`
        (the share of loss tokens that take the teacher's weights)."""
        guard = self.args.teacher_collapse_logp is not None
        if not (guard or self.args.teacher_rollouts == "penalized") or not self._needs_teacher(self.args):
            return None
        trust, shares = mask.to(teacher_logp.dtype), {}
        if guard:
            trust = after_collapse_weights(teacher_logp, mask, self.args.teacher_collapse_logp)
            shares["guard/after_collapse"] = 1.0 - trust
        if self.args.teacher_rollouts == "penalized":
            trust = trust * penalized_rollout_mask(advantages, mask).to(trust.dtype)
            shares["egrsd/teacher_weighted"] = trust
        for name, value in self._global_token_means(shares, mask).items():
            self._metrics["train" if self.model.training else "eval"][name].append(value)
        return trust.to(mask.dtype)

    def _trusted_epsilon_w(self, delta: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> float:
        """`ε_w`, times `max(0, D)` with `magnitude_trust: rank` ([`~trl_opd.ops.egrsd.rank_agreement`] of the
        rollouts' mean `Δ` over every process's batch; logged as `egrsd/magnitude_trust`)."""
        if self.args.magnitude_trust == "none" or self.args.epsilon_w == 0.0:
            return self.args.epsilon_w
        scores = self.accelerator.gather(rollout_means(delta.float(), mask))
        trust = max(float(rank_agreement(scores, self.accelerator.gather(advantages.float()))), 0.0)
        self._metrics["train" if self.model.training else "eval"]["egrsd/magnitude_trust"].append(trust)
        return self.args.epsilon_w * trust

    def _delta_offset(self, delta: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | float:
        """The magnitude's offset `c`: the global mean of `Δ` with `delta_centering: mean`, else 0."""
        if self.args.delta_centering == "mean" and self.args.epsilon_w > 0.0:
            return self._global_masked_mean(delta, mask)
        return 0.0

    def _gate_tau(self, teacher_entropy: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The gate's `τ_H` (`gate_tau`): the median or the mean teacher entropy over the global batch's loss tokens."""
        if self.args.gate_tau == "mean":
            return self._global_masked_mean(teacher_entropy.float(), mask)
        return self._global_median(teacher_entropy, mask)
