# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""[`OPDTrainer`]: TRL's `DistillationTrainer` with the shared teacher layer, the base of MOTAB, TrOPD and ATESD."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
from accelerate.utils import is_peft_model
from transformers import AutoConfig, AutoTokenizer, PreTrainedModel
from trl import DistillationTrainer

from ..checkpoints import STATE_FILE, load_method_state, method_config, resolve_resume, save_method_state
from ..data import ColumnMap, prepare_dataset, privileged_prompt
from ..errors import ConfigValueError
from ..heads import logit_head
from ..ops import (
    fused_distillation_stats,
    k1_policy_gradient_loss,
    masked_global_mean,
    masked_mean,
    masked_sum,
    token_logprobs_and_entropy,
)
from ..ops.chunked import PLAIN_HEAD, LogitHead
from ..ops.chunked_topk import FusedOutlierKL
from ..ops.reductions import after_collapse_weights, first_collapse_index
from ..runtime import UnwrapCacheMixin
from ..teacher import (
    align_teacher_vocab,
    check_privileged_prompts,
    check_same_vocabulary,
    ema_update,
    last_hidden_states,
    load_teacher,
    scoring_teacher,
    self_teacher_copy,
    tokenize_teacher_prompts,
)
from .opd_config import OPDConfig
from .prompts import PromptLimitMixin
from .repair import greedy_continuations, splice_completions


EXTRA_STATE_FILE = STATE_FILE


class HiddenStates(NamedTuple):
    """Both models' last hidden states on the completion tokens, their `lm_head` weights and logit post-processing
    (bias, scale, softcap), as the loss saw them."""

    student: torch.Tensor  # (B, K, H_S), differentiable
    student_weight: torch.Tensor  # (V, H_S)
    teacher: torch.Tensor  # (B, K, H_T), detached
    teacher_weight: torch.Tensor  # (V, H_T)
    student_head: LogitHead = PLAIN_HEAD
    teacher_head: LogitHead = PLAIN_HEAD


class OPDTrainer(UnwrapCacheMixin, PromptLimitMixin, DistillationTrainer):
    r"""
    On-policy distillation: [`~trl.DistillationTrainer`] plus the shared teacher layer of trl-opd.

    What differs from the parent:
    - The teacher can see its own prompt: other `chat_template_kwargs` (e.g. thinking on for the teacher only) or,
      with `privileged_context`, the reference solution (OPSD style). Its hidden states are computed on that prompt
      followed by the student's completion, and aligned on the completion tokens.
    - Without a teacher checkpoint the teacher is the student's own weights (`self_teacher`: frozen, live, EMA).
    - A teacher checkpoint is loaded through [`~trl_opd.teacher.load_teacher`] (its own 4-/8-bit quantisation), its
      tokenizer is checked against the student's and a padded `lm_head` is aligned.
    - The loss goes through one fused chunked pass ([`~trl_opd.ops.fused_distillation_stats`]) that also returns the
      sampled-token log-probs and both entropies; subclasses turn those into per-token losses in
      [`OPDTrainer.token_losses`]. With `divergence="jsd"` (default) the loss equals the parent's.
    - Subclasses keep trainer state (boundaries, controllers) in [`OPDTrainer.extra_state_dict`]; it is saved in every
      checkpoint and restored on resume.
    """

    _tag_names = ["trl", "trl-opd", "on-policy-distillation"]
    _name = "OPD"
    _paper = {
        "title": "On-Policy Distillation of Language Models: Learning from Self-Generated Mistakes",
        "id": "2306.13649",
    }  # TRL's card would say GKD (inherited)
    #: Dataset columns this trainer needs, besides `prompt`.
    required_columns: tuple[str, ...] = ()

    def __init__(
        self,
        model: str | PreTrainedModel,
        teacher_model: str | PreTrainedModel | None = None,
        args: OPDConfig | None = None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        callbacks=None,
        optimizers=(None, None),
        quantization_config=None,
        peft_config=None,
        tools=None,
    ):
        args = args if args is not None else OPDConfig(output_dir="opd-output")
        needed = ["prompt", *self.required_columns] + (["solution"] if args.privileged_context else [])
        train_dataset = prepare_dataset(train_dataset, sorted(set(needed)), ColumnMap(), "train dataset")
        if processing_class is None:
            processing_class = AutoTokenizer.from_pretrained(model if isinstance(model, str) else model.name_or_path)
        processing_class.padding_side = "left"
        self._self_teacher_kind = None
        built_here = teacher_model is None or isinstance(teacher_model, str)
        if teacher_model is None:
            self._self_teacher_kind = args.self_teacher
            is_peft = peft_config is not None or (not isinstance(model, str) and is_peft_model(model))
            if is_peft and args.self_teacher == "ema":
                raise ConfigValueError(
                    "self_teacher: ema is not supported with PEFT (the EMA would copy the whole base model to average "
                    "an adapter): use self_teacher: frozen (adapter off) or live, or train without peft."
                )
            teacher_model = self_teacher_copy(model, args.self_teacher, is_peft, args.model_init_kwargs)
        elif isinstance(teacher_model, str):
            check_same_vocabulary(processing_class, AutoTokenizer.from_pretrained(teacher_model))
            teacher_model = load_teacher(
                teacher_model,
                args.teacher_model_init_kwargs,
                args.teacher_quantization,
                args.teacher_model_revision,
                trust_remote_code=args.trust_remote_code,
                distributed=args.distributed_state.distributed_type in ("MULTI_GPU", "DEEPSPEED"),
            )
        if teacher_model is not None:
            align_teacher_vocab(teacher_model, _vocab_size(model, args), len(processing_class))
        # A teacher we loaded from a name has used `teacher_model_init_kwargs`; the parent, handed the instance, would
        # refuse the field (it does so, rightly, for an instance the caller built).
        with _teacher_init_kwargs_consumed(args, built_here):
            super().__init__(
                model=model,
                teacher_model=teacher_model,
                args=args,
                train_dataset=train_dataset,
                eval_dataset=eval_dataset,
                processing_class=processing_class,
                callbacks=callbacks,
                optimizers=optimizers,
                quantization_config=quantization_config,
                peft_config=peft_config,
                tools=tools,
            )
        self.teacher_chat_template_kwargs = (
            self.chat_template_kwargs
            if args.teacher_chat_template_kwargs is None
            else args.teacher_chat_template_kwargs
        )
        if args.privileged_context:
            check_privileged_prompts(self, self.train_dataset, self.teacher_chat_template_kwargs)
        self.check_prompt_lengths(self.train_dataset)
        if args.collapse_repair and (
            self.tools or (self._sharded_weights() and not args.collapse_repair_supports_sharding)
        ):
            raise ConfigValueError(
                "collapse_repair does not support tools, ZeRO-3 or FSDP (the teacher writes its continuation with "
                "transformers' generate on unsharded weights)."
            )
        self._sampler_logps: list[list[float]] | None = None
        if args.vllm_importance_sampling_correction and self.use_vllm:
            if self.tools:
                raise ConfigValueError("vllm_importance_sampling_correction does not support tool calling.")
            self.vllm_generation.logprobs = 0  # the sampled token's log-prob (TRL's distillation asks for none)

    # ----------------------------------------------------------------- teacher prompts
    def teacher_prompt(self, example: dict[str, Any]) -> Any:
        """The prompt the teacher sees for one dataset row. Default: the student's, plus the reference solution when
        `privileged_context` is on. Subclasses (ATESD) override it."""
        if self.args.privileged_context:
            return privileged_prompt(example["prompt"], example["solution"])
        return example["prompt"]

    def _teacher_sees_other_prompt(self) -> bool:
        return self.args.privileged_context or self.teacher_chat_template_kwargs != self.chat_template_kwargs

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        self._sampler_logps = None
        output = super()._generate_and_score_completions(inputs)
        if self._teacher_sees_other_prompt():
            output.update(self._tokenize_teacher_prompts([self.teacher_prompt(x) for x in inputs]))
        sampler, self._sampler_logps = self._sampler_logps, None
        if sampler is not None:  # `(B, C)`, NaN where the sampler wrote no token
            width = output["completion_ids"].size(1)
            rows = [torch.tensor((list(r) + [math.nan] * width)[:width], dtype=torch.float32) for r in sampler]
            output["sampler_logps"] = torch.stack(rows).to(output["completion_ids"].device)
        if self.args.collapse_repair and self.model.training:
            self._repair_collapsed(output)
        return output

    def _sharded_weights(self) -> bool:
        return bool(self._dist.is_zero3 or self.is_fsdp_enabled)

    def _repair_collapsed(self, output: dict[str, Any]) -> None:
        """`collapse_repair` ([`trl_opd.trainers.repair`]): score the completions under the teacher, and in each row
        where it collapses let it write the rest from the tokens before; updates `output` in place (completions, mask,
        `teacher_written`, the global loss-token count) and logs `repair/repaired_fraction` and
        `repair/teacher_token_fraction`."""
        student = self._unwrap(self.model)
        ids, mask = output["completion_ids"], output["completion_mask"]
        hidden, weight = self.teacher_hidden_states(student, output, ids.size(1))
        with torch.no_grad():
            logp, _ = token_logprobs_and_entropy(
                hidden, weight.to(hidden.device), ids, self.temperature, head=self.teacher_logit_head(student)
            )
        cut = first_collapse_index(logp, mask, self.args.teacher_collapse_logp).tolist()
        prompt_ids = output.get("teacher_prompt_ids", output["prompt_ids"])
        prompt_mask = output.get("teacher_prompt_mask", output["prompt_mask"])
        prefixes = [
            prompt_ids[b][prompt_mask[b].bool()].tolist() + ids[b, : max(t, 0)].tolist() for b, t in enumerate(cut)
        ]
        budgets = [self.args.max_completion_length - max(t, 0) for t in cut]
        continuations = self.repair_continuations(prefixes, budgets, [t >= 0 for t in cut])
        rows = list(continuations)
        new_ids, new_mask, teacher_written = splice_completions(
            ids, mask, torch.tensor(cut), continuations, self.processing_class.pad_token_id
        )
        output.update(completion_ids=new_ids, completion_mask=new_mask, teacher_written=teacher_written)
        if "sampler_logps" in output:  # the sampler's log-probs of the kept student tokens, NaN on the teacher's
            output["sampler_logps"] = _kept_sampler_logps(output["sampler_logps"], mask, cut, new_ids.size(1))
        output["num_items_in_batch"] = self.accelerator.gather(new_mask.sum()).sum()
        metrics = self._metrics["train"]
        metrics["repair/repaired_fraction"].append(len(rows) / max(len(cut), 1))
        metrics["repair/teacher_token_fraction"].append((teacher_written.sum() / new_mask.sum().clamp(min=1)).item())

    def repair_continuations(
        self, prefixes: list[list[int]], budgets: list[int], collapsed: list[bool]
    ) -> dict[int, list[int]]:
        """The teacher's continuation of each collapsed row (`collapse_repair`), keyed by row: `prefixes[b]` is the
        teacher's prompt plus the student's tokens before the collapse, cut to `budgets[b]` tokens and after the first
        EOS (kept). Here: greedy decoding on the teacher's whole weights ([`greedy_continuations`]), collapsed rows
        only; TrOPD samples through its generation layer instead."""
        rows = [b for b, c in enumerate(collapsed) if c]
        if not rows:
            return {}
        tok, student = self.processing_class, self._unwrap(self.model)
        adapter_off = self._self_teacher_kind == "frozen"
        with scoring_teacher(self.teacher_model, self.accelerator, student, adapter_off, self._unwrap) as teacher:
            written = greedy_continuations(
                teacher.module,
                [prefixes[b] for b in rows],
                [budgets[b] for b in rows],
                [tok.eos_token_id],
                tok.pad_token_id,
            )
        return dict(zip(rows, written, strict=True))

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, has_tool_images=False):
        """TRL's generation; with `vllm_importance_sampling_correction` in training, the vLLM path keeps the sampled
        tokens' log-probs (`self._sampler_logps`, one list per row) that TRL's distillation discards."""
        if not (self.use_vllm and self.args.vllm_importance_sampling_correction and self.model.training):
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, has_tool_images)
        if self.state.global_step != self._last_loaded_step:
            self.vllm_generation.sync_weights()
            self._last_loaded_step = self.state.global_step
        _, completion_ids, logprobs, _ = self.vllm_generation.generate(
            prompts=prompt_ids, images=images, num_generations=1
        )
        if logprobs is not None:  # None from an engine asked for none (TrOPD's teacher)
            self._sampler_logps = [[math.nan if lp[0] is None else lp[0] for lp in row] for row in logprobs]
        return completion_ids

    def _tokenize_teacher_prompts(self, prompts: list) -> dict[str, torch.Tensor]:
        """Left-padded `teacher_prompt_ids` / `teacher_prompt_mask`, tokenized by the parent's own prompt path with
        the teacher's chat-template kwargs ([`~trl_opd.teacher.tokenize_teacher_prompts`]); each distinct prompt once,
        kept across steps."""
        cache = self.__dict__.setdefault("_teacher_prompt_ids", {})  # teacher prompt -> its token ids, across steps
        ids, mask = tokenize_teacher_prompts(self, prompts, self.teacher_chat_template_kwargs, cache=cache)
        return {"teacher_prompt_ids": ids, "teacher_prompt_mask": mask}

    # ----------------------------------------------------------------- teacher scoring
    def teacher_hidden_states(self, unwrapped_student, inputs: dict[str, Any], logits_to_keep: int):
        """Teacher last hidden states on the completion tokens `(B, K, H_T)` and its `lm_head` weight `(V, H_T)`.

        Through the shared teacher path ([`~trl_opd.teacher.scoring_teacher`]): an external (or frozen-copy) teacher
        through its accelerate wrapper, or the student's own weights (adapter off, live).
        """
        prompt_ids = inputs.get("teacher_prompt_ids", inputs["prompt_ids"])
        prompt_mask = inputs.get("teacher_prompt_mask", inputs["prompt_mask"])
        input_ids = torch.cat([prompt_ids, inputs["completion_ids"]], dim=1)
        attention_mask = torch.cat([prompt_mask, inputs["completion_mask"]], dim=1)
        adapter_off = self._self_teacher_kind == "frozen"
        with scoring_teacher(
            self.teacher_model, self.accelerator, unwrapped_student, adapter_off, unwrap=self._unwrap
        ) as handle:
            teacher = handle.module
            hidden = handle.run(
                self._forward_redirection, self._get_last_hidden_state, input_ids, attention_mask, logits_to_keep
            )
        weight = teacher.get_output_embeddings().weight  # not detached: ZeRO-3 gathers it by identity
        return hidden.detach(), weight

    def teacher_logit_head(self, unwrapped_student) -> LogitHead:
        """The teacher's logit post-processing (bias, scale, softcap): the external teacher's, else the student's."""
        if self.teacher_model is None:
            return logit_head(unwrapped_student)
        return logit_head(self._unwrap(self.teacher_model))

    # ----------------------------------------------------------------- loss
    def token_losses(self, stats: dict[str, torch.Tensor], inputs: dict[str, Any]) -> torch.Tensor:
        """Per-token loss `(B, K)` from the fused statistics; masked and normalised by the caller.

        `stats` holds `divergence` (JSD_β), `student_logp` (differentiable), `teacher_logp`, `student_entropy`,
        `teacher_entropy`, `student_log_z` (differentiable) and `teacher_log_z`, each `(B, K)`, `outlier_kl` and
        `outlier` where [`fused_outlier_kl`] asks for them (TrOPD), and `hidden` ([`HiddenStates`]) for losses that
        need another chunked pass (MOTAB's teacher-token KL). Default: the divergence, or the K1 policy-gradient loss.
        """
        if self.args.divergence == "k1":
            return self.k1_losses(stats, inputs)
        return stats["divergence"]

    def fused_outlier_kl(self, inputs: dict[str, Any]) -> FusedOutlierKL | None:
        """The outlier KL the fused pass adds to `stats` (`outlier_kl`, `outlier`), a fresh
        [`~trl_opd.ops.chunked_topk.FusedOutlierKL`] per call, or None (here: none; TrOPD's outlier loss)."""
        return None

    def k1_losses(self, stats: dict[str, torch.Tensor], inputs: dict[str, Any]) -> torch.Tensor:
        """The K1 policy-gradient loss `(B, K)`, importance-weighted against the sampler's log-probs
        (`sampler_logps`, from vLLM) when `vllm_importance_sampling_correction` is on."""
        sampler = inputs.get("sampler_logps") if self.args.vllm_importance_sampling_correction else None
        if sampler is None:
            return k1_policy_gradient_loss(stats["student_logp"], stats["teacher_logp"])
        return k1_policy_gradient_loss(
            stats["student_logp"],
            stats["teacher_logp"],
            old_student_logp=sampler.to(stats["student_logp"].device),
            importance_clip=self.args.vllm_importance_sampling_clip_max,
        )

    def every_rank_runs(self, positions: torch.Tensor) -> torch.Tensor:
        """The positions an extra chunked pass (MOTAB's teacher-token KL) runs on, `(B, K)`.

        Under ZeRO-3 such a pass gathers the `lm_head`s in its forward and backward, collectives that every process
        must make: a process with no position runs one dummy position (the caller discards its value, which stays in
        the graph so the backward runs too). Elsewhere: `positions`."""
        if not self._dist.is_zero3 or positions.any():
            return positions
        dummy = torch.zeros_like(positions)
        dummy.view(-1)[0] = 1
        return dummy

    def _get_last_hidden_state(self, unwrapped_model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        """TRL's, for text-only inputs without its per-call `is_peft_model` (accelerate reads package metadata there,
        about 1 ms on a CPU, for the student and the teacher each step): [`~trl_opd.teacher.last_hidden_states`], the
        same backbone forward. Vision inputs (or a VLM): TRL's."""
        if self._is_vlm or args or any(value is not None for value in kwargs.values()):
            return super()._get_last_hidden_state(
                unwrapped_model, input_ids, attention_mask, logits_to_keep, *args, **kwargs
            )
        return last_hidden_states(unwrapped_model, input_ids, attention_mask, logits_to_keep)

    def loss_mask(self, inputs: dict[str, Any]) -> torch.Tensor:
        mask = inputs["completion_mask"]
        return mask * inputs["tool_mask"] if "tool_mask" in inputs else mask

    def _compute_loss(self, unwrapped_student, inputs, num_items_in_batch):
        completion_ids = inputs["completion_ids"]
        logits_to_keep = completion_ids.size(1)
        input_ids = torch.cat([inputs["prompt_ids"], completion_ids], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        student_hidden = self._get_last_hidden_state(unwrapped_student, input_ids, attention_mask, logits_to_keep)
        teacher_hidden, teacher_weight = self.teacher_hidden_states(unwrapped_student, inputs, logits_to_keep)
        student_weight = unwrapped_student.get_output_embeddings().weight
        student_head, teacher_head = logit_head(unwrapped_student), self.teacher_logit_head(unwrapped_student)
        stats = fused_distillation_stats(
            student_hidden,
            student_weight,
            teacher_hidden.to(student_weight.device),
            teacher_weight.to(student_weight.device),
            completion_ids,
            self.beta,
            self.temperature,
            student_head,
            teacher_head,
            self.fused_outlier_kl(inputs),
        )
        stats["hidden"] = HiddenStates(
            student_hidden, student_weight, teacher_hidden, teacher_weight, student_head, teacher_head
        )
        mask = self.loss_mask(inputs).to(student_weight.device)
        losses = self.token_losses(stats, inputs)
        if self.args.teacher_collapse_logp is not None:
            losses = losses * self._collapse_weights(stats["teacher_logp"], mask)
        loss = masked_global_mean(losses, mask, num_items_in_batch)
        self._log_token_stats(stats, mask)
        return loss, masked_sum(stats["student_entropy"], mask).detach(), mask.sum()

    def _collapse_weights(self, teacher_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[`~trl_opd.ops.after_collapse_weights`] at the configured threshold; logs the share of loss tokens after
        a collapse (`guard/after_collapse`)."""
        weights = after_collapse_weights(
            teacher_logp, mask, self.args.teacher_collapse_logp, self.args.teacher_collapse_weight
        )
        after = ((weights != 1.0) & mask.bool()).float()
        self._metrics["train" if self.model.training else "eval"]["guard/after_collapse"].append(
            masked_mean(after, mask).item()
        )
        return weights

    def _log_token_stats(self, stats: dict[str, torch.Tensor], mask: torch.Tensor) -> None:
        mode = "train" if self.model.training else "eval"
        for name in ("divergence", "teacher_entropy"):
            self._metrics[mode][name].append(masked_mean(stats[name].detach(), mask).item())
        k1 = (stats["student_logp"] - stats["teacher_logp"]).detach()
        self._metrics[mode]["k1_reverse_kl"].append(masked_mean(k1, mask).item())

    def training_step(self, model, inputs, num_items_in_batch):
        output = super().training_step(model, inputs, num_items_in_batch)
        if self._self_teacher_kind == "ema" and self._step % self.current_gradient_accumulation_steps == 0:
            ema_update(self._unwrap(self.teacher_model), self._unwrap(self.model), self.args.teacher_ema_decay)
        return output

    # ----------------------------------------------------------------- checkpointed trainer state
    def extra_state_dict(self) -> dict[str, Any]:
        """Trainer state beyond TRL's (saved in every checkpoint as `trl_opd_state.pt`). Subclasses extend it."""
        if self._self_teacher_kind == "ema" and self.teacher_model is not None:
            return {"ema_teacher": self._unwrap(self.teacher_model).state_dict()}
        return {}

    def load_extra_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what [`extra_state_dict`] returned."""
        if "ema_teacher" in state and self.teacher_model is not None:
            self._unwrap(self.teacher_model).load_state_dict(state["ema_teacher"])

    def _save_checkpoint(self, model, trial):
        # before the Trainer's files: its `trainer_state.json`, written last, marks the checkpoint complete
        state = self.extra_state_dict()
        if self.args.should_save:
            folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
            save_method_state(folder, self._name, method_config(self.args), state)
        super()._save_checkpoint(model, trial)

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        has_state = bool(self.extra_state_dict())
        resume_from_checkpoint = resolve_resume(resume_from_checkpoint, self.args.output_dir, has_state)
        if resume_from_checkpoint:
            state = load_method_state(
                resume_from_checkpoint,
                self._name,
                method_config(self.args),
                required=has_state,
                ignore=getattr(self.args, "resume_ignore_method_state", False),
            )
            if state:
                self.load_extra_state_dict(state)
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)


@contextlib.contextmanager
def _teacher_init_kwargs_consumed(args: OPDConfig, consumed: bool) -> Iterator[None]:
    """While the parent's `__init__` runs, hide `teacher_model_init_kwargs` when the teacher was loaded here."""
    kwargs = args.teacher_model_init_kwargs
    if consumed:
        args.teacher_model_init_kwargs = None
    try:
        yield
    finally:
        args.teacher_model_init_kwargs = kwargs


def _vocab_size(model, args: OPDConfig) -> int:
    if isinstance(model, str):
        return AutoConfig.from_pretrained(model, trust_remote_code=args.trust_remote_code).get_text_config().vocab_size
    return model.get_output_embeddings().weight.shape[0]


def _kept_sampler_logps(sampler_logps: torch.Tensor, mask: torch.Tensor, cut: list[int], width: int) -> torch.Tensor:
    """`(B, C) -> (B, width)`: each row's sampler log-probs up to its cut (all its tokens where it did not collapse),
    NaN after (the teacher's tokens, padding)."""
    out = torch.full((sampler_logps.size(0), width), math.nan, device=sampler_logps.device)
    for b, t in enumerate(cut):
        n = t if t >= 0 else int(mask[b].sum())
        out[b, :n] = sampler_logps[b, :n]
    return out
