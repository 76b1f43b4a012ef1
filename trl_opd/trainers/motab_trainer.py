# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""[`MOTABTrainer`]: on-policy distillation with monitored rollouts that backtrack when the student strays."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from accelerate.utils import gather_object
from trl.models.utils import unwrap_model_for_generation
from trl.trainer.utils import pad

from ..controllers.boundary import AdaptiveBoundary
from ..ops.motab import route_token_losses, teacher_token_forward_kl
from ..rewards import math_accuracy_reward
from .motab_backends import HFStepBackend, VLLMStudentBackend
from .motab_config import MOTABConfig, check_step_delimiter
from .motab_rollout import RolloutTrace, SegmentRollout, SegmentStopper
from .opd_trainer import OPDTrainer


class MOTABTrainer(OPDTrainer):
    r"""
    MOTAB (arXiv 2605.19433): the student writes one segment at a time, the teacher watches, and a segment whose stray
    score exceeds the adaptive boundary is discarded and replaced by one teacher-written segment.

    What differs from [`OPDTrainer`]:
    - Training rollouts come from [`~trl_opd.trainers.motab_rollout.SegmentRollout`] instead of one `generate` call
      (`_generate_single_turn` is replaced): transformers models with a KV cache of the accepted prefix, or the
      student through TRL's `VLLMGeneration` when `use_vllm`. Evaluation rollouts are plain student generations.
    - The batch carries `teacher_token_mask` `(B, K)`, 1 on teacher-written tokens; [`token_losses`] routes `D_β`
      (or K1) to student tokens and `λ_int · KL(p_T || p_S)` to teacher tokens (one extra fused pass over the
      teacher tokens only). With `train_on_strayed`, discarded segments become extra rows, trained on their own
      safe prefix.
    - The boundary ([`~trl_opd.controllers.boundary.AdaptiveBoundary`]) is updated with the segment scores of every
      process after each rollout, and is part of [`extra_state_dict`] (checkpointed, restored on resume).
    - Logged: `motab/backtracks_per_rollout`, `motab/backtracked_fraction` (rollouts with at least one backtrack),
      `motab/teacher_token_fraction`, `motab/boundary`, `motab/stray_score`, `motab/discarded_tokens`,
      `motab/teacher_token_kl`; when the training data has an `answer` column, `motab/accuracy_backtracked` and
      `motab/accuracy_not_backtracked`: the mean [`~trl_opd.rewards.math_accuracy_reward`] of the training rollouts
      (final text, teacher-written segments included, as trained on) that backtracked at least once, and of those
      that did not (a step whose group is empty logs no value for it).
    """

    _tag_names = ["trl", "trl-opd", "on-policy-distillation", "motab"]
    _name = "MOTAB"
    _paper = {
        "title": "MOTAB: Monitoring Trajectories And Backtracking for on-policy distillation",
        "id": "2605.19433",
    }  # TRL's card would say GKD (inherited)

    def __init__(
        self,
        model,
        teacher_model=None,
        args: MOTABConfig | None = None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        callbacks=None,
        optimizers=(None, None),
        quantization_config=None,
        peft_config=None,
        tools=None,
    ):
        args = args if args is not None else MOTABConfig(output_dir="motab-output")
        if teacher_model is None:
            raise ValueError(
                "MOTAB needs an external teacher: set `teacher_model_name_or_path` (or pass teacher_model)."
            )
        if tools:
            raise ValueError("MOTAB does not support tool calling: its rollouts are written segment by segment.")
        if processing_class is not None:
            check_step_delimiter(getattr(processing_class, "tokenizer", processing_class), args.step_delimiter)
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
        check_step_delimiter(self._tokenizer, args.step_delimiter)
        self.boundary = AdaptiveBoundary(
            args.boundary_quantile,
            args.boundary_window,
            args.boundary_warmup_steps,
            args.fixed_boundary,
            floor=args.boundary_floor,
        )
        self.stopper = SegmentStopper(self._tokenizer, args.step_delimiter, self.eos_token_ids)
        self._batch_rows: list[dict[str, Any]] | None = None
        self._traces: list[RolloutTrace] | None = None

    # ----------------------------------------------------------------- rollouts
    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        self._batch_rows = inputs
        output = super()._generate_and_score_completions(inputs)
        traces, self._traces = self._traces, None
        width = output["completion_ids"].size(1)
        masks = [t.teacher_mask for t in traces] if traces is not None else [[] for _ in inputs]
        output["teacher_token_mask"] = _right_pad(masks, width, 0, output["completion_ids"].device)
        if traces is not None and self.args.train_on_strayed:
            output = self._with_strayed_rows(output, traces)
        return output

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, has_tool_images=False):
        """Training: a monitored segment-wise rollout (the parent's single `generate` call in evaluation)."""
        if not self.model.training:
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, has_tool_images)
        if images is not None:
            raise ValueError("MOTAB rollouts are text-only.")
        tau = self.boundary.threshold(self.state.global_step)
        with self._rollout_backends() as (student, teacher):
            engine = SegmentRollout(
                student,
                teacher,
                self.stopper,
                self.max_completion_length,
                self.args.max_segment_tokens,
                self.args.max_backtracks,
                self.args.monitor_signal,
                any_active=self._any_process_active,
                reduction=self.args.stray_reduction,
            )
            traces = engine.run(prompt_ids, self._teacher_prompt_ids(prompt_ids), tau)
        self._traces = traces
        self._record_rollouts(traces, tau)
        return [t.tokens for t in traces]

    def _teacher_prompt_ids(self, prompt_ids: list[list[int]]) -> list[list[int]]:
        if not self._teacher_sees_other_prompt():
            return prompt_ids
        tokenized = self._tokenize_teacher_prompts([self.teacher_prompt(x) for x in self._batch_rows])
        return [
            ids[mask.bool()].tolist()
            for ids, mask in zip(tokenized["teacher_prompt_ids"], tokenized["teacher_prompt_mask"], strict=True)
        ]

    @contextlib.contextmanager
    def _rollout_backends(self):
        """`(student, teacher)` step backends for one rollout batch, under `no_grad` and with gathered weights.

        Sharded models (ZeRO-3, FSDP2): with `ds3_gather_for_generation` (default) both models' full weights are
        gathered once for the whole rollout, as TRL does for the student's `generate`, so no forward communicates;
        without it (ZeRO-3 only, memory), only the `lm_head`s are copied whole and every forward all-gathers its layers.
        Under FSDP2 both models are always unsharded for the rollout (see `_fsdp2_unsharded`). Either way the
        backends run in lockstep across processes (`any_process`, see [`~trl_opd.trainers.motab_rollout`]).
        """
        pad_id = self._tokenizer.pad_token_id
        sampling = {
            "temperature": self.temperature,
            "top_k": self.top_k or 0,
            "top_p": self.top_p,
            "min_p": self.min_p or 0.0,
            "pad_token_id": pad_id,
            "any_process": self._any_process_active if self.accelerator.num_processes > 1 else None,
        }
        gather_all = self.args.ds3_gather_for_generation
        with (
            torch.no_grad(),
            unwrap_model_for_generation(
                self.teacher_model, self.accelerator, gather_deepspeed3_params=gather_all
            ) as t,
            self._dist.summon_full_params(self.teacher_model, recurse=False),
        ):
            t.eval()
            teacher_backend = HFStepBackend(t, **sampling, weight=_whole_lm_head(t))
            if self.use_vllm:
                if self.state.global_step != self._last_loaded_step:
                    self.vllm_generation.sync_weights()
                    self._last_loaded_step = self.state.global_step
                yield VLLMStudentBackend(self.vllm_generation, self.args.step_delimiter, pad_id), teacher_backend
                return
            with (
                unwrap_model_for_generation(
                    self.model_wrapped,
                    self.accelerator,
                    gather_deepspeed3_params=gather_all,
                    generation_kwargs=self.generation_kwargs,
                    gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs,
                ) as student,
                self._dist.summon_full_params(self.model_wrapped, recurse=False),
                _fsdp2_unsharded(student),
            ):
                yield HFStepBackend(student, **sampling, weight=_whole_lm_head(student)), teacher_backend

    def _any_process_active(self, local: bool) -> bool:
        """Whether `local` holds on any process (an all-reduce; every process must call it the same number of times).
        Keeps rollout rounds, teacher rounds and decoding steps in lockstep (sharded forwards and vLLM's gathers are
        collective)."""
        if self.accelerator.num_processes == 1:
            return local
        flag = torch.tensor([float(local)], device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, reduction="sum") > 0)

    def _record_rollouts(self, traces: list[RolloutTrace], tau: float) -> None:
        """Fold the segment scores of every process into the boundary and log the rollout statistics (one gather of
        the counts of every process, the accuracy counts of [`MOTABTrainer._accuracy_counts`] included)."""
        scores = gather_object([s for t in traces for s in t.scores])
        local = torch.tensor(
            [
                sum(t.backtracks for t in traces),
                sum(t.backtracks > 0 for t in traces),
                len(traces),
                sum(sum(t.teacher_mask) for t in traces),
                sum(len(t.tokens) for t in traces),
                sum(len(d) for t in traces for _, d in t.discarded),
                *self._accuracy_counts(self._batch_rows, traces),
            ],
            dtype=torch.float64,
            device=self.accelerator.device,
        )
        gathered = self.accelerator.gather(local[None]).sum(0).tolist()
        backtracks, backtracked, rollouts, teacher_tokens, tokens, discarded, *accuracy = gathered
        self.boundary.update(scores, int(backtracks))
        metrics = self._metrics["train"]
        metrics["motab/backtracks_per_rollout"].append(backtracks / max(rollouts, 1))
        metrics["motab/backtracked_fraction"].append(backtracked / max(rollouts, 1))
        metrics["motab/teacher_token_fraction"].append(teacher_tokens / max(tokens, 1))
        metrics["motab/discarded_tokens"].append(discarded / max(rollouts, 1))
        metrics["motab/boundary"].append(tau)
        finite = [s for s in scores if s == s]
        metrics["motab/stray_score"].append(sum(finite) / len(finite) if finite else float("nan"))
        right_bt, n_bt, right_plain, n_plain, scored = accuracy
        if scored and n_bt:
            metrics["motab/accuracy_backtracked"].append(right_bt / n_bt)
        if scored and n_plain:
            metrics["motab/accuracy_not_backtracked"].append(right_plain / n_plain)

    def _accuracy_counts(self, rows: list[dict[str, Any]] | None, traces: list[RolloutTrace]) -> list[float]:
        """`[right & backtracked, backtracked, right & not, not, scored]` of this process's rollouts, scored with the
        project's reward against the `answer` column (teacher segments included, as trained on); all zeros (and
        `scored` 0: nothing logged) without that column. Every process takes part in the one gather either way."""
        if not rows or not all("answer" in x for x in rows):
            return [0.0] * 5
        texts = self._tokenizer.batch_decode([t.tokens for t in traces], skip_special_tokens=True)
        rewards = math_accuracy_reward(texts, [x["answer"] for x in rows])
        backtracked = [t.backtracks > 0 for t in traces]
        right_bt = sum(r for r, b in zip(rewards, backtracked, strict=True) if b)
        right_plain = sum(r for r, b in zip(rewards, backtracked, strict=True) if not b)
        return [right_bt, sum(backtracked), right_plain, len(traces) - sum(backtracked), 1.0]

    def _with_strayed_rows(self, output: dict[str, Any], traces: list[RolloutTrace]) -> dict[str, Any]:
        """Append one row per discarded segment: its safe prefix (no loss) then the discarded tokens (loss, D_β).

        `num_items_in_batch` is then re-counted over all processes, on every process (a process without discarded
        segments joins the collective too, or the others wait for it forever)."""
        extra = [(i, cut, toks) for i, t in enumerate(traces) for cut, toks in t.discarded]
        if extra:
            output = self._append_strayed_rows(output, traces, extra)
        if "loss_token_mask" in output:
            loss_tokens = output["loss_token_mask"]
        else:  # the parent's count, as it made it
            tool_mask = output.get("tool_mask")
            loss_tokens = output["completion_mask"] if tool_mask is None else output["completion_mask"] * tool_mask
        output["num_items_in_batch"] = self.accelerator.gather(loss_tokens.sum()).sum()
        return output

    def _append_strayed_rows(self, output: dict[str, Any], traces: list[RolloutTrace], extra: list) -> dict[str, Any]:
        steps = self.args.gradient_accumulation_steps
        n_rows = len(traces)
        fill = (-(n_rows + len(extra))) % steps  # keep the batch divisible into accumulation chunks
        extra += [(0, 0, [])] * fill
        device = output["completion_ids"].device
        completions = [t.tokens for t in traces] + [traces[i].tokens[:cut] + toks for i, cut, toks in extra]
        width = max(output["completion_ids"].size(1), max(len(c) for c in completions))
        loss_rows = [[1] * len(t.tokens) for t in traces] + [[0] * cut + [1] * len(toks) for _, cut, toks in extra]
        teacher_rows = [t.teacher_mask for t in traces] + [
            traces[i].teacher_mask[:cut] + [0] * len(toks) for i, cut, toks in extra
        ]
        source = torch.tensor(list(range(n_rows)) + [i for i, _, _ in extra], device=device)
        for key, value in list(output.items()):
            if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.size(0) == n_rows:
                output[key] = value.index_select(0, source)
        output["completion_ids"] = _right_pad(completions, width, self._tokenizer.pad_token_id, device)
        output["completion_mask"] = _right_pad([[1] * len(c) for c in completions], width, 0, device)
        output["teacher_token_mask"] = _right_pad(teacher_rows, width, 0, device)
        output["loss_token_mask"] = _right_pad(loss_rows, width, 0, device)
        return output

    # ----------------------------------------------------------------- loss routed by provenance
    def loss_mask(self, inputs: dict[str, Any]) -> torch.Tensor:
        mask = super().loss_mask(inputs)
        return mask * inputs["loss_token_mask"] if "loss_token_mask" in inputs else mask

    def token_losses(self, stats: dict[str, torch.Tensor], inputs: dict[str, Any]) -> torch.Tensor:
        """`D_β` (or K1) on student tokens, `λ_int · KL(p_T || p_S)` on teacher tokens."""
        losses = super().token_losses(stats, inputs)
        teacher_mask = inputs.get("teacher_token_mask")
        if teacher_mask is None:
            return losses
        teacher_mask = teacher_mask * self.loss_mask(inputs)
        positions = self.every_rank_runs(teacher_mask)  # ZeRO-3: every process runs the pass
        if not positions.any():
            return losses
        hidden = stats["hidden"]
        device = hidden.student_weight.device
        kl = teacher_token_forward_kl(
            hidden.student,
            hidden.student_weight,
            hidden.teacher.to(device),
            hidden.teacher_weight.to(device),
            inputs["completion_ids"],
            positions,
            self.temperature,
            hidden.student_head,
            hidden.teacher_head,
        )
        mode = "train" if self.model.training else "eval"
        if teacher_mask.any():
            mean_kl = (kl.detach() * teacher_mask).sum() / teacher_mask.sum()
            self._metrics[mode]["motab/teacher_token_kl"].append(mean_kl.item())
        return route_token_losses(losses, kl, teacher_mask, self.args.lambda_int)

    # ----------------------------------------------------------------- checkpointed trainer state
    def extra_state_dict(self) -> dict[str, Any]:
        state = super().extra_state_dict()
        state["motab_boundary"] = self.boundary.state_dict()
        return state

    def load_extra_state_dict(self, state: dict[str, Any]) -> None:
        super().load_extra_state_dict(state)
        if "motab_boundary" in state:
            self.boundary.load_state_dict(state["motab_boundary"])


def _right_pad(rows: list[list[int]], width: int, value: int, device) -> torch.Tensor:
    """`(B, width)` long tensor from ragged rows, right-padded with `value`."""
    tensors = [torch.tensor(list(r) + [value] * (width - len(r)), dtype=torch.long) for r in rows]
    return pad(tensors, padding_value=value, padding_side="right").to(device)


@contextlib.contextmanager
def _fsdp2_unsharded(model: torch.nn.Module):
    """FSDP2: every sharded module of `model` unsharded (whole weights) for the block, no resharding after forwards.
    The rollout calls the decoder and reads `lm_head` outside the root's forward, so the root's parameters must be
    whole; unsharding the root alone leaves them as DTensors (torch 2.13), hence every layer, whatever
    `ds3_gather_for_generation`. No-op for other models."""
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, FSDPModule):
        yield
        return
    modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for module in modules:
        module.set_reshard_after_forward(False, recurse=False)
        module.unshard()
    try:
        yield
    finally:
        for module in modules:
            module.reshard()
            module.set_reshard_after_forward(module is not model, recurse=False)


def _whole_lm_head(model: torch.nn.Module) -> torch.Tensor | None:
    """A ZeRO-3-partitioned `lm_head` weight that is not gathered (`ds3_gather_for_generation: false`): a whole copy
    for the rollout's projections (gathering it for the block is not enough: a tied weight is partitioned again by
    the embedding's hooks after the first forward). `None` (the model's own) otherwise."""
    weight = model.get_output_embeddings().weight
    if not hasattr(weight, "ds_id") or weight.numel() > 0:
        return None
    import deepspeed

    with deepspeed.zero.GatheredParameters([weight]):
        return weight.detach().clone()
