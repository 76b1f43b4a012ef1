# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""[`ATESDTrainer`]: on-policy self-distillation whose teacher sees a learned share of the reference (and OPSD)."""

from __future__ import annotations

import logging
from typing import Any

import torch
from trl.trainer.utils import pad

from ..controllers.exposure import ExposureController
from ..data import (
    BLANK_LINE,
    ColumnMap,
    DatasetValidationError,
    prepare_dataset,
    privileged_prompt,
    truncate_reference,
)
from ..heads import logit_head
from ..ops import masked_sum, token_logprobs_and_entropy
from ..rewards import extract_boxed
from ..teacher import SelfTeacherCheckError, last_hidden_states, self_teacher_verdict
from .atesd_config import ATESDConfig
from .opd_trainer import OPDTrainer


logger = logging.getLogger("trl_opd")

#: The probe's target: the student, given the problem, scores `ANSWER}` after this prefix.
PROBE_PREFIX = "The final answer is \\boxed{"
#: The self-teacher check's exposures: the problem alone (the student's prompt), half and all of the reference.
SELF_TEACHER_EXPOSURES = {"none": None, "partial": 0.5, "full": 1.0}


def exposed_reference(solution: str, alpha: float, delimiter: str = BLANK_LINE) -> str | None:
    """The part of the reference the teacher sees at exposure `α`: its first reasoning segments (split on
    `delimiter`), then the boxed answer, or from `α = (m+1)/(m+2)` up the reference verbatim (OPSD at `α = 1`); see
    [`~trl_opd.data.exposed_segments`]. `None` when the reference has no boxed answer."""
    truncated = truncate_reference(solution, alpha, delimiter)
    return None if truncated is None else truncated[0]


def usable_rows(dataset, where: str = "train dataset"):
    """The rows whose reference solution has a boxed final answer. Others are skipped with one warning giving their
    count; a dataset with none is a [`~trl_opd.data.DatasetValidationError`]."""
    dataset = prepare_dataset(dataset, ["prompt", "solution"], ColumnMap(), where)
    keep = [i for i, solution in enumerate(dataset["solution"]) if extract_boxed(solution or "") is not None]
    if not keep:
        raise DatasetValidationError(
            f"None of the {len(dataset)} rows of the {where} has a \\boxed{{}} final answer in its reference "
            "solution (`solution`); ATESD/OPSD always show the teacher the reference's boxed answer."
        )
    if len(keep) < len(dataset):
        logger.warning(
            "ATESD: %d of %d rows of the %s have no \\boxed{} final answer in their reference solution; they are "
            "skipped.",
            len(dataset) - len(keep),
            len(dataset),
            where,
        )
        dataset = dataset.select(keep)
    return dataset


class ATESDTrainer(OPDTrainer):
    r"""
    ATESD (arXiv 2605.11458): self-distillation from the frozen initial model, whose prompt holds the problem and an
    exposure-truncated reference (the first `⌊α·m⌋` reasoning segments and the boxed answer); the student sees only
    the problem and minimises the per-token forward KL `KL(p_T^α || p_S)` on its own rollouts.

    What differs from [`OPDTrainer`]:
    - [`ATESDTrainer.teacher_prompt`] truncates the reference at the current `α` (verbatim at `α = 1`: OPSD).
    - `α` comes from an [`~trl_opd.controllers.exposure.ExposureController`], advanced once per optimizer step
      when the step's rollouts are generated: it observes the previous step's loss, mismatch (sampled-token
      reverse-KL estimate) and confidence (mean sampled-token probability), the NLL of the reference answers of a
      fixed probe set under the student (only when an open reward window needs it), and the log-prob the exposed
      teacher gives those answers (once per decision). All of them are averaged over processes first, so every
      rank takes the same decisions.
    - Rows whose reference has no boxed answer are skipped at init (one warning with the count).
    - The controller is part of [`ATESDTrainer.extra_state_dict`]: a resumed run continues the same `α` trajectory.
    - Before the first optimizer step, [`ATESDTrainer.check_self_teacher`] checks that the reference helps the
      teacher (`self_teacher_check`).
    - Logged under `atesd/`: `alpha`, `beta_mean`, `beta_concentration`, `reward`, `controller_loss`, `mismatch`,
      `probe_nll`, `teacher_grounding`, and once `self_teacher_logp_none`, `_partial`, `_full`.
    """

    _tag_names = ["trl", "trl-opd", "on-policy-distillation", "self-distillation", "atesd"]
    _name = "ATESD"
    _paper = {
        "title": "ATESD: Adaptive Teacher Exposure for Self-Distillation",
        "id": "2605.11458",
    }  # TRL's card would say GKD (inherited)
    required_columns = ("solution",)

    def __init__(
        self,
        model,
        teacher_model=None,
        args: ATESDConfig | None = None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        callbacks=None,
        optimizers=(None, None),
        quantization_config=None,
        peft_config=None,
        tools=None,
    ):
        args = args if args is not None else ATESDConfig(output_dir="atesd-output")
        args.check_exposure()
        if train_dataset is None:
            raise DatasetValidationError("ATESD needs a train dataset with `prompt` and `solution` columns.")
        train_dataset = usable_rows(train_dataset)
        if eval_dataset is not None and not isinstance(eval_dataset, dict):
            eval_dataset = usable_rows(eval_dataset, "eval dataset")
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
        self.controller = ExposureController(**args.controller_kwargs())
        self.alpha = self.controller.alpha
        self._advanced_step = -1
        self._step_sums: list[torch.Tensor] = []  # per micro-batch: Σ loss, Σ mismatch, Σ confidence, tokens
        generator = torch.Generator().manual_seed(args.seed)
        probe_ids = torch.randperm(len(train_dataset), generator=generator)[: args.probe_size].tolist()
        self.probe_rows = [train_dataset[i] for i in sorted(probe_ids)]
        self._probe_batch: dict[str, torch.Tensor] | None = None
        self._grounding_cache: dict[str, float] = {}  # probe target and exposed prompts -> g (fixed teacher only)

    # ----------------------------------------------------------------- teacher context
    def teacher_prompt(self, example: dict[str, Any], alpha: float | None = None) -> Any:
        """Problem, the reference exposed at `alpha` (default: the current `α`), the transition sentence, the
        boxed-answer instruction."""
        alpha = self.alpha if alpha is None else alpha
        reference = exposed_reference(example["solution"], alpha, self.args.reference_delimiter)
        return privileged_prompt(example["prompt"], reference)

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        if self.model.training and self.state.global_step != self._advanced_step:
            self._advance_controller(self.state.global_step)
        return super()._generate_and_score_completions(inputs)

    # ----------------------------------------------------------------- controller loop
    def _advance_controller(self, step: int) -> None:
        """Feed the controller the finished step's statistics (and the probe NLL when needed), then set `α`."""
        self._advanced_step = step
        controller, metrics = self.controller, self._metrics["train"]
        if self._step_sums:
            loss, mismatch, confidence = self._reduced_step_stats()
            controller.observe(loss, mismatch, confidence)
            metrics["atesd/mismatch"].append(mismatch)
        if controller.needs_probe(step):
            nll = self._probe_nll()
            metrics["atesd/probe_nll"].append(nll)
            for name, value in controller.observe_probe(nll, step).items():
                metrics[f"atesd/{name}"].append(value)
        new_decision = controller.decision_due(step)
        self.alpha = controller.act(step, self.state.max_steps)
        metrics["atesd/alpha"].append(self.alpha)
        if controller.policy == "learned":
            if new_decision and self.args.lambda_gt > 0:
                grounding = self._teacher_grounding()
                controller.set_grounding(grounding)
                metrics["atesd/teacher_grounding"].append(grounding)
            for name, value in controller.beta_stats(step, self.state.max_steps).items():
                metrics[f"atesd/{name}"].append(value)

    def _global_mean(self, sums: torch.Tensor) -> torch.Tensor:
        """`Σ_ranks sums[:-1] / Σ_ranks sums[-1]` (the last entry is the count). `(F+1,) -> (F,)`."""
        total = self.accelerator.gather(sums.to(self.accelerator.device).unsqueeze(0)).sum(0)
        return total[:-1] / total[-1].clamp(min=1)

    def _reduced_step_stats(self) -> list[float]:
        sums = torch.stack([s.to(self.accelerator.device) for s in self._step_sums]).sum(0)
        self._step_sums = []
        return self._global_mean(sums).tolist()

    def token_losses(self, stats: dict[str, torch.Tensor], inputs: dict[str, Any]) -> torch.Tensor:
        """The parent's per-token loss; in training, also sums the controller's step statistics."""
        losses = super().token_losses(stats, inputs)
        if self.model.training:
            mask = self.loss_mask(inputs).to(losses.device)
            mismatch = stats["student_logp"] - stats["teacher_logp"]
            confidence = stats["student_logp"].exp()
            self._step_sums.append(
                torch.stack(
                    [
                        masked_sum(losses.detach(), mask),
                        masked_sum(mismatch.detach(), mask),
                        masked_sum(confidence.detach(), mask),
                        mask.sum().float(),
                    ]
                )
            )
        return losses

    # ----------------------------------------------------------------- probe set
    def _probe_inputs(self) -> dict[str, torch.Tensor]:
        """[`ATESDTrainer._answer_inputs`] of the probe set (`probe_target`: whole solutions or answers), built once."""
        if self._probe_batch is None:
            self._probe_batch = self._answer_inputs(self.probe_rows, self.args.probe_target == "solution")
        return self._probe_batch

    def _answer_inputs(self, rows: list[dict[str, Any]], whole_solution: bool = False) -> dict[str, torch.Tensor]:
        """Student-prompt ids (left-padded) and `PROBE_PREFIX + answer + "}"` (right-padded); `score_mask` marks the
        answer tokens. With `whole_solution`, the target is the row's reference solution, every token scored."""
        device, tok = self.accelerator.device, self._tokenizer
        prompt_ids, _, _ = self._tokenize_prompts([row["prompt"] for row in rows])
        prefix = [] if whole_solution else tok(PROBE_PREFIX, add_special_tokens=False)["input_ids"]
        completions, scored = [], []
        for row in rows:
            text = row["solution"] if whole_solution else extract_boxed(row["solution"]) + "}"
            answer = tok(text, add_special_tokens=False)["input_ids"]
            completions.append(torch.tensor(prefix + answer, device=device))
            scored.append(torch.tensor([0] * len(prefix) + [1] * len(answer), device=device))
        prompts = [torch.tensor(p, device=device) for p in prompt_ids]
        return {
            "prompt_ids": pad(prompts, padding_value=tok.pad_token_id, padding_side="left"),
            "prompt_mask": pad([torch.ones_like(p) for p in prompts], padding_value=0, padding_side="left"),
            "completion_ids": pad(completions, padding_value=tok.pad_token_id, padding_side="right"),
            "completion_mask": pad([torch.ones_like(c) for c in completions], padding_value=0, padding_side="right"),
            "score_mask": pad(scored, padding_value=0, padding_side="right"),
        }

    def _answer_nll_sums(self, unwrapped_student, inputs: dict[str, torch.Tensor], teacher: bool) -> torch.Tensor:
        """`[Σ −log p(answer tokens), #answer tokens]` under the student, or under the teacher (exposed prompt)."""
        completion_ids = inputs["completion_ids"]
        logits_to_keep = completion_ids.size(1)
        if teacher:
            hidden, weight = self.teacher_hidden_states(unwrapped_student, inputs, logits_to_keep)
            head = self.teacher_logit_head(unwrapped_student)
        else:
            input_ids = torch.cat([inputs["prompt_ids"], completion_ids], dim=1)
            attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
            hidden = last_hidden_states(unwrapped_student, input_ids, attention_mask, logits_to_keep)
            weight = unwrapped_student.get_output_embeddings().weight
            head = logit_head(unwrapped_student)
        logp, _ = token_logprobs_and_entropy(hidden, weight.to(hidden.device), completion_ids, head=head)
        mask = inputs["score_mask"].to(logp.device)
        return torch.stack([masked_sum(-logp.float(), mask), mask.sum().float()])

    @torch.no_grad()
    def _probe_score(self, inputs: dict[str, torch.Tensor], teacher: bool) -> float:
        """Mean answer NLL over the probe set, through the student's wrapper (sharded weights are gathered), averaged
        over processes."""
        unwrapped = self._unwrap(self.model)
        sums = self._forward_redirection(
            self.model_wrapped, unwrapped, self._answer_nll_sums, unwrapped, inputs, teacher
        )
        return self._global_mean(sums).item()

    def _probe_nll(self) -> float:
        """`ℓ`: mean NLL per token of the probe set's reference solutions (or answers) under the student
        (problem-only prompt)."""
        return self._probe_score(self._probe_inputs(), teacher=False)

    def _teacher_grounding(self) -> float:
        """`g`: mean log-prob per token the teacher, exposed at the current `α`, gives the probe set's reference
        solutions (or answers).

        A teacher whose weights do not change (an external teacher, or the frozen self-teacher) gives the same value
        for the same prompts, so it is computed once per distinct set of exposed prompts (at most `m + 2` exposure
        levels per row) and then read from a cache; the live and EMA self-teachers are scored every time.
        """
        prompts = [self.teacher_prompt(row) for row in self.probe_rows]
        fixed_teacher = self._self_teacher_kind in (None, "frozen")
        key = f"{self.args.probe_target}:{prompts!r}"  # the probe rows are fixed; their target is not
        if fixed_teacher and key in self._grounding_cache:
            return self._grounding_cache[key]
        inputs = dict(self._probe_inputs())
        inputs.update(self._tokenize_teacher_prompts(prompts))
        grounding = -self._probe_score(inputs, teacher=True)
        if fixed_teacher:
            self._grounding_cache[key] = grounding
        return grounding

    # ----------------------------------------------------------------- self-teacher check
    def self_teacher_scores(self) -> dict[str, float]:
        """Mean log-prob per token the teacher gives the reference solutions of the first `self_teacher_check_rows`
        training rows, teacher-forced after its prompt with no reference (the student's prompt), half (`α = 0.5`) and
        the full reference: `{"none": ., "partial": ., "full": .}`.

        A teacher that reads its prompt predicts a correct solution better when the reference is there (with the
        whole reference, by copying it: that is the privileged signal self-distillation passes on); one that does
        not scores all three alike, and its privileged signal is noise. The target is the dataset's own solution
        text, so the check does not depend on how a model phrases its answer (docs/methods.md: why not the
        probe's boxed-answer phrase). Prompts are built by
        [`ATESDTrainer.teacher_prompt`] and tokenized by the teacher path; every process scores the same rows
        (through the student's wrapper, as the probe: sharded weights are gathered).
        """
        rows = [self.train_dataset[i] for i in range(self._self_teacher_check_size())]
        answers = self._answer_inputs(rows, whole_solution=True)
        scores = {}
        for name, alpha in SELF_TEACHER_EXPOSURES.items():
            prompts = [row["prompt"] if alpha is None else self.teacher_prompt(row, alpha) for row in rows]
            scores[name] = -self._probe_score({**answers, **self._tokenize_teacher_prompts(prompts)}, teacher=True)
        return scores

    def _prepare_for_training(self, max_steps, train_dataloader, resume_from_checkpoint):
        """transformers' preparation (models wrapped, a checkpoint loaded), then the self-teacher check: before the
        progress bar and any optimizer step, with sharded weights already in their wrappers."""
        prepared = super()._prepare_for_training(max_steps, train_dataloader, resume_from_checkpoint)
        if self.args.self_teacher_check != "off":
            self.check_self_teacher()
        return prepared

    def _self_teacher_check_size(self) -> int:
        return min(self.args.self_teacher_check_rows, len(self.train_dataset))

    def check_self_teacher(self) -> None:
        """Log [`ATESDTrainer.self_teacher_scores`] (`atesd/self_teacher_logp_*`); unless the full reference helps
        ([`~trl_opd.teacher.reference_helps`]), warn in one line (`self_teacher_check: warn`) or raise
        [`SelfTeacherCheckError`] (`error`)."""
        scores = self.self_teacher_scores()
        for name, value in scores.items():
            self._metrics["train"][f"atesd/self_teacher_logp_{name}"].append(value)
        message = self_teacher_verdict(scores, self._self_teacher_check_size())
        if message is None:
            return
        if self.args.self_teacher_check == "error":
            raise SelfTeacherCheckError(f"{message} Set self_teacher_check: warn to train anyway.")
        if self.accelerator.is_main_process:
            logger.warning("%s Set self_teacher_check: error to stop instead.", message)

    # ----------------------------------------------------------------- checkpointed state
    def extra_state_dict(self) -> dict[str, Any]:
        """The parent's state plus the controller, the current `α` and the unobserved statistics of the last step."""
        state = super().extra_state_dict()
        state["exposure_controller"] = self.controller.state_dict()
        state["atesd"] = {"alpha": self.alpha, "step_sums": [s.detach().cpu() for s in self._step_sums]}
        return state

    def load_extra_state_dict(self, state: dict[str, Any]) -> None:
        super().load_extra_state_dict(state)
        if "exposure_controller" in state:
            self.controller.load_state_dict(state["exposure_controller"])
            self.alpha = state["atesd"]["alpha"]
            self._step_sums = list(state["atesd"]["step_sums"])
