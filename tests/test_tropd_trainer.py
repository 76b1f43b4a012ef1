# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""TrOPDTrainer on tiny models: reduction to `opd` (K1), the full loss against a dense reference, prefix guidance."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from test_collapse_repair import dense_logps_and_split_threshold
from trl import DistillationTrainer

from trl_opd import OPDConfig, OPDTrainer
from trl_opd.testing import fixed_generation_batch, tiny_training_kwargs
from trl_opd.trainers.tropd_config import TrOPDConfig
from trl_opd.trainers.tropd_trainer import TrOPDTrainer


@pytest.fixture(scope="module")
def make_trainer(tmp_path_factory, tiny_pair_dir, arithmetic_dataset):
    def build(cls=TrOPDTrainer, config_cls=TrOPDConfig, **overrides):
        """TrOPD (or `cls`) on the tiny pair; TrOPD without its collapse repair unless asked (the tests below hold
        the other parts against references; the repair has its own)."""
        if config_cls is TrOPDConfig:
            overrides = {"teacher_collapse_logp": None, "collapse_repair": False, **overrides}
        out = tmp_path_factory.mktemp("tropd_out")
        config = config_cls(**tiny_training_kwargs(out, **overrides))
        trainer = cls(
            model=str(tiny_pair_dir / "student"),
            teacher_model=str(tiny_pair_dir / "teacher"),
            args=config,
            train_dataset=arithmetic_dataset,
        )
        trainer.model.train()
        return trainer

    return build


def hand_built_batch(vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Left-padded prompts and right-padded completions, as `_generate_and_score_completions` returns them."""
    g = torch.Generator().manual_seed(seed)
    prompt_ids = torch.randint(10, vocab, (3, 5), generator=g)
    completion_ids = torch.randint(10, vocab, (3, 7), generator=g)
    prompt_mask = torch.tensor([[1] * 5, [0, 0, 1, 1, 1], [0, 1, 1, 1, 1]])
    completion_mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 6 + [0]])
    return {
        "prompt_ids": prompt_ids * prompt_mask,
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "num_items_in_batch": completion_mask.sum(),
    }


def dense_reference_loss(
    student, teacher, batch, threshold, k, lambda_out=1.0, lambda_off=1.0, tail_bucket=True, in_region="k1"
):
    """TrOPD's loss from full logits (torch log_softmax / topk / kl_div): the independent reference. `in_region`:
    `k1`, or `forward_kl` (`trust_region_loss: divergence` at `beta: 0`)."""
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    attention = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    n = batch["completion_ids"].size(1)
    z_s = student(input_ids=ids, attention_mask=attention).logits[:, -n - 1 : -1]
    with torch.no_grad():
        z_t = teacher(input_ids=ids, attention_mask=attention).logits[:, -n - 1 : -1]
    ls_all, lt_all = z_s.log_softmax(-1), z_t.log_softmax(-1)
    y = batch["completion_ids"].unsqueeze(-1)
    ls, lt = ls_all.gather(-1, y).squeeze(-1), lt_all.gather(-1, y).squeeze(-1)
    trusted = ((lt - ls).detach().exp().clamp(max=1.0) >= threshold).float()
    k1 = -(lt - ls).detach() * ls
    top_t, idx = z_t.topk(k, dim=-1)
    if tail_bucket:  # the top-k full-vocabulary log-probs, and the rest of the vocabulary as one bucket
        t_in, s_in = lt_all.gather(-1, idx), ls_all.gather(-1, idx)
        t_tail, s_tail = torch.log1p(-t_in.exp().sum(-1)), torch.log1p(-s_in.exp().sum(-1))
        outlier_kl = F.kl_div(s_in, t_in, log_target=True, reduction="none").sum(-1)
        outlier_kl = outlier_kl + t_tail.exp() * (t_tail - s_tail)
    else:
        outlier_kl = F.kl_div(
            z_s.gather(-1, idx).log_softmax(-1), top_t.log_softmax(-1), log_target=True, reduction="none"
        ).sum(-1)
    forward_kl = F.kl_div(ls_all, lt_all, log_target=True, reduction="none").sum(-1)
    mask = batch["completion_mask"].float()
    prefix = batch.get("teacher_token_mask", torch.zeros_like(mask)).float()
    in_region_loss = k1 if in_region == "k1" else forward_kl
    per_token = (1 - prefix) * (
        trusted * in_region_loss + lambda_out * (1 - trusted) * outlier_kl
    ) + lambda_off * prefix * forward_kl
    return (per_token * mask).sum() / mask.sum(), trusted * mask * (1 - prefix)


def loss_and_grads(trainer, batch):
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, dict(batch))
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


def dense_and_grads(trainer, batch, **kwargs):
    trainer.model.zero_grad()
    teacher = trainer.accelerator.unwrap_model(trainer.teacher_model)
    loss, trusted = dense_reference_loss(trainer.model, teacher, batch, **kwargs)
    loss.backward()
    return (
        loss.detach(),
        {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None},
        trusted,
    )


def assert_same_grads(grads, ref, **tol):
    assert grads.keys() == ref.keys() and grads
    for name in ref:
        torch.testing.assert_close(grads[name], ref[name], msg=name, **tol)


def test_reduces_to_opd_k1_and_to_dense_k1(make_trainer, tiny_tokenizer):
    tropd = make_trainer(trust_threshold=0.0, guidance_prob_start=0.0)  # the default in-region loss
    opd = make_trainer(OPDTrainer, OPDConfig, divergence="k1")
    batch = hand_built_batch(len(tiny_tokenizer))
    loss, grads = loss_and_grads(tropd, batch)
    opd_loss, opd_grads = loss_and_grads(opd, batch)
    torch.testing.assert_close(loss, opd_loss, rtol=1e-6, atol=1e-7)
    assert_same_grads(grads, opd_grads, rtol=1e-6, atol=1e-7)
    dense, dense_grads, _ = dense_and_grads(tropd, batch, threshold=0.0, k=tropd.args.outlier_top_k)
    torch.testing.assert_close(loss, dense, rtol=1e-5, atol=1e-6)
    assert_same_grads(grads, dense_grads, rtol=1e-4, atol=1e-6)
    assert tropd._metrics["train"]["tropd/trusted_fraction"][-1] == 1.0
    assert tropd._metrics["train"]["tropd/loss_outlier"][-1] == 0.0


def test_dense_trust_region_loss_reduces_to_opd_and_matches_dense_reference(make_trainer, tiny_tokenizer):
    """`trust_region_loss: divergence`: at `δ = 0` without guidance, `opd`'s forward KL (`divergence: jsd`,
    `beta: 0`) in loss and gradients; at `δ = 0.9` the dense reference with forward KL on trusted tokens."""
    batch = hand_built_batch(len(tiny_tokenizer), seed=2)
    tropd = make_trainer(trust_region_loss="divergence", trust_threshold=0.0, guidance_prob_start=0.0, beta=0.0)
    opd = make_trainer(OPDTrainer, OPDConfig, divergence="jsd", beta=0.0)
    loss, grads = loss_and_grads(tropd, batch)
    opd_loss, opd_grads = loss_and_grads(opd, batch)
    torch.testing.assert_close(loss, opd_loss, rtol=1e-6, atol=1e-7)
    assert_same_grads(grads, opd_grads, rtol=1e-6, atol=1e-7)
    trainer = make_trainer(trust_region_loss="divergence", trust_threshold=0.9, outlier_top_k=16, beta=0.0)
    loss, grads = loss_and_grads(trainer, batch)
    dense, dense_grads, trusted = dense_and_grads(trainer, batch, threshold=0.9, k=16, in_region="forward_kl")
    torch.testing.assert_close(loss, dense, rtol=1e-5, atol=1e-6)
    assert_same_grads(grads, dense_grads, rtol=1e-4, atol=1e-6)
    assert 0 < trusted.sum() < batch["completion_mask"].sum()  # both routes are exercised
    k1_trainer = make_trainer(trust_region_loss="k1", trust_threshold=0.9, outlier_top_k=16, beta=0.0)
    assert not torch.allclose(loss_and_grads(k1_trainer, batch)[0], loss)  # the option changes the loss


def test_trust_region_loss_is_checked():
    with pytest.raises(ValueError, match="trust_region_loss"):
        TrOPDConfig(output_dir="unused", trust_region_loss="jsd")


@pytest.mark.parametrize(("tail_bucket", "trust_region_loss"), [(True, "k1"), (False, "k1"), (True, "divergence")])
def test_full_loss_with_outliers_and_prefix_matches_dense_reference(
    make_trainer, tiny_tokenizer, tail_bucket, trust_region_loss
):
    trainer = make_trainer(
        trust_threshold=0.9,
        outlier_top_k=16,
        lambda_out=0.5,
        lambda_off=2.0,
        outlier_tail_bucket=tail_bucket,
        trust_region_loss=trust_region_loss,
    )
    batch = hand_built_batch(len(tiny_tokenizer), seed=1)
    batch["teacher_token_mask"] = torch.tensor([[1, 1, 0, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0], [0] * 7])
    loss, grads = loss_and_grads(trainer, batch)
    in_region = "k1" if trust_region_loss == "k1" else "forward_kl"  # beta 0: the JSD is the forward KL
    dense, dense_grads, trusted = dense_and_grads(
        trainer,
        batch,
        threshold=0.9,
        k=16,
        lambda_out=0.5,
        lambda_off=2.0,
        tail_bucket=tail_bucket,
        in_region=in_region,
    )
    on_policy = batch["completion_mask"] * (1 - batch["teacher_token_mask"])
    assert 0 < trusted.sum() < on_policy.sum()  # both routes are exercised
    torch.testing.assert_close(loss, dense, rtol=1e-5, atol=1e-6)
    assert_same_grads(grads, dense_grads, rtol=1e-4, atol=1e-6)
    metrics = trainer._metrics["train"]
    assert metrics["tropd/trusted_fraction"][-1] == pytest.approx((trusted.sum() / on_policy.sum()).item())
    assert metrics["tropd/loss_prefix"][-1] > 0 and metrics["tropd/loss_outlier"][-1] > 0


def test_outlier_top_k_larger_than_vocabulary_fails(make_trainer):
    with pytest.raises(ValueError, match="outlier_top_k"):
        make_trainer(outlier_top_k=10**6)


def greedy(model, ids: list[int], max_new_tokens: int) -> list[int]:
    out = model.generate(
        torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        do_sample=False,
        max_new_tokens=max_new_tokens,
    )
    return out[0, len(ids) :].tolist()


def test_guided_continuation_starts_where_the_teacher_prefix_ends(make_trainer, arithmetic_dataset, monkeypatch):
    trainer = make_trainer(guidance_prob_start=1.0, guidance_rho_start=0.5, max_completion_length=10)
    calls = []  # (generating model, contexts, completions) at the parent's generation layer
    parent = DistillationTrainer._generate_single_turn

    def spy(self, prompt_ids, *args, **kwargs):
        completions = parent(self, prompt_ids, *args, **kwargs)
        who = "teacher" if self.model_wrapped is self.teacher_model else "student"
        calls.append((who, [list(p) for p in prompt_ids], completions))
        return completions

    monkeypatch.setattr(DistillationTrainer, "_generate_single_turn", spy)
    rows = [arithmetic_dataset[i] for i in range(3)]
    batch = trainer._generate_and_score_completions(rows)
    (who_t, prompts, rollouts), (who_s, contexts, continuations) = calls
    assert (who_t, who_s) == ("teacher", "student") and trainer.model_wrapped is trainer.model
    eos = set(trainer.eos_token_ids)
    for i in range(len(rows)):
        prompt = batch["prompt_ids"][i][batch["prompt_mask"][i].bool()].tolist()
        completion = batch["completion_ids"][i][batch["completion_mask"][i].bool()].tolist()
        rollout = rollouts[i]
        n = min(math.floor(0.5 * len(rollout)), len(rollout) - (rollout[-1] in eos))
        assert n > 0 and prompts[i] == prompt
        assert batch["teacher_token_mask"][i].tolist() == [1] * n + [0] * (batch["completion_ids"].size(1) - n)
        assert completion[:n] == rollout[:n]  # the teacher's prefix ...
        assert contexts[i] == prompt + rollout[:n]  # ... the student generates from exactly there ...
        assert completion[n:] == list(continuations[i])[: 10 - n]  # ... and its tokens follow the prefix
    assert trainer._metrics["train"]["guidance/guided_fraction"][-1] == 1.0
    # provenance reaches the loss: the guided batch's loss is the dense reference with prefix routing
    loss, _ = loss_and_grads(trainer, batch)
    dense, _, _ = dense_and_grads(trainer, batch, threshold=1.0, k=64)  # the default in-region loss, K1
    torch.testing.assert_close(loss, dense, rtol=1e-5, atol=1e-6)
    assert trainer._metrics["train"]["tropd/loss_prefix"][-1] > 0


class FakeVLLM:
    """Stand-in for `VLLMGeneration` at its boundary: greedy completions of a model, calls recorded."""

    def __init__(self, model, eos):
        self.model, self.eos, self.prompts, self.syncs = model, eos, [], 0

    def sync_weights(self):
        self.syncs += 1

    def generate(self, prompts, images, num_generations, profiler=None):
        self.prompts.append([list(p) for p in prompts])
        outs = []
        for p in prompts:
            c = greedy(self.model, list(p), 6)
            outs.append(c[: next((j + 1 for j, t in enumerate(c) if t in self.eos), len(c))])
        return prompts, outs, None, None


def test_vllm_path_routes_teacher_prefixes_through_a_teacher_engine(make_trainer, arithmetic_dataset):
    trainer = make_trainer(guidance_prob_start=1.0, guidance_rho_start=0.5, max_completion_length=6)
    eos = set(trainer.eos_token_ids)
    unwrap = trainer.accelerator.unwrap_model
    student_engine, teacher_engine = FakeVLLM(unwrap(trainer.model), eos), FakeVLLM(unwrap(trainer.teacher_model), eos)
    trainer.use_vllm, trainer._last_loaded_step = True, -1
    trainer.vllm_generation, trainer.teacher_vllm_generation = student_engine, teacher_engine
    batch = trainer._generate_and_score_completions([arithmetic_dataset[i] for i in range(2)])
    assert teacher_engine.syncs == 0 and student_engine.syncs == 1  # the teacher's weights are never synced
    assert trainer.vllm_generation is student_engine and trainer.model_wrapped is trainer.model  # restored
    (teacher_prompts,), (student_prompts,) = teacher_engine.prompts, student_engine.prompts
    for i in range(2):
        n = int(batch["teacher_token_mask"][i].sum())
        prefix = batch["completion_ids"][i, :n].tolist()
        assert n > 0 and student_prompts[i] == teacher_prompts[i] + prefix


def test_training_logs_trust_and_guidance_metrics(make_trainer):
    trainer = make_trainer(max_steps=2, guidance_prob_start=1.0, guidance_prob_decay_share=1.0)
    trainer.train()
    logged = trainer.state.log_history[0]
    for key in (
        "tropd/loss_trust_region",
        "tropd/loss_outlier",
        "tropd/loss_prefix",
        "tropd/trusted_fraction",
        "tropd/mean_trust_ratio",
        "guidance/guided_fraction",
        "guidance/mean_prefix_length",
    ):
        assert math.isfinite(logged[key]), key
    assert logged["guidance/p_guide"] == 1.0 and logged["guidance/guided_fraction"] > 0
    assert trainer.state.log_history[1]["guidance/p_guide"] == pytest.approx(0.5)


def test_collapse_repair_samples_the_teachers_continuation_and_trains_it_teacher_forced(make_trainer, monkeypatch):
    """TrOPD's default repair on a fixed rollout in which, at a threshold taken from a dense teacher forward, two rows
    collapse part-way and two never do: the teacher is asked once, through the parent's generation layer, for every
    row (prompt + the student's tokens before the collapse; a row that never collapses, its prompt), each collapsed
    row becomes its kept tokens + that rollout within the budget, the others are unchanged. The teacher's tokens are
    `teacher_token_mask`, and there the per-token loss is `lambda_off` times the fused teacher-forced JSD, whatever the
    in-region loss (`k1` here)."""
    trainer = make_trainer(
        guidance_prob_start=0.0,
        teacher_collapse_logp=-1.0,
        collapse_repair=True,
        trust_region_loss="k1",
        lambda_off=0.5,
    )
    rollout = fixed_generation_batch(trainer.processing_class, batch=4, completion_len=6)
    ids, mask, prompt_ids, prompt_mask = (
        rollout[k] for k in ("completion_ids", "completion_mask", "prompt_ids", "prompt_mask")
    )
    dense_logp, threshold = dense_logps_and_split_threshold(trainer.teacher_model, rollout)
    trainer.args.teacher_collapse_logp = threshold
    monkeypatch.setattr(
        DistillationTrainer,
        "_generate_and_score_completions",
        lambda self, inputs: {k: v.clone() for k, v in rollout.items()},
    )
    calls = []
    parent = DistillationTrainer._generate_single_turn

    def spy(self, prompts, *args, **kwargs):
        completions = parent(self, prompts, *args, **kwargs)
        calls.append((self.model_wrapped is self.teacher_model, [list(p) for p in prompts], completions))
        return completions

    monkeypatch.setattr(DistillationTrainer, "_generate_single_turn", spy)
    batch = trainer._generate_and_score_completions([{}] * 4)
    ((by_teacher, prefixes, rollouts),) = calls
    assert by_teacher
    budget, repaired = trainer.args.max_completion_length, 0
    for b in range(4):
        n = int(mask[b].sum())
        cut = next((t for t in range(n) if dense_logp[b, t] < threshold), None)
        prompt = prompt_ids[b][prompt_mask[b].bool()].tolist()
        assert prefixes[b] == prompt + ids[b, : cut or 0].tolist()
        if cut is None:
            expected, written = ids[b, :n].tolist(), [0] * n
        else:
            repaired += 1
            continuation = list(rollouts[b][: budget - cut])
            expected, written = ids[b, :cut].tolist() + continuation, [0] * cut + [1] * len(continuation)
        m = int(batch["completion_mask"][b].sum())
        assert batch["completion_ids"][b, :m].tolist() == expected
        assert batch["teacher_token_mask"][b, :m].tolist() == written
    assert repaired == 2
    captured = {}

    def token_losses_spy(stats, inputs, original=trainer.token_losses):
        captured["stats"], captured["losses"] = stats, original(stats, inputs)
        return captured["losses"]

    trainer.token_losses = token_losses_spy
    trainer.compute_loss(trainer.model, batch).backward()
    teacher = batch["teacher_token_mask"].bool()
    torch.testing.assert_close(captured["losses"][teacher], 0.5 * captured["stats"]["divergence"][teacher])


def test_tropd_defaults_repair_collapses_and_allow_sharding(tmp_path):
    config = TrOPDConfig(**tiny_training_kwargs(tmp_path))
    assert (config.teacher_collapse_logp, config.collapse_repair) == (-6.9, True)
    assert (
        config.collapse_repair_supports_sharding
        and not OPDConfig(**tiny_training_kwargs(tmp_path)).collapse_repair_supports_sharding
    )
