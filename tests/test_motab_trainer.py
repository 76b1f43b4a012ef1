# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""MOTABTrainer: bad input, reduction to trl.DistillationTrainer, routed loss vs a dense reference, the vLLM path
with a recording stand-in, discarded-segment rows, resume of the boundary state, and the accuracy of rollouts that
backtracked vs those that did not."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from trl import DistillationConfig, DistillationTrainer

from trl_opd.teacher import TeacherMismatchError
from trl_opd.testing import tiny_training_kwargs
from trl_opd.trainers.motab_config import MOTABConfig, check_step_delimiter
from trl_opd.trainers.motab_trainer import MOTABTrainer


def _trainer(pair, dataset, out, **overrides):
    args = MOTABConfig(**tiny_training_kwargs(out, **overrides))
    return MOTABTrainer(
        model=str(pair / "student"), teacher_model=str(pair / "teacher"), args=args, train_dataset=dataset
    )


def _rollout(trainer, dataset, n=4):
    trainer.model.train()
    torch.manual_seed(0)
    return trainer._generate_and_score_completions([dataset[i] for i in range(n)])


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"max_segment_tokens": 0}, "max_segment_tokens"),
        ({"boundary_quantile": 0.0}, "boundary_quantile"),
        ({"boundary_quantile": 1.0}, "boundary_quantile"),
        ({"monitor_signal": "x"}, "monitor_signal"),
        ({"stray_reduction": "median"}, "stray_reduction"),
    ],
)
def test_bad_config_is_one_clear_error(tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        MOTABConfig(**tiny_training_kwargs(tmp_path, **bad))


def test_delimiter_the_tokenizer_cannot_encode(tmp_path, tiny_pair_dir, arithmetic_dataset):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    word = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1, "<|im_end|>": 2, "<|endoftext|>": 3}, unk_token="[UNK]"))
    word.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=word, unk_token="[UNK]", eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    with pytest.raises(ValueError, match="step_delimiter"):
        check_step_delimiter(tok, "\n\n")
    args = MOTABConfig(**tiny_training_kwargs(tmp_path))
    with pytest.raises(ValueError, match="cannot be encoded"):
        MOTABTrainer(
            model=str(tiny_pair_dir / "student"),
            teacher_model=str(tiny_pair_dir / "teacher"),
            args=args,
            train_dataset=arithmetic_dataset,
            processing_class=tok,
        )
    assert check_step_delimiter(PreTrainedTokenizerFast.from_pretrained(tiny_pair_dir / "student"), "\n\n")


def test_teacher_with_another_tokenizer_is_rejected(tmp_path, tiny_pair_dir, arithmetic_dataset):
    from trl_opd.testing import build_tiny_model, build_tiny_tokenizer

    other = build_tiny_tokenizer(vocab_size=300)
    build_tiny_model(other, "teacher").save_pretrained(tmp_path / "t")
    other.save_pretrained(tmp_path / "t")
    args = MOTABConfig(**tiny_training_kwargs(tmp_path / "o"))
    with pytest.raises(TeacherMismatchError):
        MOTABTrainer(
            model=str(tiny_pair_dir / "student"),
            teacher_model=str(tmp_path / "t"),
            args=args,
            train_dataset=arithmetic_dataset,
        )


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def test_boundary_at_inf_equals_trl_distillation_trainer(tmp_path, tiny_pair_dir, arithmetic_dataset):
    motab = _trainer(tiny_pair_dir, arithmetic_dataset, tmp_path / "m", fixed_boundary=math.inf, beta=0.5)
    inputs = _rollout(motab, arithmetic_dataset)
    assert inputs["teacher_token_mask"].sum() == 0 and inputs["completion_ids"].size(1) > 0
    ref_args = DistillationConfig(
        **tiny_training_kwargs(tmp_path / "r", beta=0.5, bf16=False, gradient_checkpointing=False)
    )
    ref = DistillationTrainer(
        model=str(tiny_pair_dir / "student"),
        teacher_model=str(tiny_pair_dir / "teacher"),
        args=ref_args,
        train_dataset=arithmetic_dataset,
        processing_class=motab.processing_class,
    )
    ref.model.train()
    ref_inputs = {k: v for k, v in inputs.items() if k != "teacher_token_mask"}
    loss, ref_loss = motab.compute_loss(motab.model, inputs), ref.compute_loss(ref.model, ref_inputs)
    loss.backward()
    ref_loss.backward()
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-7)
    grads, ref_grads = _grads(motab.model), _grads(ref.model)
    assert grads.keys() == ref_grads.keys() and grads
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-4, atol=1e-7)


def test_routed_loss_and_grads_match_dense_reference(tmp_path, tiny_pair_dir, arithmetic_dataset):
    motab = _trainer(
        tiny_pair_dir,
        arithmetic_dataset,
        tmp_path,
        fixed_boundary=0.0,
        max_segment_tokens=4,
        beta=0.5,
        lambda_int=0.7,
        temperature=0.9,
        train_on_strayed=True,  # the strayed rows' routing too
    )
    inputs = _rollout(motab, arithmetic_dataset)
    mask, teacher_mask = inputs["completion_mask"], inputs["teacher_token_mask"]
    assert 0 < (teacher_mask * mask).sum() < mask.sum()
    loss = motab.compute_loss(motab.model, inputs)
    loss.backward()
    grads = _grads(motab.model)
    motab.model.zero_grad()
    # dense reference: full logits of both models, torch KL
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    attn = torch.cat([inputs["prompt_mask"], mask], 1)
    k = inputs["completion_ids"].size(1)
    log_s = (motab.model(input_ids=ids, attention_mask=attn).logits[:, -k - 1 : -1] / 0.9).log_softmax(-1)
    with torch.no_grad():
        log_t = (motab.teacher_model(input_ids=ids, attention_mask=attn).logits[:, -k - 1 : -1] / 0.9).log_softmax(-1)
    log_m = torch.logsumexp(torch.stack([log_s + math.log(0.5), log_t + math.log(0.5)]), 0)
    kl = lambda p, q: F.kl_div(q, p, log_target=True, reduction="none").sum(-1)  # KL(p || q), log inputs  # noqa: E731
    jsd = 0.5 * kl(log_t, log_m) + 0.5 * kl(log_s, log_m)
    forward_kl = kl(log_t, log_s)
    per_token = torch.where(teacher_mask.bool(), 0.7 * forward_kl, jsd)
    loss_mask = inputs.get("loss_token_mask", mask)  # strayed rows: their safe prefix has no loss
    assert loss_mask.sum() < mask.sum()
    ref_loss = (per_token * loss_mask).sum() / loss_mask.sum()
    ref_loss.backward()
    torch.testing.assert_close(loss, ref_loss, rtol=1e-4, atol=1e-6)
    for name, grad in _grads(motab.model).items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-3, atol=1e-6)


def test_provenance_mask_and_strayed_rows(tmp_path, tiny_pair_dir, arithmetic_dataset):
    motab = _trainer(
        tiny_pair_dir, arithmetic_dataset, tmp_path, fixed_boundary=0.0, max_segment_tokens=4, train_on_strayed=True
    )
    captured = {}
    run = motab._generate_single_turn

    def spy(*args, **kwargs):
        out = run(*args, **kwargs)
        captured["traces"] = [t for t in motab._traces]
        return out

    motab._generate_single_turn = spy
    inputs = _rollout(motab, arithmetic_dataset)
    traces = captured["traces"]
    extra = [(i, cut, d) for i, t in enumerate(traces) for cut, d in t.discarded]
    assert extra and inputs["completion_ids"].size(0) == len(traces) + len(extra)
    for row, trace in enumerate(traces):
        n = len(trace.tokens)
        assert inputs["completion_ids"][row, :n].tolist() == trace.tokens
        assert inputs["teacher_token_mask"][row, :n].tolist() == trace.teacher_mask
        assert inputs["teacher_token_mask"][row, n:].sum() == 0
    for j, (i, cut, discarded) in enumerate(extra):
        row = len(traces) + j
        n = cut + len(discarded)
        assert inputs["completion_ids"][row, :n].tolist() == traces[i].tokens[:cut] + discarded
        assert inputs["loss_token_mask"][row].tolist()[:n] == [0] * cut + [1] * len(discarded)
        assert torch.equal(inputs["prompt_ids"][row], inputs["prompt_ids"][i])
    assert inputs["num_items_in_batch"] == inputs["loss_token_mask"].sum()
    assert torch.isfinite(motab.compute_loss(motab.model, inputs))


def test_stray_reduction_reaches_the_rollout(tmp_path, tiny_pair_dir, arithmetic_dataset):
    """Same seed, no backtracks: the same segments, scored by their mean and by their worst token (`max >= mean`)."""
    scores = {}
    for reduction in ("mean", "max"):
        motab = _trainer(
            tiny_pair_dir,
            arithmetic_dataset,
            tmp_path / reduction,
            fixed_boundary=math.inf,
            max_segment_tokens=4,
            monitor_signal="teacher_nll",
            stray_reduction=reduction,
        )
        _rollout(motab, arithmetic_dataset)
        scores[reduction] = list(motab.boundary.scores)
    mean, worst = torch.tensor(scores["mean"]), torch.tensor(scores["max"])
    assert mean.shape == worst.shape and len(mean) > 4
    assert (worst >= mean - 1e-6).all() and (worst > mean + 1e-3).any()


class RecordingVLLM:
    """Stand-in for TRL's VLLMGeneration: records each call's prompts and sampling settings, returns scripted
    segments (row 0 ends with EOS in its second call)."""

    def __init__(self, eos):
        self.max_completion_length, self.logprobs, self.generation_kwargs = 99, None, {"seed": 1}
        self.calls, self.synced, self.eos = [], 0, eos

    def sync_weights(self):
        self.synced += 1

    def generate(self, prompts, images, num_generations, profiler=None):
        self.calls.append(
            {
                "prompts": [list(p) for p in prompts],
                "max_tokens": self.max_completion_length,
                "logprobs": self.logprobs,
                "kwargs": dict(self.generation_kwargs),
            }
        )
        second = len(self.calls) == 2
        completions = [[5, self.eos] if (second and i == 0) else [5, 6, 7, 8, 9] for i in range(len(prompts))]
        return prompts, completions, [[[-0.5]] * len(c) for c in completions], None


def test_vllm_path_with_recording_stand_in(tmp_path, tiny_pair_dir, arithmetic_dataset):
    motab = _trainer(
        tiny_pair_dir,
        arithmetic_dataset,
        tmp_path,
        fixed_boundary=-math.inf,
        max_segment_tokens=3,
        max_backtracks=1,
        max_completion_length=9,
    )
    fake = RecordingVLLM(motab._tokenizer.eos_token_id)
    motab.use_vllm, motab.vllm_generation, motab._last_loaded_step = True, fake, -1
    rows = [arithmetic_dataset[i] for i in range(2)]
    prompt_ids = motab._tokenize_prompts([r["prompt"] for r in rows])[0]
    motab.model.train()
    motab._batch_rows = rows
    completions = motab._generate_single_turn(prompt_ids, None, {})
    traces = motab._traces
    assert fake.synced == 1
    first = fake.calls[0]
    assert first["prompts"] == [list(p) for p in prompt_ids] and first["max_tokens"] == 3 and first["logprobs"] == 0
    assert first["kwargs"] == {"seed": 1, "stop": ["\n\n"], "include_stop_str_in_output": True}
    # round 1 strays (τ = -inf): the teacher writes; round 2 the student continues after the teacher's segment
    for r in range(2):
        assert traces[r].discarded == [(0, [5, 6, 7])]
        teacher_seg = traces[r].segments[0][1]
        assert traces[r].segments[0][0] == "teacher"
        assert fake.calls[1]["prompts"][r] == list(prompt_ids[r]) + teacher_seg
    assert traces[0].tokens[-2:] == [5, fake.eos] and traces[0].done
    # the finished row sends a dummy request afterwards, so every process makes the same calls
    assert fake.calls[2]["prompts"][0] == [motab._tokenizer.pad_token_id]
    assert completions == [t.tokens for t in traces] and all(len(c) <= 9 for c in completions)
    assert (fake.max_completion_length, fake.logprobs, fake.generation_kwargs) == (99, None, {"seed": 1})


def test_resume_restores_boundary_and_losses(tmp_path, tiny_pair_dir, arithmetic_dataset):
    common = {
        "max_steps": 4,
        "save_strategy": "steps",
        "save_steps": 2,
        "data_seed": 0,
        "boundary_warmup_steps": 1,
        "boundary_window": 12,
        "boundary_quantile": 0.5,
        "max_segment_tokens": 4,
        "max_completion_length": 8,
    }
    full = _trainer(tiny_pair_dir, arithmetic_dataset, tmp_path / "a", **common)
    full.train()
    resumed = _trainer(tiny_pair_dir, arithmetic_dataset, tmp_path / "b", **common)
    saved = torch.load(tmp_path / "a" / "checkpoint-2" / "trl_opd_state.pt", weights_only=True)["state"][
        "motab_boundary"
    ]
    assert saved["num_updates"] == 2 and len(saved["scores"]) > 0
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2"))

    def steps(trainer):
        return {h["step"]: h for h in trainer.state.log_history if "loss" in h and h["step"] > 2}

    a, b = steps(full), steps(resumed)
    assert sorted(a) == sorted(b) == [3, 4]
    assert full.boundary.num_backtracks > saved["num_backtracks"]  # the boundary was active in steps 3-4
    for step in (3, 4):
        for key in ("loss", "motab/boundary", "motab/backtracks_per_rollout", "motab/stray_score"):
            assert b[step][key] == pytest.approx(a[step][key], rel=1e-5, abs=1e-7), (step, key)
    state_a, state_b = full.boundary.state_dict(), resumed.boundary.state_dict()
    assert state_a["scores"] == pytest.approx(state_b["scores"], rel=1e-5)
    assert {k: v for k, v in state_a.items() if k != "scores"} == {k: v for k, v in state_b.items() if k != "scores"}


def _boxing_rollouts(monkeypatch, trainer):
    """Record every training rollout batch `(traces, answers)`; each batch's first rollout gets its row's correct
    `\\boxed{answer}` appended and the second a wrong one (student-written), so the reward is not 0 everywhere."""
    from trl_opd.trainers import motab_trainer

    batches = []

    class Boxing(motab_trainer.SegmentRollout):
        def run(self, *args, **kwargs):
            traces = super().run(*args, **kwargs)
            answers = [row.get("answer") for row in trainer._batch_rows]
            for trace, text in zip(traces, [f" \\boxed{{{answers[0]}}}", " \\boxed{x}"]):
                extra = trainer._tokenizer.encode(text, add_special_tokens=False)
                trace.tokens += extra
                trace.teacher_mask += [0] * len(extra)
            batches.append((traces, answers))
            return traces

    monkeypatch.setattr(motab_trainer, "SegmentRollout", Boxing)
    return batches


def test_accuracy_of_rollouts_that_backtracked_or_not(monkeypatch, tmp_path, tiny_pair_dir, arithmetic_dataset):
    from trl_opd.rewards import score_completion

    # τ = 0.15 sits inside the tiny pair's stray scores: some rollouts backtrack, some do not
    motab = _trainer(tiny_pair_dir, arithmetic_dataset, tmp_path, fixed_boundary=0.15, max_segment_tokens=4)
    batches = _boxing_rollouts(monkeypatch, motab)
    motab.train()
    logs = {h["step"]: h for h in motab.state.log_history if "loss" in h}
    assert sorted(logs) == [1, 2] and len(batches) == 2  # logging_steps 1, one rollout batch per step
    groups_seen = set()
    for step, (traces, answers) in zip((1, 2), batches):
        texts = [motab._tokenizer.decode(t.tokens, skip_special_tokens=True) for t in traces]
        rewards = [score_completion(text, answer) for text, answer in zip(texts, answers)]
        assert rewards[:2] == [1.0, 0.0]
        for key, backtracked in (("motab/accuracy_backtracked", True), ("motab/accuracy_not_backtracked", False)):
            group = [r for r, t in zip(rewards, traces) if (t.backtracks > 0) == backtracked]
            if group:
                groups_seen.add(key)
                assert logs[step][key] == pytest.approx(sum(group) / len(group))
            else:
                assert key not in logs[step]
        fraction = sum(t.backtracks > 0 for t in traces) / len(traces)
        assert logs[step]["motab/backtracked_fraction"] == pytest.approx(fraction)
    assert groups_seen == {"motab/accuracy_backtracked", "motab/accuracy_not_backtracked"}


def test_no_answer_column_no_accuracy_metrics(tmp_path, tiny_pair_dir, arithmetic_dataset):
    dataset = arithmetic_dataset.remove_columns("answer")
    motab = _trainer(tiny_pair_dir, dataset, tmp_path, fixed_boundary=0.15, max_segment_tokens=4, max_steps=1)
    motab.train()
    (log,) = [h for h in motab.state.log_history if "loss" in h]
    assert "motab/backtracks_per_rollout" in log and "motab/backtracked_fraction" in log
    assert not [key for key in log if key.startswith("motab/accuracy")]
