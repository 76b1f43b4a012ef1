# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""Collapse repair (`collapse_repair`): where the teacher collapses it writes the rest of the completion, against
references computed densely and token by token here."""

from __future__ import annotations

import math

import pytest
import torch

from trl_opd.ops.reductions import after_collapse_weights, first_collapse_index
from trl_opd.testing import build_tiny_model, fixed_generation_batch, tiny_training_kwargs
from trl_opd.trainers.atesd_config import ATESDConfig
from trl_opd.trainers.motab_config import MOTABConfig
from trl_opd.trainers.opd_config import OPDConfig
from trl_opd.trainers.opd_trainer import OPDTrainer
from trl_opd.trainers.repair import greedy_continuations, splice_completions


def test_first_collapse_index_by_hand_and_against_the_guard():
    log_p = torch.tensor(
        [[-0.1, -9.0, -0.2, -0.1, -9.0], [-0.1, -0.2, -0.3, -0.4, -9.0], [-9.0, -0.1, -0.1, 0.0, 0.0]]
    )
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])
    threshold = math.log(1e-3)
    first = first_collapse_index(log_p, mask, threshold)
    assert first.tolist() == [1, -1, 0]  # row 1's collapse is on padding: none
    weights = after_collapse_weights(log_p, mask, threshold, after_weight=0.0)
    for b, t in enumerate(first.tolist()):  # the guard keeps exactly the tokens up to t*
        assert weights[b].tolist() == (mask[b].tolist() if t < 0 else [1.0] * (t + 1) + [0.0] * (5 - t - 1))


def test_splice_by_hand():
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0], [11, 12, 13, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]])
    new_ids, new_mask, written = splice_completions(
        ids, mask, torch.tensor([1, -1, 0]), {0: [20, 21, 22, 23, 24], 2: [30]}, 0
    )
    assert new_ids.tolist() == [[5, 20, 21, 22, 23, 24], [9, 10, 0, 0, 0, 0], [30, 0, 0, 0, 0, 0]]
    assert new_mask.tolist() == [[1] * 6, [1, 1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]]
    assert written.tolist() == [[0, 1, 1, 1, 1, 1], [0] * 6, [1, 0, 0, 0, 0, 0]]


def _greedy_by_hand(model, prefix: list[int], budget: int, eos: int) -> list[int]:
    """Greedy decoding one token at a time with full forwards (no cache, no padding)."""
    out = []
    with torch.no_grad():
        while len(out) < budget:
            logits = model(input_ids=torch.tensor([prefix + out])).logits[0, -1]
            out.append(int(logits.argmax()))
            if out[-1] == eos:
                break
    return out


def test_greedy_continuations_equal_unbatched_greedy_decoding(tiny_tokenizer):
    model = build_tiny_model(tiny_tokenizer, "teacher", seed=1).eval()
    prefixes, budgets = [[11, 12, 13, 14, 15], [16, 17], [18, 19, 20]], [6, 3, 1]
    eos = tiny_tokenizer.eos_token_id
    got = greedy_continuations(model, prefixes, budgets, [eos], tiny_tokenizer.pad_token_id)
    assert got == [_greedy_by_hand(model, p, b, eos) for p, b in zip(prefixes, budgets, strict=True)]


def dense_logps_and_split_threshold(teacher, batch) -> tuple[torch.Tensor, float]:
    """The teacher's log-probs of a fixed rollout's completion tokens from one dense forward `(B, C)`, and a collapse
    threshold between the second- and third-lowest row minima: two rows of four collapse somewhere, two never."""
    ids, mask = batch["completion_ids"], batch["completion_mask"]
    with torch.no_grad():
        logits = teacher(
            input_ids=torch.cat([batch["prompt_ids"], ids], 1),
            attention_mask=torch.cat([batch["prompt_mask"], mask], 1),
        ).logits[:, -ids.size(1) - 1 : -1]
    dense_logp = torch.log_softmax(logits.float(), -1).gather(-1, ids[..., None]).squeeze(-1)
    row_minima = sorted(dense_logp.masked_fill(~mask.bool(), 0.0).min(-1).values.tolist())
    return dense_logp, (row_minima[1] + row_minima[2]) / 2


def test_trainer_repairs_each_collapsed_row_from_its_safe_prefix(tmp_path, tiny_tokenizer, arithmetic_dataset):
    """At a threshold where random completions collapse part-way, each collapsed row keeps the student's tokens
    before t* (from a dense teacher forward) and continues with the teacher's greedy decoding of its prompt and that
    prefix; rows that never collapse are unchanged; the loss-token count is recounted."""
    teacher = build_tiny_model(tiny_tokenizer, "teacher", seed=1)
    batch = fixed_generation_batch(tiny_tokenizer, batch=4, completion_len=6)
    ids, mask, prompt_ids, prompt_mask = (
        batch[k] for k in ("completion_ids", "completion_mask", "prompt_ids", "prompt_mask")
    )
    dense_logp, threshold = dense_logps_and_split_threshold(teacher, batch)
    trainer = OPDTrainer(
        model=build_tiny_model(tiny_tokenizer, "student", seed=0),
        teacher_model=teacher,
        args=OPDConfig(
            **tiny_training_kwargs(tmp_path),
            teacher_collapse_logp=threshold,
            collapse_repair=True,
            vllm_importance_sampling_correction=True,
        ),
        train_dataset=arithmetic_dataset,
        processing_class=tiny_tokenizer,
    )
    trainer.model.train()
    output = {k: v.clone() for k, v in batch.items()}
    sampler = torch.linspace(-3.0, -0.1, ids.numel()).view(ids.shape).masked_fill(~mask.bool(), math.nan)
    output["sampler_logps"] = sampler.clone()  # vLLM's log-probs of the student's tokens (importance sampling)
    trainer._repair_collapsed(output)

    eos, budget = tiny_tokenizer.eos_token_id, trainer.args.max_completion_length
    repaired = 0
    for b in range(ids.size(0)):
        n = int(mask[b].sum())
        cut = next((t for t in range(n) if dense_logp[b, t] < threshold), None)
        if cut is None:
            expected, written = ids[b, :n].tolist(), [0] * n
        else:
            repaired += 1
            prefix = prompt_ids[b][prompt_mask[b].bool()].tolist() + ids[b, :cut].tolist()
            continuation = _greedy_by_hand(teacher, prefix, budget - cut, eos)
            expected, written = ids[b, :cut].tolist() + continuation, [0] * cut + [1] * len(continuation)
        m = int(output["completion_mask"][b].sum())
        assert output["completion_ids"][b, :m].tolist() == expected
        assert output["teacher_written"][b, :m].tolist() == written
        kept = n if cut is None else cut  # the sampler's log-probs stay on the student's kept tokens only
        torch.testing.assert_close(output["sampler_logps"][b, :kept], sampler[b, :kept])
        assert output["sampler_logps"][b, kept:].isnan().all()
    assert output["sampler_logps"].shape == output["completion_ids"].shape
    assert repaired == 2
    assert output["num_items_in_batch"].item() == output["completion_mask"].sum().item()
    assert trainer._metrics["train"]["repair/repaired_fraction"] == [repaired / ids.size(0)]
    loss = trainer.compute_loss(trainer.model, output)  # the repaired batch trains
    loss.backward()
    assert torch.isfinite(loss) and any(p.grad is not None for p in trainer.model.parameters())


def test_bad_settings_are_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="collapse_repair needs teacher_collapse_logp"):
        OPDConfig(**tiny_training_kwargs(tmp_path), collapse_repair=True)
    with pytest.raises(ValueError, match="divergence 'jsd'"):
        OPDConfig(**tiny_training_kwargs(tmp_path), collapse_repair=True, teacher_collapse_logp=-5.0, divergence="k1")
    with pytest.raises(ValueError, match="MOTAB"):
        MOTABConfig(**tiny_training_kwargs(tmp_path), collapse_repair=True, teacher_collapse_logp=-5.0)
    assert ATESDConfig(**tiny_training_kwargs(tmp_path), collapse_repair=True).collapse_repair  # guard on by default
    assert ATESDConfig(**tiny_training_kwargs(tmp_path)).teacher_collapse_logp == -0.69  # p_T < 0.5 (the lab)


def test_with_peft_the_adapter_off_student_writes_the_repair(tiny_tokenizer, arithmetic_dataset, tmp_path):
    """The frozen self-teacher of a PEFT student is the student with its adapter off: its repair is the initial
    weights' greedy decoding, and the student is back in train mode with its adapter on afterwards."""
    from peft import LoraConfig

    reference = build_tiny_model(tiny_tokenizer, "student", seed=0).eval()
    trainer = OPDTrainer(
        model=build_tiny_model(tiny_tokenizer, "student", seed=0),
        args=OPDConfig(**tiny_training_kwargs(tmp_path), teacher_collapse_logp=0.0, collapse_repair=True),
        train_dataset=arithmetic_dataset,
        processing_class=tiny_tokenizer,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    trainer.model.train()
    batch = fixed_generation_batch(tiny_tokenizer, batch=2, completion_len=4)
    trainer._repair_collapsed(batch)  # log p < 0 everywhere: every row collapses at its first token
    budget, eos = trainer.args.max_completion_length, tiny_tokenizer.eos_token_id
    for b in range(2):
        prompt = batch["prompt_ids"][b][batch["prompt_mask"][b].bool()].tolist()
        want = _greedy_by_hand(reference, prompt, budget, eos)
        assert batch["completion_ids"][b, : len(want)].tolist() == want
        assert batch["teacher_written"][b].sum().item() == len(want)
    assert trainer.model.training
    ids = batch["prompt_ids"][:1]
    with torch.no_grad():  # the adapter is on again: the student no longer computes the initial weights' logits
        assert not torch.allclose(trainer.model(input_ids=ids).logits, reference(input_ids=ids).logits)


@pytest.mark.parametrize(
    "env", [{"ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}, {"ACCELERATE_USE_FSDP": "true"}], ids=["zero3", "fsdp"]
)
def test_sharded_launch_is_refused_before_any_model_loads(tmp_path, monkeypatch, env):
    """`accelerate launch` with ZeRO-3 or FSDP sets these variables; the config refuses repair there in one line,
    while ZeRO-2 (stage 2) is accepted."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValueError, match="collapse_repair is not supported under"):
        ATESDConfig(**tiny_training_kwargs(tmp_path))
    assert not ATESDConfig(**tiny_training_kwargs(tmp_path), collapse_repair=False).collapse_repair
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
    assert ATESDConfig(**tiny_training_kwargs(tmp_path)).collapse_repair
