# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""Models whose logits are not plain `h·Wᵀ`: the loss equals `trl.DistillationTrainer`'s, loss and gradients.

Gemma 2 caps its logits (`final_logit_softcapping`), Granite divides them (`logits_scaling`), Cohere multiplies them
(`logit_scale`) and Phi's `lm_head` has a bias. Tiny models of each family are built offline from their configs.
"""

from __future__ import annotations

import pytest
import torch
import transformers
from trl import DistillationConfig, DistillationTrainer

from trl_opd.heads import logit_head
from trl_opd.testing import fixed_generation_batch, tiny_training_kwargs
from trl_opd.trainers.opd_config import OPDConfig
from trl_opd.trainers.opd_trainer import OPDTrainer


SMALL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}
FAMILIES = {
    "gemma2": (
        "Gemma2Config",
        "Gemma2ForCausalLM",
        {"head_dim": 8, "intermediate_size": 64, "final_logit_softcapping": 3.0},
    ),
    "granite": ("GraniteConfig", "GraniteForCausalLM", {"intermediate_size": 64, "logits_scaling": 4.0}),
    "cohere": ("CohereConfig", "CohereForCausalLM", {"intermediate_size": 64, "logit_scale": 0.25}),
    "phi": ("PhiConfig", "PhiForCausalLM", {"intermediate_size": 64}),
}


def build(family: str, tokenizer, seed: int, **overrides):
    config_name, model_name, extra = FAMILIES[family]
    kwargs = {**SMALL, **extra, **overrides}
    config = getattr(transformers, config_name)(
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **kwargs
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(transformers, model_name)(config)
        head = model.get_output_embeddings()
        if head.bias is not None:  # a bias that matters (initialised to zeros)
            head.bias.data.normal_(0, 1.0)
    return model


def loss_and_grads(trainer, inputs):
    trainer.model.train()
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, dict(inputs), num_items_in_batch=None)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_loss_equals_trl_distillation(family, beta, tiny_tokenizer, arithmetic_dataset, tmp_path):
    student, teacher = build(family, tiny_tokenizer, 0), build(family, tiny_tokenizer, 1, hidden_size=48)
    head = logit_head(student)
    assert head != logit_head(build("gemma2", tiny_tokenizer, 0, final_logit_softcapping=None))  # not a plain head

    def trainer(cls, config_cls, folder, **extra):
        config = config_cls(**tiny_training_kwargs(tmp_path / folder, beta=beta, temperature=0.9), **extra)
        return cls(
            model=student,
            teacher_model=teacher,
            args=config,
            train_dataset=arithmetic_dataset,
            processing_class=tiny_tokenizer,
        )

    inputs = fixed_generation_batch(tiny_tokenizer)
    ours = loss_and_grads(trainer(OPDTrainer, OPDConfig, "ours"), inputs)
    theirs = loss_and_grads(
        trainer(DistillationTrainer, DistillationConfig, "trl", bf16=False, gradient_checkpointing=False), inputs
    )
    torch.testing.assert_close(ours[0], theirs[0], atol=1e-6, rtol=1e-5)
    assert ours[1].keys() == theirs[1].keys()
    for name in ours[1]:
        torch.testing.assert_close(ours[1][name], theirs[1][name], atol=1e-6, rtol=1e-4, msg=name)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_step_backend_logits_equal_the_models_forward(family, tiny_tokenizer):
    """MOTAB's rollout scores tokens from the decoder's hidden states: the same logits as the model's forward."""
    from trl_opd.ops.motab import project_logits

    model = build(family, tiny_tokenizer, 0).eval()
    ids = torch.randint(10, len(tiny_tokenizer), (2, 6))
    with torch.no_grad():
        hidden = model.get_decoder()(input_ids=ids).last_hidden_state
        want = model(input_ids=ids).logits
    got = project_logits(hidden, model.get_output_embeddings().weight, logit_head(model))
    torch.testing.assert_close(got, want.float(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_egrsd_teacher_scores_equal_the_models_forward(family, tiny_tokenizer):
    """EGRSD's teacher scorer (backbone, then a chunked projection) gives the log-probs of the model's own logits;
    rows 0 and 2 share their prompt (run once where the model allows it)."""
    from trl_opd.trainers.egrsd_trainer import EGRSDTrainer

    model = build(family, tiny_tokenizer, 0).eval()
    ids = torch.randint(10, len(tiny_tokenizer), (3, 9))
    ids[2, :5] = ids[0, :5]
    mask, completion = torch.ones_like(ids), ids[:, -4:]
    with torch.no_grad():
        logp, entropy = EGRSDTrainer._score(model, ids[:, :5], mask[:, :5], completion, mask[:, 5:], 0.7, True)
        dense = (model(input_ids=ids).logits[:, -5:-1].float() / 0.7).log_softmax(-1)
    torch.testing.assert_close(logp, dense.gather(-1, completion.unsqueeze(-1)).squeeze(-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(entropy, -(dense.exp() * dense).sum(-1), atol=1e-5, rtol=1e-5)
