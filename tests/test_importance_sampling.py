# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""Truncated importance sampling of K1 against the sampler's log-probs (`vllm_importance_sampling_correction`): the
op against a dense reference, the trainer's loss and gradients against full-logit references with fake sampler
log-probs in the batch, and the vLLM path's log-probs reaching the batch (a recording stand-in for TRL's engine)."""

from __future__ import annotations

import math

import pytest
import torch
from peft import LoraConfig

from trl_opd.demo.task import make_dataset
from trl_opd.errors import UserError
from trl_opd.ops import k1_policy_gradient_loss
from trl_opd.testing import build_tiny_model, fixed_generation_batch, tiny_training_kwargs
from trl_opd.trainers.opd_config import OPDConfig
from trl_opd.trainers.opd_trainer import OPDTrainer
from trl_opd.trainers.tropd_config import TrOPDConfig
from trl_opd.trainers.tropd_trainer import TrOPDTrainer


CAP = 1.5


def test_op_matches_dense_truncated_importance_sampling():
    g = torch.Generator().manual_seed(0)
    student = torch.randn(3, 5, generator=g).log_softmax(-1).requires_grad_()
    teacher = torch.randn(3, 5, generator=g).log_softmax(-1)
    sampler = student.detach() + 0.8 * torch.randn(3, 5, generator=g)
    sampler[1, 2] = math.nan  # a token the sampler did not write: weight 1
    loss = k1_policy_gradient_loss(student, teacher, old_student_logp=sampler, importance_clip=CAP)
    loss.sum().backward()
    weight = [
        [1.0 if math.isnan(q) else min(math.exp(p - q), CAP) for p, q in zip(pr, qr)]
        for pr, qr in zip(student.detach().tolist(), sampler.tolist())
    ]
    weight = torch.tensor(weight)
    advantage = teacher - student.detach()
    torch.testing.assert_close(loss.detach(), -advantage * weight * student.detach())
    torch.testing.assert_close(student.grad, -advantage * weight)  # the weight is detached
    assert (weight < CAP).any() and (weight == CAP).any() and weight[1, 2] == 1.0


def _trainer(cls, config_cls, tmp_path, tokenizer, **overrides):
    args = config_cls(**tiny_training_kwargs(tmp_path, divergence="k1", **overrides))
    trainer = cls(
        model=build_tiny_model(tokenizer, "student", seed=0),
        teacher_model=build_tiny_model(tokenizer, "teacher", seed=1),
        args=args,
        train_dataset=make_dataset(8),
        processing_class=tokenizer,
    )
    trainer.model.train()
    return trainer


def _completion_logps(model, batch, temperature):
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    k = batch["completion_ids"].size(1)
    logits = model(input_ids=ids, attention_mask=mask).logits[:, -k - 1 : -1].float() / temperature
    return logits.log_softmax(-1).gather(-1, batch["completion_ids"][..., None]).squeeze(-1)


def _batch_with_sampler(tokenizer, student, temperature):
    batch = fixed_generation_batch(tokenizer, batch=4)
    with torch.no_grad():
        s = _completion_logps(student, batch, temperature)
    sampler = s + 0.7 * torch.randn(s.shape, generator=torch.Generator().manual_seed(1))
    sampler[0, 0] = math.nan
    batch["sampler_logps"] = sampler
    return batch


def _loss_and_grads(trainer, batch):
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, dict(batch))
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


def test_trainer_weights_k1_by_the_sampler_ratio(tmp_path, tiny_tokenizer):
    trainer = _trainer(
        OPDTrainer,
        OPDConfig,
        tmp_path,
        tiny_tokenizer,
        vllm_importance_sampling_correction=True,
        vllm_importance_sampling_clip_max=CAP,
    )
    batch = _batch_with_sampler(tiny_tokenizer, trainer.model, trainer.temperature)
    loss, grads = _loss_and_grads(trainer, batch)

    # dense reference: full logits of both models
    student, teacher = trainer.model, trainer.teacher_model
    s = _completion_logps(student, batch, trainer.temperature)
    with torch.no_grad():
        t = _completion_logps(teacher, batch, trainer.temperature)
    ratio = torch.exp(s.detach() - batch["sampler_logps"]).clamp(max=CAP)
    weight = torch.where(batch["sampler_logps"].isnan(), torch.ones_like(ratio), ratio)
    mask = batch["completion_mask"]
    assert ((weight - 1).abs() * mask > 1e-3).any()
    ref = (-(t - s.detach()) * weight * s * mask).sum() / batch["num_items_in_batch"]
    student.zero_grad()
    ref.backward()
    torch.testing.assert_close(loss, ref.detach(), atol=1e-6, rtol=1e-4)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, dict(student.named_parameters())[name].grad, atol=1e-6, rtol=1e-3, msg=name)

    # off (the default): the sampler's log-probs are ignored
    plain = _trainer(OPDTrainer, OPDConfig, tmp_path, tiny_tokenizer)
    without = {k: v for k, v in batch.items() if k != "sampler_logps"}
    torch.testing.assert_close(_loss_and_grads(plain, batch)[0], _loss_and_grads(plain, without)[0])
    assert not torch.allclose(_loss_and_grads(plain, batch)[0], loss)


def test_tropd_k1_part_is_corrected_as_opd(tmp_path, tiny_tokenizer):
    """TrOPD at `trust_threshold=0`, guidance off, no collapse handling, is OPD's K1: also with the correction."""
    common = {"vllm_importance_sampling_correction": True, "vllm_importance_sampling_clip_max": CAP}
    opd = _trainer(OPDTrainer, OPDConfig, tmp_path, tiny_tokenizer, **common)
    tropd = _trainer(
        TrOPDTrainer,
        TrOPDConfig,
        tmp_path,
        tiny_tokenizer,
        trust_region_loss="k1",
        trust_threshold=0.0,
        guidance_prob_start=0.0,
        teacher_collapse_logp=None,
        collapse_repair=False,
        **common,
    )
    batch = _batch_with_sampler(tiny_tokenizer, opd.model, opd.temperature)
    torch.testing.assert_close(_loss_and_grads(tropd, batch)[0], _loss_and_grads(opd, batch)[0])


class RecordingVLLM:
    """Stands in for TRL's `VLLMGeneration`: fixed completions and their log-probs, records what it was asked."""

    def __init__(self, completions, logprobs):
        self.completions, self.logprobs_out, self.logprobs, self.synced = completions, logprobs, None, 0

    def sync_weights(self):
        self.synced += 1

    def generate(self, prompts, images, num_generations):
        assert self.logprobs == 0, "the trainer must ask for the sampled token's log-prob"
        return prompts, self.completions[: len(prompts)], self.logprobs_out[: len(prompts)], None


def test_vllm_log_probs_reach_the_batch(tmp_path, tiny_tokenizer):
    trainer = _trainer(OPDTrainer, OPDConfig, tmp_path, tiny_tokenizer, vllm_importance_sampling_correction=True)
    eos = tiny_tokenizer.eos_token_id
    completions = [[11, 12, eos], [13, eos], [14, 15, 16, eos], [17, eos]]
    logprobs = [[[-0.1 * (i + j)] for j in range(len(c))] for i, c in enumerate(completions)]
    trainer.use_vllm, trainer._last_loaded_step = True, -1
    trainer.vllm_generation = RecordingVLLM(completions, logprobs)
    trainer.vllm_generation.logprobs = 0  # what `__init__` sets when the engine exists
    rows = [dict(make_dataset(8)[i]) for i in range(4)]
    out = trainer._generate_and_score_completions(rows)
    assert trainer.vllm_generation.synced == 1
    sampler = out["sampler_logps"]
    assert sampler.shape == out["completion_ids"].shape == (4, 4)
    for i, c in enumerate(completions):
        assert out["completion_ids"][i, : len(c)].tolist() == c
        torch.testing.assert_close(sampler[i, : len(c)], torch.tensor([lp[0] for lp in logprobs[i]]))
        assert sampler[i, len(c) :].isnan().all()
    loss = trainer.compute_loss(trainer.model, out)
    assert torch.isfinite(loss)


def test_ema_self_teacher_with_peft_is_refused(tmp_path, tiny_tokenizer):
    args = OPDConfig(**tiny_training_kwargs(tmp_path, self_teacher="ema"))
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    with pytest.raises(UserError, match="self_teacher: ema is not supported with PEFT"):
        OPDTrainer(
            model=build_tiny_model(tiny_tokenizer, "student", seed=0),
            args=args,
            train_dataset=make_dataset(8),
            processing_class=tiny_tokenizer,
            peft_config=lora,
        )
