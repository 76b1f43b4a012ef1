# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""OPDTrainer: reduction to trl.DistillationTrainer, K1 against a dense reference, gradient accumulation, teacher
prompts, and a smoke run."""

import pytest
import torch
from trl import DistillationConfig, DistillationTrainer

from trl_opd.testing import build_tiny_model, fixed_generation_batch, tiny_training_kwargs
from trl_opd.trainers.opd_config import OPDConfig
from trl_opd.trainers.opd_trainer import OPDTrainer


def make_trainer(cls, config_cls, tokenizer, dataset, tmp_path, student=None, teacher=None, **overrides):
    student = student or build_tiny_model(tokenizer, "student", seed=0)
    teacher = teacher or build_tiny_model(tokenizer, "teacher", seed=1)
    config = config_cls(**tiny_training_kwargs(tmp_path, **overrides))
    return cls(model=student, teacher_model=teacher, args=config, train_dataset=dataset, processing_class=tokenizer)


def loss_and_grads(trainer, inputs, num_items=None):
    trainer.model.train()
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, dict(inputs), num_items_in_batch=num_items)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_jsd_loss_and_grads_equal_trl_distillation(tiny_tokenizer, arithmetic_dataset, tmp_path, beta):
    ours = make_trainer(OPDTrainer, OPDConfig, tiny_tokenizer, arithmetic_dataset, tmp_path / "a", beta=beta)
    theirs = make_trainer(
        DistillationTrainer,
        DistillationConfig,
        tiny_tokenizer,
        arithmetic_dataset,
        tmp_path / "b",
        beta=beta,
        bf16=False,
        gradient_checkpointing=False,
    )
    inputs = fixed_generation_batch(tiny_tokenizer)
    loss_a, grads_a = loss_and_grads(ours, inputs)
    loss_b, grads_b = loss_and_grads(theirs, inputs)
    torch.testing.assert_close(loss_a, loss_b, atol=1e-6, rtol=1e-5)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], atol=1e-6, rtol=1e-4, msg=name)


def test_k1_loss_equals_dense_policy_gradient(tiny_tokenizer, arithmetic_dataset, tmp_path):
    trainer = make_trainer(OPDTrainer, OPDConfig, tiny_tokenizer, arithmetic_dataset, tmp_path, divergence="k1")
    inputs = fixed_generation_batch(tiny_tokenizer)
    loss, grads = loss_and_grads(trainer, inputs)
    # dense reference: full logits of both models, -(1/N) Σ sg(log pT - log pS) log pS
    student, teacher = trainer.model, trainer.teacher_model
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
    k = inputs["completion_ids"].size(1)
    student.zero_grad()
    s = student(input_ids=ids, attention_mask=mask).logits[:, -k - 1 : -1].log_softmax(-1)
    with torch.no_grad():
        t = teacher(input_ids=ids, attention_mask=mask).logits[:, -k - 1 : -1].log_softmax(-1)
    pick = inputs["completion_ids"].unsqueeze(-1)
    s_tok, t_tok = s.gather(-1, pick).squeeze(-1), t.gather(-1, pick).squeeze(-1)
    cm = inputs["completion_mask"]
    ref = -((t_tok - s_tok).detach() * s_tok * cm).sum() / cm.sum()
    ref.backward()
    torch.testing.assert_close(loss, ref.detach(), atol=1e-5, rtol=1e-4)
    for name, param in student.named_parameters():
        torch.testing.assert_close(grads[name], param.grad, atol=1e-5, rtol=1e-3, msg=name)


def test_gradient_accumulation_one_by_four_equals_four_by_one(tiny_tokenizer, arithmetic_dataset, tmp_path):
    trainer = make_trainer(OPDTrainer, OPDConfig, tiny_tokenizer, arithmetic_dataset, tmp_path, beta=0.5)
    inputs = fixed_generation_batch(tiny_tokenizer)
    total = inputs["completion_mask"].sum()
    _, full = loss_and_grads(trainer, inputs, num_items=total)
    trainer.model.zero_grad()
    for i in range(4):
        micro = {k: (v[i : i + 1] if v.dim() else v) for k, v in inputs.items()}
        trainer.compute_loss(trainer.model, micro, num_items_in_batch=total).backward()
    for name, param in trainer.model.named_parameters():
        torch.testing.assert_close(param.grad, full[name], atol=1e-6, rtol=1e-4, msg=name)


def test_teacher_sees_privileged_context_and_its_own_template(tiny_tokenizer, arithmetic_dataset, tmp_path):
    trainer = make_trainer(
        OPDTrainer,
        OPDConfig,
        tiny_tokenizer,
        arithmetic_dataset,
        tmp_path,
        privileged_context=True,
        chat_template_kwargs={"enable_thinking": False},
        teacher_chat_template_kwargs={"enable_thinking": True},
    )
    rows = [arithmetic_dataset[i] for i in range(2)]
    student = trainer._tokenize_prompts([r["prompt"] for r in rows])[0]
    teacher = trainer._tokenize_teacher_prompts([trainer.teacher_prompt(r) for r in rows])
    for row, s_ids, t_ids, t_mask in zip(rows, student, teacher["teacher_prompt_ids"], teacher["teacher_prompt_mask"]):
        s_text = tiny_tokenizer.decode(s_ids)
        t_text = tiny_tokenizer.decode(t_ids[t_mask.bool()])
        assert row["solution"] in t_text and row["solution"] not in s_text
        assert s_text.endswith("<think>\n\n</think>\n\n") and not t_text.endswith("</think>\n\n")


def test_padded_teacher_head_is_aligned_and_trains(tiny_tokenizer, arithmetic_dataset, tmp_path):
    teacher = build_tiny_model(tiny_tokenizer, "teacher", seed=1, vocab_size=len(tiny_tokenizer) + 64)
    trainer = make_trainer(
        OPDTrainer, OPDConfig, tiny_tokenizer, arithmetic_dataset, tmp_path, teacher=teacher, max_steps=2
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert trainer.teacher_model.get_output_embeddings().weight.shape[0] == len(tiny_tokenizer)
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())
    logged = trainer.state.log_history[0]
    for key in ("loss", "divergence", "teacher_entropy", "k1_reverse_kl", "entropy"):
        assert key in logged and logged[key] == logged[key]  # present and not NaN


@pytest.mark.parametrize("kind", ["frozen", "live", "ema"])
def test_self_teacher_kinds(tiny_tokenizer, arithmetic_dataset, tmp_path, kind):
    student = build_tiny_model(tiny_tokenizer, "student", seed=0)
    config = OPDConfig(
        **tiny_training_kwargs(tmp_path, self_teacher=kind, privileged_context=True, teacher_ema_decay=0.5)
    )
    trainer = OPDTrainer(model=student, args=config, train_dataset=arithmetic_dataset, processing_class=tiny_tokenizer)
    initial = {n: p.detach().clone() for n, p in student.named_parameters()}
    trainer.train()
    if kind == "live":
        assert trainer.teacher_model is None
        return
    teacher = dict(trainer.teacher_model.named_parameters())
    moved = any(not torch.equal(initial[n], teacher[n]) for n in initial)
    assert moved == (kind == "ema")
    assert all(not p.requires_grad for p in teacher.values())


def test_unwrap_is_accelerates_and_runs_once_per_wrapper(tiny_tokenizer, arithmetic_dataset, tmp_path, monkeypatch):
    student = build_tiny_model(tiny_tokenizer, "student", seed=0)
    config = OPDConfig(**tiny_training_kwargs(tmp_path, self_teacher="frozen", privileged_context=True))
    trainer = OPDTrainer(model=student, args=config, train_dataset=arithmetic_dataset, processing_class=tiny_tokenizer)
    calls = []
    unwrap = trainer.accelerator.unwrap_model
    monkeypatch.setattr(trainer.accelerator, "unwrap_model", lambda model: calls.append(model) or unwrap(model))
    for _ in range(3):
        assert trainer._unwrap(trainer.teacher_model) is unwrap(trainer.teacher_model)
        assert trainer._unwrap(trainer.model) is unwrap(trainer.model)
    assert calls == [trainer.teacher_model, trainer.model]
    rewrapped = torch.nn.ModuleList([trainer.model])  # a new wrapper object is unwrapped afresh
    trainer._unwrap(rewrapped)
    assert calls[-1] is rewrapped


def test_frozen_self_teacher_with_peft_switches_the_adapter_off(tiny_tokenizer, arithmetic_dataset, tmp_path):
    from peft import LoraConfig

    student = build_tiny_model(tiny_tokenizer, "student", seed=0)
    reference = build_tiny_model(tiny_tokenizer, "student", seed=0)
    config = OPDConfig(**tiny_training_kwargs(tmp_path, learning_rate=5e-2))
    trainer = OPDTrainer(
        model=student,
        args=config,
        train_dataset=arithmetic_dataset,
        processing_class=tiny_tokenizer,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    assert trainer.teacher_model is None
    inputs = fixed_generation_batch(tiny_tokenizer)
    hidden, _ = trainer.teacher_hidden_states(trainer.model, inputs, inputs["completion_ids"].size(1))
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
    with torch.no_grad():
        want = reference.model(input_ids=ids, attention_mask=mask).last_hidden_state[:, -6:-1]
    torch.testing.assert_close(hidden, want, atol=1e-5, rtol=1e-4)
