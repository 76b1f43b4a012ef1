# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""EGRSDTrainer on tiny models: reductions to `trl.GRPOTrainer` and RLSD, token advantages against a dense reference
(full logits), the privileged teacher prompt, the frozen teacher, bad input, logging, recipes."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from scipy.stats import mannwhitneyu
from trl import GRPOTrainer

from trl_opd.data import DatasetValidationError, privileged_prompt
from trl_opd.rewards import math_accuracy_reward
from trl_opd.testing import build_tiny_model, tiny_training_kwargs
from trl_opd.trainers.baselines import GRPOBaselineConfig
from trl_opd.trainers.egrsd_config import EGRSDConfig
from trl_opd.trainers.egrsd_trainer import EGRSDTrainer


G = 4  # generations per prompt
GUARD_LOGP = -6.0  # about the tiny random teacher's typical token log-prob: some rows collapse, at varied places
RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("Qwen3-*/egrsd/*.yaml"))


def _kwargs(tmp_path, **overrides):
    base = {"num_generations": G, "per_device_train_batch_size": 2 * G, "max_completion_length": 16, "beta": 0.0}
    return tiny_training_kwargs(tmp_path, **{**base, **overrides})


@pytest.fixture(scope="module")
def rows(arithmetic_dataset):
    """Two prompts, each repeated G times (as GRPO's sampler hands them to `_generate_and_score_completions`)."""
    return [dict(arithmetic_dataset[i]) for i in range(2) for _ in range(G)]


@pytest.fixture(scope="module")
def fixed_completions(tiny_tokenizer, rows):
    """Two right and two wrong completions per prompt, of different lengths (so the completion mask pads)."""
    texts = []
    for i, row in enumerate(rows):
        wrong = str(int(row["answer"]) + 1)
        texts.append(
            [
                f"\\boxed{{{row['answer']}}}",
                f"so it is \\boxed{{{row['answer']}}}",
                f"\\boxed{{{wrong}}}",
                "I do not know the answer",
            ][i % G]
        )
    eos = tiny_tokenizer.eos_token_id
    return [tiny_tokenizer.encode(t, add_special_tokens=False) + [eos] for t in texts]


def _with_fixed_rollouts(trainer, completions):
    trainer._generate_single_turn = lambda prompt_ids, *args, **kwargs: ([list(c) for c in completions], None)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = trainer.args.gradient_accumulation_steps  # set by the train loop
    return trainer


def _egrsd(tmp_path, tokenizer, dataset, completions, seed=0, peft_config=None, **overrides):
    args = EGRSDConfig(**_kwargs(tmp_path, **overrides))
    model = build_tiny_model(tokenizer, "student", seed=seed)
    trainer = EGRSDTrainer(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config
    )
    return _with_fixed_rollouts(trainer, completions)


def _loss_and_grads(trainer, inputs):
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, inputs)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


# ----------------------------------------------------------------- reductions
def test_reduces_to_grpo_exactly(tmp_path, tiny_tokenizer, arithmetic_dataset, rows, fixed_completions):
    grpo = GRPOTrainer(
        model=build_tiny_model(tiny_tokenizer, "student", seed=0),
        reward_funcs=[math_accuracy_reward],
        args=GRPOBaselineConfig(**_kwargs(tmp_path / "grpo")),
        train_dataset=arithmetic_dataset,
        processing_class=tiny_tokenizer,
    )
    _with_fixed_rollouts(grpo, fixed_completions)
    egrsd = _egrsd(tmp_path / "egrsd", tiny_tokenizer, arithmetic_dataset, fixed_completions, g_min=1.0, epsilon_w=0.0)
    assert egrsd.teacher_model is None  # nothing to score at this setting

    ref = grpo._generate_and_score_completions(copy.deepcopy(rows))
    out = egrsd._generate_and_score_completions(copy.deepcopy(rows))
    assert torch.equal(ref["completion_ids"], out["completion_ids"]) and torch.equal(
        ref["prompt_ids"], out["prompt_ids"]
    )
    assert ref["advantages"].abs().sum() > 0 and out["advantages"].shape == out["completion_ids"].shape
    torch.testing.assert_close(out["advantages"], ref["advantages"][:, None] * out["completion_mask"], rtol=0, atol=0)

    ref_loss, ref_grads = _loss_and_grads(grpo, ref)
    loss, grads = _loss_and_grads(egrsd, out)
    assert ref_loss != 0
    torch.testing.assert_close(loss, ref_loss, rtol=0, atol=0)
    assert ref_grads.keys() == grads.keys() and any(g.abs().sum() > 0 for g in ref_grads.values())
    for name, grad in ref_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=0, atol=0, msg=name)


def _dense_reference(
    model,
    tokenizer,
    rows,
    out,
    g_min,
    epsilon_w,
    lookahead,
    base_advantages,
    normalization="mean",
    centering="none",
    collapse_logp=None,
    gate_tau="median",
    weight_norm="none",
    teacher_rollouts="all",
    magnitude_trust="none",
):
    """Token advantages from the full logits of the (initial) model, one unpadded row at a time; with
    `collapse_logp`, the guard, by a scan of each row: the plain advantage after the first collapsed token; with
    `magnitude_trust: rank`, `ε_w` times `max(0, 2·AUC − 1)` from scipy's Mann–Whitney U of the rows' mean `Δ`."""
    t_logp, t_ent, s_logp = [], [], []
    with torch.no_grad():
        for i, row in enumerate(rows):
            completion = out["completion_ids"][i]
            for prompt, into in ((privileged_prompt(row["prompt"], row["solution"]), "teacher"), (row["prompt"], "s")):
                ids = tokenizer.apply_chat_template(
                    prompt, add_generation_prompt=True, tokenize=True, return_dict=True
                )
                prompt_ids = torch.tensor(ids["input_ids"])
                logits = model(torch.cat([prompt_ids, completion])[None]).logits[0, len(prompt_ids) - 1 : -1]
                logp = torch.log_softmax(logits.double(), -1)
                picked = logp.gather(-1, completion[:, None]).squeeze(-1)
                if into == "teacher":
                    t_logp.append(picked)
                    t_ent.append(-(logp.exp() * logp).sum(-1))
                else:
                    s_logp.append(picked)
    t_logp, t_ent, s_logp = torch.stack(t_logp), torch.stack(t_ent), torch.stack(s_logp)
    mask = out["completion_mask"].bool()
    tau = t_ent[mask].median() if gate_tau == "median" else t_ent[mask].mean()
    ent = t_ent.clone()
    for b in range(ent.size(0)):  # causal lookahead minimum, brute force, within the rollout
        n = int(mask[b].sum())
        for t in range(n):
            ent[b, t] = t_ent[b, t : min(t + lookahead + 1, n)].min()
    gate = g_min + (1 - g_min) * torch.exp(-ent / tau)
    trusted = torch.ones_like(mask)
    if collapse_logp is not None:
        for b in range(mask.size(0)):
            collapsed = False
            for t in range(int(mask[b].sum())):
                trusted[b, t] = not collapsed
                collapsed = collapsed or bool(t_logp[b, t] < collapse_logp)
    if teacher_rollouts == "penalized":  # rewarded (and zero-advantage) rollouts keep the plain A_i
        trusted &= (base_advantages < 0)[:, None]
    if normalization == "mean":  # mean 1 over the (trusted) loss tokens
        gate = gate / gate[mask & trusted].mean()
    sign = torch.sign(base_advantages.double())[:, None]
    delta = t_logp - s_logp
    if magnitude_trust == "rank":
        means = torch.stack([delta[b][mask[b]].mean() for b in range(mask.size(0))])
        rewarded, penalised = means[base_advantages > 0].numpy(), means[base_advantages < 0].numpy()
        auc = mannwhitneyu(rewarded, penalised).statistic / (len(rewarded) * len(penalised))
        epsilon_w = epsilon_w * max(0.0, 2.0 * auc - 1.0)
    if centering == "mean":  # minus the mean of Δ over the loss tokens
        delta = delta - delta[mask].mean()
    magnitude = torch.exp(sign * delta).clamp(1 - epsilon_w, 1 + epsilon_w)
    weighted = magnitude * gate
    if weight_norm == "rollout":  # mean 1 over each row's trusted loss tokens
        for b in range(mask.size(0)):
            keep = mask[b] & trusted[b]
            weighted[b] = weighted[b] / weighted[b][keep].mean()
    weighted = torch.where(trusted, weighted, 1.0)
    return torch.where(mask, base_advantages.double()[:, None] * weighted, 0.0).float()


def _generate_with_group_advantages(trainer, rows):
    """The trainer's output on `rows`, and the parent's group advantages `A_i` before EGRSD reweights them."""
    base = {}
    original = GRPOTrainer._generate_and_score_completions

    def spy(self, inputs):
        result = original(self, inputs)
        base["advantages"] = result["advantages"].clone()
        return result

    GRPOTrainer._generate_and_score_completions = spy
    try:
        out = trainer._generate_and_score_completions(copy.deepcopy(rows))
    finally:
        GRPOTrainer._generate_and_score_completions = original
    return out, base


@pytest.mark.parametrize(
    (
        "g_min",
        "epsilon_w",
        "lookahead",
        "normalization",
        "centering",
        "collapse_logp",
        "gate_tau",
        "weight_norm",
        "rollouts",
    ),
    [
        (0.2, 0.2, 0, "mean", "none", None, "median", "none", "all"),
        (0.2, 0.2, 3, "mean", "none", None, "median", "none", "all"),
        (1.0, 0.2, 0, "mean", "none", None, "median", "none", "all"),
        (0.2, 0.2, 0, "none", "none", None, "median", "none", "all"),
        (0.2, 0.6, 0, "mean", "mean", None, "median", "none", "all"),
        (0.2, 0.6, 0, "mean", "none", GUARD_LOGP, "median", "none", "all"),
        (0.2, 0.6, 0, "mean", "mean", GUARD_LOGP, "median", "none", "all"),
        (0.2, 0.2, 0, "mean", "none", None, "mean", "none", "all"),
        (0.2, 0.2, 3, "none", "none", None, "mean", "none", "all"),
        (0.2, 0.6, 0, "mean", "none", None, "median", "rollout", "all"),
        # rollout weights with the guard, at a threshold where rows keep several trusted tokens
        (0.2, 0.6, 0, "mean", "none", GUARD_LOGP - 0.3, "median", "rollout", "all"),
        (0.2, 0.6, 0, "mean", "none", None, "median", "none", "penalized"),
        (0.2, 0.6, 0, "mean", "none", GUARD_LOGP, "median", "none", "penalized"),
        (0.2, 0.6, 0, "mean", "none", None, "median", "rollout", "penalized"),
    ],
    ids=[
        "egrsd",
        "cl-egrsd",
        "rlsd",
        "egrsd-raw-gate",
        "egrsd-centred-delta",
        "egrsd-guard",
        "egrsd-guard-eager",
        "egrsd-mean-tau",
        "cl-egrsd-mean-tau-raw-gate",
        "egrsd-rollout-weights",
        "egrsd-rollout-weights-guard",
        "egrsd-penalized-rollouts",
        "egrsd-penalized-rollouts-guard",
        "egrsd-penalized-rollouts-rollout-weights",
    ],
)
def test_token_advantages_match_dense_reference(
    tmp_path,
    tiny_tokenizer,
    arithmetic_dataset,
    rows,
    fixed_completions,
    g_min,
    epsilon_w,
    lookahead,
    normalization,
    centering,
    collapse_logp,
    gate_tau,
    weight_norm,
    rollouts,
):
    trainer = _egrsd(
        tmp_path,
        tiny_tokenizer,
        arithmetic_dataset,
        fixed_completions,
        g_min=g_min,
        epsilon_w=epsilon_w,
        entropy_lookahead=lookahead,
        gate_normalization=normalization,
        delta_centering=centering,
        teacher_collapse_logp=collapse_logp,
        gate_tau=gate_tau,
        weight_normalization=weight_norm,
        teacher_rollouts=rollouts,
    )
    out, base = _generate_with_group_advantages(trainer, rows)
    initial = build_tiny_model(tiny_tokenizer, "student", seed=0).eval()
    expected = _dense_reference(
        initial,
        tiny_tokenizer,
        rows,
        out,
        g_min,
        epsilon_w,
        lookahead,
        base["advantages"],
        normalization,
        centering,
        collapse_logp,
        gate_tau,
        weight_norm,
        rollouts,
    )
    advantages = trainer.token_advantages(out)  # the magnitude, when the loss applies it, from a no-grad forward
    torch.testing.assert_close(advantages, expected, rtol=1e-4, atol=1e-5)
    if collapse_logp is not None:  # the guard cut some rows, not all, and left their first tokens trusted
        after = trainer._metrics["train"]["guard/after_collapse"][-1]
        assert 0.0 < after < 0.9, after
    if rollouts == "penalized":  # rewarded rollouts keep GRPO's A_i on every token; penalised ones do not
        rewarded = base["advantages"] >= 0
        plain = base["advantages"][:, None] * out["completion_mask"]
        assert rewarded.any() and not rewarded.all()
        torch.testing.assert_close(advantages[rewarded], plain[rewarded].float())
        assert not torch.allclose(advantages[~rewarded], plain[~rewarded].float())
        share = trainer._metrics["train"]["egrsd/teacher_weighted"][-1]
        assert 0.0 < share < 1.0, share
    if weight_norm == "rollout" and collapse_logp is None:  # each rollout's summed advantage is GRPO's
        n = out["completion_mask"].sum(-1).float()
        torch.testing.assert_close(advantages.sum(-1), base["advantages"].float() * n, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(advantages, base["advantages"][:, None] * out["completion_mask"])


@pytest.mark.parametrize("g_min", [0.2, 1.0], ids=["egrsd", "rlsd"])
def test_magnitude_trust_matches_dense_reference(
    tmp_path, tiny_tokenizer, arithmetic_dataset, rows, fixed_completions, g_min
):
    """`magnitude_trust: rank` is the dense reference at `ε_w · max(0, D)`, `D` from scipy; the logged trust is that
    factor, and the magnitude is computed at generation (nothing left for the loss)."""
    trust = {"g_min": g_min, "epsilon_w": 0.6, "magnitude_trust": "rank"}
    trainer = _egrsd(tmp_path, tiny_tokenizer, arithmetic_dataset, fixed_completions, **trust)
    out, base = _generate_with_group_advantages(trainer, rows)
    assert "egrsd_teacher_logps" not in out
    initial = build_tiny_model(tiny_tokenizer, "student", seed=0).eval()
    expected = _dense_reference(
        initial, tiny_tokenizer, rows, out, g_min, 0.6, 0, base["advantages"], magnitude_trust="rank"
    )
    torch.testing.assert_close(out["advantages"], expected, rtol=1e-4, atol=1e-5)
    untrusted = _dense_reference(initial, tiny_tokenizer, rows, out, g_min, 0.6, 0, base["advantages"])
    trust = trainer._metrics["train"]["egrsd/magnitude_trust"][-1]
    assert 0.0 < trust < 1.0 and not torch.allclose(expected, untrusted), trust


@pytest.mark.parametrize("direction", [1.0, -1.0], ids=["agrees", "reversed"])
def test_magnitude_trust_follows_the_self_teacher_ranking(
    tmp_path, tiny_tokenizer, arithmetic_dataset, rows, fixed_completions, direction
):
    """A stand-in self-teacher whose `Δ` is `+1` on every rewarded rollout and `−1` on every penalised one (`D = 1`)
    keeps RLSD's full magnitude; the reverse (`D = −1`) gives GRPO's advantages exactly."""
    rlsd = {"g_min": 1.0, "epsilon_w": 0.5}
    trainer = _egrsd(
        tmp_path / "trust", tiny_tokenizer, arithmetic_dataset, fixed_completions, **rlsd, magnitude_trust="rank"
    )
    correct = torch.tensor([i % G < 2 for i in range(len(rows))])  # two right completions per prompt
    trainer.student_token_logps = lambda output: torch.zeros_like(output["completion_mask"], dtype=torch.float32)
    signal = direction * (2.0 * correct.float() - 1.0)  # (B,)

    def stand_in_teacher(inputs, output):
        mask = output["completion_mask"].float()
        return signal[:, None] * mask, torch.zeros_like(mask)

    trainer.teacher_token_stats = stand_in_teacher
    out, base = _generate_with_group_advantages(trainer, rows)
    assert ((base["advantages"] > 0) == correct).all()
    plain = base["advantages"][:, None] * out["completion_mask"]
    if direction > 0:  # the magnitude at its bound, 1 + ε_w on every token (|Δ| = 1 > log 1.5)
        assert trainer._metrics["train"]["egrsd/magnitude_trust"][-1] == 1.0
        torch.testing.assert_close(out["advantages"], (1.5 * plain).float())
    else:
        assert trainer._metrics["train"]["egrsd/magnitude_trust"][-1] == 0.0
        torch.testing.assert_close(out["advantages"], plain.float(), rtol=0, atol=0)


def test_magnitude_trust_pools_every_process(tmp_path, tiny_tokenizer, arithmetic_dataset, rows, fixed_completions):
    """`D` is taken over every process's rollouts: with this process's `Δ` ranking as the reward does (`D = 1` alone)
    and a stand-in second process holding the reverse ranking (its gathers: `−scores`, the same advantages), the
    pooled `D` is 0 and the advantages are GRPO's."""
    trainer = _egrsd(
        tmp_path,
        tiny_tokenizer,
        arithmetic_dataset,
        fixed_completions,
        g_min=1.0,
        epsilon_w=0.5,
        magnitude_trust="rank",
    )
    correct = torch.tensor([i % G < 2 for i in range(len(rows))])
    trainer.student_token_logps = lambda output: torch.zeros_like(output["completion_mask"], dtype=torch.float32)
    trainer.teacher_token_stats = lambda inputs, output: (
        (2.0 * correct.float() - 1.0)[:, None] * output["completion_mask"].float(),
        torch.zeros_like(output["completion_mask"], dtype=torch.float32),
    )
    trusted_epsilon_w, gathers = trainer._trusted_epsilon_w, []

    def with_a_second_process(delta, advantages, mask):  # its two gathers: the rollout scores, then the advantages
        second = iter([lambda x: -x, lambda x: x])
        trainer.accelerator.gather = lambda x: gathers.append(x.numel()) or torch.cat([x, next(second)(x)])
        try:
            return trusted_epsilon_w(delta, advantages, mask)
        finally:
            del trainer.accelerator.gather  # the instance attribute: the class's gather again

    trainer._trusted_epsilon_w = with_a_second_process
    out, base = _generate_with_group_advantages(trainer, rows)
    assert gathers == [len(rows), len(rows)]
    assert trainer._metrics["train"]["egrsd/magnitude_trust"][-1] == 0.0
    plain = base["advantages"][:, None] * out["completion_mask"]
    torch.testing.assert_close(out["advantages"], plain.float(), rtol=0, atol=0)


def test_magnitude_from_the_loss_forward_equals_the_extra_forward(
    tmp_path, tiny_tokenizer, arithmetic_dataset, rows, fixed_completions
):
    """Aligned steps (no old log-probs): the loss's own forward gives `Δ`; advantages, loss, gradients and the logged
    magnitude equal those of the separate no-grad student forward, and that forward is not run."""
    eager = _egrsd(tmp_path / "eager", tiny_tokenizer, arithmetic_dataset, fixed_completions)
    eager._defers_magnitude = lambda output: False
    deferred = _egrsd(tmp_path / "deferred", tiny_tokenizer, arithmetic_dataset, fixed_completions)
    ref = eager._generate_and_score_completions(copy.deepcopy(rows))
    skipped = deferred.student_token_logps
    deferred.student_token_logps = lambda output: pytest.fail("the no-grad student forward ran")
    out = deferred._generate_and_score_completions(copy.deepcopy(rows))
    assert "egrsd_teacher_logps" in out and "egrsd_teacher_logps" not in ref
    ref_loss, ref_grads = _loss_and_grads(eager, ref)
    for _ in range(2):  # twice: a buffered batch is reused with num_iterations > 1
        loss, grads = _loss_and_grads(deferred, out)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-7)
        for name, grad in ref_grads.items():
            torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-7, msg=name)
    deferred.student_token_logps = skipped
    torch.testing.assert_close(deferred.token_advantages(out), ref["advantages"], rtol=1e-5, atol=1e-7)
    for name in ("egrsd/magnitude_mean", "egrsd/delta_mean", "egrsd/gate_mean", "egrsd/delta_gap"):
        logged, want = deferred._metrics["train"][name], eager._metrics["train"][name]
        assert logged and logged[-1] == pytest.approx(want[-1], rel=1e-5), name


# ----------------------------------------------------------------- teacher
def test_teacher_prompt_has_the_solution_and_the_student_prompt_does_not(
    tmp_path, tiny_tokenizer, arithmetic_dataset, rows, fixed_completions
):
    trainer = _egrsd(tmp_path, tiny_tokenizer, arithmetic_dataset, fixed_completions)
    out = trainer._generate_and_score_completions(copy.deepcopy(rows))
    teacher_ids, teacher_mask = trainer.tokenize_teacher_prompts(rows)
    for i, row in enumerate(rows):
        teacher_text = tiny_tokenizer.decode(teacher_ids[i][teacher_mask[i].bool()])
        student_text = tiny_tokenizer.decode(out["prompt_ids"][i][out["prompt_mask"][i].bool()])
        assert row["solution"] in teacher_text and row["problem"] in teacher_text
        assert row["solution"] not in student_text and row["problem"] in student_text


def test_frozen_teacher_does_not_move(tmp_path, tiny_tokenizer, arithmetic_dataset, fixed_completions):
    trainer = _egrsd(
        tmp_path,
        tiny_tokenizer,
        arithmetic_dataset,
        fixed_completions,
        max_steps=2,
        learning_rate=1e-2,
        self_teacher_check="warn",  # a random tiny teacher fails the check: keep its token weights
    )
    teacher_before = {n: p.clone() for n, p in trainer.teacher_model.named_parameters()}
    student_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    assert all(not p.requires_grad for p in trainer.teacher_model.parameters())
    trainer.train()
    assert any(not torch.equal(p, student_before[n]) for n, p in trainer.model.named_parameters())
    for name, param in trainer.teacher_model.named_parameters():
        assert torch.equal(param, teacher_before[name]), name
    logged = {k for entry in trainer.state.log_history for k in entry}
    for name in (
        "egrsd/gate_mean",
        "egrsd/gate_below_half",
        "egrsd/magnitude_mean",
        "reward",
        "completions/mean_length",
    ):
        assert name in logged


def test_peft_teacher_is_the_adapter_off_student(
    tmp_path, tiny_tokenizer, arithmetic_dataset, rows, fixed_completions
):
    from peft import LoraConfig

    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = _egrsd(
        tmp_path,
        tiny_tokenizer,
        arithmetic_dataset,
        fixed_completions,
        peft_config=lora,
        max_steps=2,
        learning_rate=5e-2,
    )
    assert trainer.teacher_model is None  # no copy: the adapter is switched off to score
    out = trainer._generate_and_score_completions(copy.deepcopy(rows))
    teacher_before = trainer.teacher_token_stats(rows, out)
    student_before = trainer.student_token_logps(out)
    trainer.train()
    teacher_after = trainer.teacher_token_stats(rows, out)
    assert not torch.allclose(trainer.student_token_logps(out), student_before)
    for before, after in zip(teacher_before, teacher_after, strict=True):
        torch.testing.assert_close(after, before)


# ----------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"g_min": 1.5}, "g_min"),
        ({"g_min": -0.1}, "g_min"),
        ({"entropy_lookahead": -1}, "entropy_lookahead"),
        ({"epsilon_w": 1.5}, "epsilon_w"),
        ({"delta_centering": "median"}, "delta_centering"),
        ({"gate_tau": "max"}, "gate_tau"),
        ({"weight_normalization": "batch"}, "weight_normalization"),
        ({"self_teacher": "ema"}, "self_teacher"),
        ({"teacher_collapse_logp": 0.5}, "teacher_collapse_logp"),
        ({"teacher_rollouts": "rewarded"}, "teacher_rollouts"),
        ({"magnitude_trust": "auc"}, "magnitude_trust"),
        ({"teacher_collapse_logp": float("nan")}, "teacher_collapse_logp"),
    ],
)
def test_bad_config_is_one_clear_error(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        EGRSDConfig(**_kwargs(tmp_path, **overrides))


def test_dataset_without_solution_fails_before_any_model_loads(tmp_path, arithmetic_dataset):
    no_solution = arithmetic_dataset.remove_columns("solution")
    with pytest.raises(DatasetValidationError, match="solution"):
        EGRSDTrainer(
            model=str(tmp_path / "no-such-model"), args=EGRSDConfig(**_kwargs(tmp_path)), train_dataset=no_solution
        )


# ----------------------------------------------------------------- recipes
@pytest.mark.parametrize("path", RECIPES, ids=[f"{p.parent.parent.name}/{p.name}" for p in RECIPES])
def test_recipes_parse(path):
    from trl_opd.launch.recipe import parse_recipe

    script_args, config, model_args = parse_recipe(str(path))
    assert isinstance(config, EGRSDConfig)
    assert script_args.method == ("cl-egrsd" if "cl_egrsd" in path.name else "egrsd")  # so the card says CL-EGRSD
    assert config.entropy_lookahead == (32 if "cl_egrsd" in path.name else 0)
    assert config.use_vllm and config.vllm_mode == "colocate"
    assert model_args.use_peft == ("lora" in path.name)


def test_recipes_cover_both_models_and_variants():
    names = {(p.parent.parent.name, p.name) for p in RECIPES}
    for model in ("Qwen3-4B", "Qwen3-8B"):
        for variant in ("config_egrsd.yaml", "config_cl_egrsd.yaml", "config_egrsd_lora.yaml"):
            assert (model, variant) in names


def test_cli_build_loads_the_frozen_teacher_from_the_student_path(tmp_path, tiny_pair_dir, arithmetic_jsonl):
    from trl import ModelConfig

    from trl_opd.launch.build import build_trainer
    from trl_opd.launch.recipe import ScriptArguments

    script_args = ScriptArguments(method="cl-egrsd", dataset_name=str(arithmetic_jsonl), prompt_column="problem")
    config = EGRSDConfig(**_kwargs(tmp_path, entropy_lookahead=32))
    trainer = build_trainer(script_args, config, ModelConfig(model_name_or_path=str(tiny_pair_dir / "student")))
    assert isinstance(trainer, EGRSDTrainer) and trainer.teacher_model is not trainer.model
    student = dict(trainer.model.named_parameters())
    for name, param in trainer.teacher_model.named_parameters():
        assert torch.equal(param, student[name].detach()) and not param.requires_grad, name

    no_solution = tmp_path / "no_solution.jsonl"
    no_solution.write_text(arithmetic_jsonl.read_text().replace('"solution"', '"worked"'))
    script_args = ScriptArguments(method="egrsd", dataset_name=str(no_solution), prompt_column="problem")
    with pytest.raises(DatasetValidationError, match="solution"):
        build_trainer(script_args, config, ModelConfig(model_name_or_path=str(tmp_path / "never-loaded")))
