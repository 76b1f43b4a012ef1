# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""The three benchmarks, their data sources, and the environment variables that configure the lighteval tasks.

Pure Python (no lighteval import) so that `trl-opd eval` can check its input before starting lighteval.

lighteval imports a custom-task module by name (`--custom-tasks trl_opd.eval.tasks`) in its own process, so the
settings reach the task module through environment variables, read when it is imported:

| variable | meaning | default |
|---|---|---|
| `TRL_OPD_EVAL_DATA_DIR` | folder of local JSONL files (`problem`, `answer`) | unset: the Hub datasets |
| `TRL_OPD_EVAL_NUM_SAMPLES` | k, samples per problem | 12 |
| `TRL_OPD_EVAL_MAX_NEW_TOKENS` | generation budget per completion | 32768 |
| `TRL_OPD_EVAL_EOS_IDS`, `TRL_OPD_EVAL_PAD_ID` | token ids used to measure completion lengths | unset |
| `TRL_OPD_EVAL_CACHE_DIR` | where local files are staged for `datasets.load_dataset` | `~/.cache/trl_opd/eval_data` |
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path


ENV_DATA_DIR = "TRL_OPD_EVAL_DATA_DIR"
ENV_NUM_SAMPLES = "TRL_OPD_EVAL_NUM_SAMPLES"
ENV_MAX_NEW_TOKENS = "TRL_OPD_EVAL_MAX_NEW_TOKENS"
ENV_EOS_IDS = "TRL_OPD_EVAL_EOS_IDS"
ENV_PAD_ID = "TRL_OPD_EVAL_PAD_ID"
ENV_CACHE_DIR = "TRL_OPD_EVAL_CACHE_DIR"

DEFAULT_NUM_SAMPLES = 12  # the ATESD paper's table reports Average@12
DEFAULT_MAX_NEW_TOKENS = 32768  # Qwen3 thinking mode
# Qwen3's recommended thinking-mode sampling.
DEFAULT_SAMPLING = {"temperature": 0.6, "top_p": 0.95, "top_k": 20}
REQUIRED_COLUMNS = ("problem", "answer")
# The metrics every task reports (lighteval metric names).
AVG_METRIC, PASS_METRIC, LENGTH_METRIC, K_METRIC = "avg@k", "pass@k", "mean_length", "num_samples"
METRIC_NAMES = (AVG_METRIC, PASS_METRIC, LENGTH_METRIC, K_METRIC)


class EvalDataError(ValueError):
    """A local data folder that lacks a file or a column the tasks need."""


@dataclass(frozen=True)
class BenchmarkSpec:
    """One benchmark: its short key (`aime24`), lighteval task name, Hub dataset and accepted local file names."""

    key: str
    task_name: str
    title: str
    hub_repo: str
    split: str
    local_files: tuple[str, ...]


BENCHMARKS: dict[str, BenchmarkSpec] = {
    spec.key: spec
    for spec in (
        BenchmarkSpec(
            "aime24",
            "opd_aime24",
            "AIME 2024",
            "HuggingFaceH4/aime_2024",
            "train",
            ("aime24.jsonl", "aime_2024.jsonl"),
        ),
        BenchmarkSpec(
            "aime25", "opd_aime25", "AIME 2025", "yentinglin/aime_2025", "train", ("aime25.jsonl", "aime_2025.jsonl")
        ),
        BenchmarkSpec(
            "hmmt25",
            "opd_hmmt25",
            "HMMT February 2025",
            "MathArena/hmmt_feb_2025",
            "train",
            ("hmmt_feb_2025.jsonl", "hmmt25.jsonl"),
        ),
    )
}


def resolve_benchmarks(names: str | list[str]) -> list[BenchmarkSpec]:
    """Benchmarks from a comma-separated list of keys (`aime24`) or task names (`opd_aime24`, `opd_aime24|0`).

    Raises:
        `ValueError`: for an empty list or an unknown name (the message lists the valid ones).
    """
    items = [n.strip() for n in (names.split(",") if isinstance(names, str) else names)]
    items = [n for n in items if n]
    if not items:
        raise ValueError(f"no task given; valid tasks: {', '.join(BENCHMARKS)}")
    by_name = {**{s.task_name: s for s in BENCHMARKS.values()}, **BENCHMARKS}
    specs = []
    for item in items:
        spec = by_name.get(item.split("|")[0])
        if spec is None:
            raise ValueError(f"unknown task {item!r}; valid tasks: {', '.join(BENCHMARKS)}")
        if spec not in specs:
            specs.append(spec)
    return specs


def find_local_file(data_dir: str | os.PathLike, spec: BenchmarkSpec) -> Path:
    """The JSONL file for `spec` in `data_dir` (first of `spec.local_files` present).

    Raises:
        `EvalDataError`: when the folder or the file is missing.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise EvalDataError(f"data dir {str(data_dir)!r} does not exist or is not a folder")
    for name in spec.local_files:
        if (data_dir / name).is_file():
            return data_dir / name
    raise EvalDataError(
        f"data dir {str(data_dir)!r} has no file for {spec.key}; expected one of: {', '.join(spec.local_files)}"
    )


def read_local_rows(path: str | os.PathLike) -> list[dict]:
    """Rows of a local benchmark file, checked: JSON objects, each with a non-empty `problem` and `answer`.

    Raises:
        `EvalDataError`: on malformed JSON, a missing column or an empty file.
    """
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise EvalDataError(f"{path}:{line_number}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise EvalDataError(f"{path}:{line_number}: expected a JSON object")
            missing = [c for c in REQUIRED_COLUMNS if c not in row or str(row[c]).strip() == ""]
            if missing:
                raise EvalDataError(f"{path}:{line_number}: missing column(s) {', '.join(missing)}")
            rows.append(row)
    if not rows:
        raise EvalDataError(f"{path}: no rows")
    return rows


def stage_local_dataset(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """Write `path`'s rows (`id`, `problem`, `answer` as strings) to `<cache>/<stem>-<hash>/train.jsonl`.

    lighteval loads data with `load_dataset(path=hf_repo, name=hf_subset)`, which reads a folder but not a single
    file, so each benchmark gets its own folder, named by a hash of the file's content (a changed file gets a new
    folder). Written atomically; an existing staged folder is reused.

    Returns:
        `Path`: the folder to use as the task's `hf_repo`.
    """
    path = Path(path)
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()[:16]
    root = Path(cache_dir or os.environ.get(ENV_CACHE_DIR) or Path.home() / ".cache" / "trl_opd" / "eval_data")
    folder = root / f"{path.stem}-{digest}"
    target = folder / "train.jsonl"
    if target.is_file():
        return folder
    rows = read_local_rows(path)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".train.jsonl.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        for index, row in enumerate(rows):
            record = {"id": str(row.get("id", index)), "problem": str(row["problem"]), "answer": str(row["answer"])}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(tmp, target)
    return folder


def env_int(name: str, default: int, minimum: int = 1) -> int:
    """An integer environment variable, `default` when unset.

    Raises:
        `ValueError`: when it is set but not an integer >= `minimum`.
    """
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not an integer") from None
    if number < minimum:
        raise ValueError(f"{name}={number} must be >= {minimum}")
    return number


def env_int_list(name: str) -> tuple[int, ...]:
    """A comma-separated list of integers from the environment (empty when unset)."""
    value = os.environ.get(name, "").strip()
    return tuple(int(v) for v in value.split(",") if v.strip()) if value else ()
