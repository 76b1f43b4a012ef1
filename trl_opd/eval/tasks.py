# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""lighteval 0.13 tasks `opd_aime24`, `opd_aime25` and `opd_hmmt25`: Average@k, pass@k and mean length in tokens.

Use with lighteval directly (task syntax `task|fewshot`; the old `lighteval|aime24|0|0` no longer parses):

```bash
TRL_OPD_EVAL_NUM_SAMPLES=12 lighteval accelerate "model_name=Qwen/Qwen3-1.7B,generation_parameters={temperature:0.6,top_p:0.95,top_k:20}" \
    "opd_aime24|0,opd_aime25|0,opd_hmmt25|0" --custom-tasks trl_opd.eval.tasks
```

or through `trl-opd eval`, which also guards against lighteval's stale generation cache. The settings come from the
environment variables listed in [`trl_opd.eval.data`] (k, local data folder, generation budget).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from lighteval.metrics.metrics_sample import SampleLevelComputation, SamplingMetric
from lighteval.metrics.utils.metric_utils import SampleLevelMetricGrouping
from lighteval.models.model_input import GenerationParameters
from lighteval.models.model_output import ModelResponse
from lighteval.tasks.lighteval_task import LightevalTaskConfig
from lighteval.tasks.requests import Doc, SamplingMethod

from trl_opd.eval.data import (
    AVG_METRIC,
    BENCHMARKS,
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_NUM_SAMPLES,
    ENV_DATA_DIR,
    ENV_EOS_IDS,
    ENV_MAX_NEW_TOKENS,
    ENV_NUM_SAMPLES,
    ENV_PAD_ID,
    K_METRIC,
    LENGTH_METRIC,
    METRIC_NAMES,
    PASS_METRIC,
    BenchmarkSpec,
    EvalDataError,
    env_int,
    env_int_list,
    find_local_file,
    stage_local_dataset,
)
from trl_opd.eval.scoring import completion_length
from trl_opd.eval.scoring import score_samples as _score_samples


# Qwen3's recommended math prompt (thinking mode): the final answer goes in \boxed{}.
QWEN3_MATH_PROMPT = "{problem}\nPlease reason step by step, and put your final answer within \\boxed{{}}."


def qwen3_math_prompt(line: dict, task_name: str | None = None) -> Doc:
    """lighteval prompt function: one problem as a user turn with Qwen3's math instruction; gold = `answer`."""
    return Doc(
        task_name=task_name,
        query=QWEN3_MATH_PROMPT.format(problem=line["problem"]),
        choices=[str(line["answer"])],
        gold_index=0,
    )


class SampledMathScore(SamplingMetric, SampleLevelComputation):
    """k sampled completions per problem scored with `trl_opd.rewards`: Average@k, pass@k, mean length.

    Args:
        k (`int`): samples per problem (lighteval generates `num_samples()` completions per prompt).
        eos_token_ids (`tuple[int, ...]`, *optional*): ids that end a generation, to measure lengths.
        pad_token_id (`int` or `None`, *optional*): padding id, dropped from the end of a generation.
    """

    def __init__(self, k: int, eos_token_ids: tuple[int, ...] = (), pad_token_id: int | None = None):
        super().__init__()
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = k
        self.eos_token_ids = tuple(eos_token_ids)
        self.pad_token_id = pad_token_id

    def compute(self, doc: Doc, model_response: ModelResponse, **kwargs) -> dict[str, float]:
        texts = list(model_response.text[: self.k])  # raw text: the answer check itself handles <think>
        tokens = list(model_response.output_tokens[: self.k]) if model_response.output_tokens else []
        lengths = [completion_length(t, self.eos_token_ids, self.pad_token_id) for t in tokens]
        return _score_samples(texts, doc.get_golds()[0], lengths or None)

    def num_samples(self) -> int:
        return self.k


class CorpusMean:
    """`np.mean` with a stable `repr`.

    lighteval keys its generation cache by the task config's text, which shows a plain function as
    `<function mean at 0x7f...>`: a new address in every process, so the cache would never hit (no resume).
    `__name__` contains "mean" so lighteval uses its closed-form stderr.
    """

    def __init__(self):
        self.__name__ = "mean"

    def __call__(self, items) -> float:
        return float(np.mean(items))

    def __repr__(self) -> str:
        return "mean"


def sampled_math_metric(k: int, eos_token_ids: tuple[int, ...] = (), pad_token_id: int | None = None):
    """The metric group reported by every `opd_*` task: `avg@k`, `pass@k`, `mean_length`, `num_samples`."""
    return SampleLevelMetricGrouping(
        metric_name=list(METRIC_NAMES),
        higher_is_better={AVG_METRIC: True, PASS_METRIC: True, LENGTH_METRIC: False, K_METRIC: True},
        category=SamplingMethod.GENERATIVE,
        sample_level_fn=SampledMathScore(k, eos_token_ids, pad_token_id),
        corpus_level_fn={name: CorpusMean() for name in METRIC_NAMES},
    )


def make_task(
    spec: BenchmarkSpec,
    num_samples: int = DEFAULT_NUM_SAMPLES,
    max_new_tokens: int | None = DEFAULT_MAX_NEW_TOKENS,
    data_dir: str | os.PathLike | None = None,
    eos_token_ids: tuple[int, ...] = (),
    pad_token_id: int | None = None,
) -> LightevalTaskConfig:
    """The one factory behind the three tasks.

    Args:
        spec ([`~trl_opd.eval.data.BenchmarkSpec`]): which benchmark.
        num_samples (`int`, *optional*, defaults to `12`): k, samples per problem.
        max_new_tokens (`int` or `None`, *optional*, defaults to `32768`): generation budget per completion.
        data_dir (`str` or `None`, *optional*): local folder of JSONL files; `None` loads `spec.hub_repo`.
        eos_token_ids, pad_token_id: see [`SampledMathScore`].

    Returns:
        `LightevalTaskConfig`: named `spec.task_name`, zero-shot, one evaluation split.
    """
    if data_dir is not None:
        repo, split = str(stage_local_dataset(find_local_file(data_dir, spec))), "train"
    else:
        repo, split = spec.hub_repo, spec.split
    return LightevalTaskConfig(
        name=spec.task_name,
        prompt_function=qwen3_math_prompt,
        hf_repo=repo,
        hf_subset="default",
        hf_avail_splits=[split],
        evaluation_splits=[split],
        few_shots_split=None,
        few_shots_select=None,
        generation_size=max_new_tokens,
        metrics=[sampled_math_metric(num_samples, eos_token_ids, pad_token_id)],
        version=1,
    )


def enable_sampling_in_transformers_backend() -> None:
    """Make lighteval's transformers backend sample when `temperature > 0`.

    lighteval 0.13 builds the `generate()` kwargs from `GenerationParameters.to_transformers_dict`, which never sets
    `do_sample`, so a checkpoint whose `generation_config.json` says `do_sample=False` (any model saved without
    Qwen's sampling defaults) decodes greedily at "temperature 0.6" with k = 1 and crashes with k > 1. The tasks are
    imported before the model is built, so patching here covers `lighteval accelerate --custom-tasks ...`.
    Idempotent; vLLM is unaffected (it samples whenever temperature > 0).
    """
    original = GenerationParameters.to_transformers_dict
    if getattr(original, "_trl_opd_sampling", False):
        return

    def to_transformers_dict(self) -> dict:
        args = original(self)
        if (self.temperature or 0) > 0:
            args.setdefault("do_sample", True)
        return args

    to_transformers_dict._trl_opd_sampling = True
    GenerationParameters.to_transformers_dict = to_transformers_dict


def build_tasks_table() -> list[LightevalTaskConfig]:
    """The three tasks configured from the `TRL_OPD_EVAL_*` environment variables (see [`trl_opd.eval.data`])."""
    pad = os.environ.get(ENV_PAD_ID, "").strip()
    settings = {
        "num_samples": env_int(ENV_NUM_SAMPLES, DEFAULT_NUM_SAMPLES),
        "max_new_tokens": env_int(ENV_MAX_NEW_TOKENS, DEFAULT_MAX_NEW_TOKENS),
        "data_dir": os.environ.get(ENV_DATA_DIR) or None,
        "eos_token_ids": env_int_list(ENV_EOS_IDS),
        "pad_token_id": int(pad) if pad else None,
    }
    data_dir = settings["data_dir"]
    if data_dir is not None and not Path(data_dir).is_dir():
        raise EvalDataError(f"{ENV_DATA_DIR}={data_dir!r} is not a folder")
    # With a local folder, only the benchmarks whose files are there are defined.
    specs = [
        s
        for s in BENCHMARKS.values()
        if data_dir is None or any((Path(data_dir) / n).is_file() for n in s.local_files)
    ]
    return [make_task(spec, **settings) for spec in specs]


enable_sampling_in_transformers_backend()
TASKS_TABLE = build_tasks_table()
