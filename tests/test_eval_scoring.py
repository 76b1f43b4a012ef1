# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""Eval scoring on literal completions, the lighteval metric wrapper, and the task/data helpers (no model)."""

import json

import pytest

from trl_opd.eval.data import (
    BENCHMARKS,
    EvalDataError,
    find_local_file,
    read_local_rows,
    resolve_benchmarks,
    stage_local_dataset,
)
from trl_opd.eval.scoring import completion_length, score_samples


TWO_ROOTS = r"\frac{-1+\sqrt{17}}{2}, \frac{-1-\sqrt{17}}{2}"


@pytest.mark.parametrize(
    ("completion", "reference", "expected"),
    [
        ("<think>12*17=204</think>The answer is $\\boxed{204}$.", "204", 1.0),  # right
        ("<think>hmm</think>The answer is $\\boxed{203}$.", "204", 0.0),  # wrong
        ("<think>done</think>The answer is 204.", "204", 0.0),  # missing box
        ("First $\\boxed{12}$, corrected: $\\boxed{204}$", "204", 1.0),  # several boxes: the last counts
        ("First $\\boxed{204}$, corrected: $\\boxed{12}$", "204", 0.0),
        ("\\boxed{025}", "25", 1.0),  # AIME integers with leading zeros
        ("\\boxed{25}", "025", 1.0),
        ("\\boxed{\\dfrac{1}{576}}", r"\frac{1}{576}", 1.0),  # HMMT LaTeX
        ("\\boxed{\\frac{1}{575}}", r"\frac{1}{576}", 0.0),
        ("\\boxed{26! \\cdot 2^{25}}", r"2^{25} \cdot 26!", 1.0),
        ("\\boxed{2^{24} \\cdot 26!}", r"2^{25} \cdot 26!", 0.0),
        (f"\\boxed{{{TWO_ROOTS}}}", TWO_ROOTS, 1.0),  # a two-value answer
        ("\\boxed{\\frac{-1-\\sqrt{17}}{2}, \\frac{-1+\\sqrt{17}}{2}}", TWO_ROOTS, 1.0),  # in the other order
        ("\\boxed{\\frac{-1+\\sqrt{17}}{2}}", TWO_ROOTS, 0.0),  # only one of the two
        ("<think>so it is \\boxed{204} but wait, let me", "204", 0.0),  # cut off inside <think>
    ],
)
def test_score_samples_on_literal_completions(completion, reference, expected):
    assert score_samples([completion], reference)["avg@k"] == expected


def test_average_and_pass_at_k_over_k_samples():
    completions = ["\\boxed{204}", "\\boxed{1}", "no answer", "<think>\\boxed{204}"]
    scores = score_samples(completions, "204", lengths=[10, 20, 30, 40])
    assert scores == {"avg@k": 0.25, "pass@k": 1.0, "mean_length": 25.0, "num_samples": 4.0}
    assert score_samples(["\\boxed{1}", "\\boxed{2}"], "204")["pass@k"] == 0.0
    with pytest.raises(ValueError):
        score_samples([], "204")


def test_completion_length_stops_at_eos_and_drops_padding():
    assert completion_length([5, 6, 2, 0, 0], eos_token_ids=[2], pad_token_id=0) == 3
    assert completion_length([5, 6, 7, 0, 0], eos_token_ids=[2], pad_token_id=0) == 3  # cut off, padded
    assert completion_length([5, 6, 7], eos_token_ids=[2]) == 3  # cut off at max_new_tokens
    assert completion_length([5, 6, 7]) == 3  # vLLM: no padding


def test_lighteval_metric_wrapper_scores_raw_text_and_token_lengths():
    from lighteval.models.model_output import ModelResponse
    from lighteval.tasks.requests import Doc

    from trl_opd.eval.tasks import SampledMathScore, qwen3_math_prompt, sampled_math_metric

    doc = qwen3_math_prompt({"problem": "Compute $12 \\cdot 17$.", "answer": "204"}, "opd_aime24")
    assert isinstance(doc, Doc) and "\\boxed{}" in doc.query and doc.get_golds() == ["204"]
    response = ModelResponse(
        text=["<think>x</think>\\boxed{204}", "<think>never closed \\boxed{204}"],
        output_tokens=[[5, 6, 2, 0], [5, 6, 7, 8]],
    )
    scores = SampledMathScore(k=2, eos_token_ids=(2,), pad_token_id=0).compute(doc=doc, model_response=response)
    assert scores == {"avg@k": 0.5, "pass@k": 1.0, "mean_length": 3.5, "num_samples": 2.0}
    metric = sampled_math_metric(12)
    assert metric.sample_level_fn.num_samples() == 12
    assert "0x" not in str(metric.corpus_level_fn)  # stable text: lighteval hashes it into the cache key


def test_tasks_table_has_the_three_tasks_from_one_factory(monkeypatch):
    from trl_opd.eval import tasks

    monkeypatch.delenv("TRL_OPD_EVAL_DATA_DIR", raising=False)
    monkeypatch.setenv("TRL_OPD_EVAL_NUM_SAMPLES", "5")
    table = tasks.build_tasks_table()
    assert [t.name for t in table] == ["opd_aime24", "opd_aime25", "opd_hmmt25"]
    assert [t.hf_repo for t in table] == ["HuggingFaceH4/aime_2024", "yentinglin/aime_2025", "MathArena/hmmt_feb_2025"]
    assert all(t.metrics[0].sample_level_fn.k == 5 for t in table)
    assert all(t.generation_size == 32768 for t in table)


def test_resolve_benchmarks_accepts_keys_and_task_names():
    assert [s.key for s in resolve_benchmarks("aime24, opd_hmmt25|0")] == ["aime24", "hmmt25"]
    with pytest.raises(ValueError, match="valid tasks: aime24, aime25, hmmt25"):
        resolve_benchmarks("aime24,lighteval|aime24|0|0")


def test_local_data_checks_and_staging(tmp_path):
    spec = BENCHMARKS["aime24"]
    with pytest.raises(EvalDataError, match="expected one of: aime24.jsonl"):
        find_local_file(tmp_path, spec)
    (tmp_path / "aime24.jsonl").write_text(json.dumps({"problem": "p", "solution": "s"}) + "\n")
    with pytest.raises(EvalDataError, match="missing column"):
        read_local_rows(find_local_file(tmp_path, spec))
    (tmp_path / "aime24.jsonl").write_text(json.dumps({"problem": "1+1?", "answer": 2, "extra": [1]}) + "\n")
    staged = stage_local_dataset(tmp_path / "aime24.jsonl", cache_dir=tmp_path / "cache")
    assert json.loads((staged / "train.jsonl").read_text()) == {"id": "0", "problem": "1+1?", "answer": "2"}
    assert stage_local_dataset(tmp_path / "aime24.jsonl", cache_dir=tmp_path / "cache") == staged


def test_integer_answers_compare_as_math_verify_does_without_parsing():
    from math_verify import parse, verify

    from trl_opd.rewards import answers_match

    pairs = [("12", "12"), ("12", "13"), ("025", "25"), ("-3", "3"), ("+7", "7"), ("0", "-0"), (" 4 ", "4")]
    pairs += [(str(a), str(b)) for a in range(-12, 13, 5) for b in range(-12, 13, 4)]
    for predicted, reference in pairs:
        expected = verify(parse("\\boxed{" + reference + "}"), parse("\\boxed{" + predicted + "}"))
        assert answers_match(predicted, reference) == expected, (predicted, reference)
    assert answers_match("12.0", "12") and not answers_match("12.5", "12")  # not integers: math-verify decides
