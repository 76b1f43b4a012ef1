# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""`trl-opd eval`: Average@k, pass@k and mean length on AIME 2024 / AIME 2025 / HMMT Feb 2025 with lighteval 0.13.

Runs the real `lighteval` CLI (`accelerate` = transformers backend, or `vllm`) in a subprocess on the tasks of
[`trl_opd.eval.tasks`], then prints one table and writes `eval_results.json` and `eval_results.md` to the output dir:
by default the model folder itself (where `trl-opd card` reads them; the lighteval runs and caches go to its
`lighteval/`, `lighteval_cache/`, `data/` subfolders, which `trl-opd push` leaves out), for a Hub id
`eval_results/<name>`. A LoRA adapter folder is merged into its base model in a temporary folder first. The log path
is printed at the start and the progress (problems done / total, elapsed, ETA) while lighteval runs.

lighteval 0.13 traps handled here:
- its generation cache lives at `<cache_dir>/<model_name>/<hash of the model arguments>`; an absolute `model_name`
  puts it *inside the model folder*, and a new checkpoint at the same path reuses the old answers. We pass the
  model as a relative path (run from its parent folder) and set `cache_dir` to a folder named by a fingerprint of
  the weights (the card, results and training records excluded), so changed weights always get fresh generations;
- the task registry downloads `tinyBenchmarks.pkl` at import: [`trl_opd.eval.offline.prepare_offline`] runs first;
- task names are `task|fewshot` (`opd_aime24|0`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from trl_opd.adapters import adapter_base_model, is_adapter_folder, merge_adapter
from trl_opd.eval.data import (
    AVG_METRIC,
    BENCHMARKS,
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_NUM_SAMPLES,
    DEFAULT_SAMPLING,
    ENV_CACHE_DIR,
    ENV_DATA_DIR,
    ENV_EOS_IDS,
    ENV_MAX_NEW_TOKENS,
    ENV_NUM_SAMPLES,
    ENV_PAD_ID,
    K_METRIC,
    LENGTH_METRIC,
    PASS_METRIC,
    BenchmarkSpec,
    find_local_file,
    read_local_rows,
    resolve_benchmarks,
)
from trl_opd.eval.process import EvalError, run_lighteval


RESULTS_FILE, TABLE_FILE = "eval_results.json", "eval_results.md"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_FINGERPRINT_CHUNK = 1 << 20
# Files of a training folder that are no part of the model (the eval's own results are written beside the weights).
NOT_WEIGHTS = {
    "README.md",
    RESULTS_FILE,
    TABLE_FILE,
    "eval_history.json",
    "train_results.json",
    "all_results.json",
    "trainer_state.json",
    "training_curves.png",
    "trl_opd_recipe.yaml",
}


class _ArgumentParser(argparse.ArgumentParser):
    """argparse that raises [`EvalError`] instead of printing usage and exiting, so `main` prints one line."""

    def error(self, message: str):
        raise EvalError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(
        prog="trl-opd eval",
        description="Average@k / pass@k / mean length on AIME 2024, AIME 2025 and HMMT Feb 2025 with lighteval.",
    )
    parser.add_argument("--model", required=True, help="local model folder or Hub model id")
    parser.add_argument(
        "--tasks", default=",".join(BENCHMARKS), help=f"comma-separated, from: {', '.join(BENCHMARKS)}"
    )
    parser.add_argument("--num-samples", "-k", type=int, default=DEFAULT_NUM_SAMPLES, help="k samples per problem")
    parser.add_argument("--backend", choices=["auto", "vllm", "transformers"], default="auto")
    parser.add_argument("--data-dir", help="folder of local JSONL files (problem, answer); default: the Hub datasets")
    parser.add_argument(
        "--output-dir",
        help="where results go (default: the model folder itself, so `trl-opd card` finds them; for a Hub id: "
        "eval_results/<model name>)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    parser.add_argument("--max-samples", type=int, help="evaluate only the first N problems of each task (debug)")
    parser.add_argument("--temperature", type=float, default=DEFAULT_SAMPLING["temperature"])
    parser.add_argument("--top-p", type=float, default=DEFAULT_SAMPLING["top_p"])
    parser.add_argument("--top-k", type=int, default=DEFAULT_SAMPLING["top_k"])
    parser.add_argument("--device", help="transformers backend device (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", help="model dtype (default: bfloat16 on GPU, float32 on CPU)")
    parser.add_argument("--batch-size", type=int, help="transformers backend batch size (default: lighteval's)")
    parser.add_argument("--max-length", type=int, help="model context length (vLLM: max_model_length)")
    parser.add_argument("--revision", help="Hub revision of --model (pin it: the generation cache is keyed by it)")
    parser.add_argument("--gpu-memory-utilization", type=float, help="vLLM backend")
    parser.add_argument("--seed", type=int, help="vLLM sampling seed")
    return parser


def _check_positive(name: str, value: int | float | None, minimum: float = 1) -> None:
    if value is not None and value < minimum:
        raise EvalError(f"{name} must be >= {minimum:g}, got {value}")


def validate_args(args: argparse.Namespace) -> list[BenchmarkSpec]:
    """Check the arguments; returns the benchmarks to run. Raises `EvalError` with a one-line message."""
    try:
        specs = resolve_benchmarks(args.tasks)
    except ValueError as exc:
        raise EvalError(str(exc)) from None
    _check_positive("--num-samples", args.num_samples)
    _check_positive("--max-new-tokens", args.max_new_tokens)
    _check_positive("--max-samples", args.max_samples)
    _check_positive("--batch-size", args.batch_size)
    _check_positive("--max-length", args.max_length)
    _check_positive("--temperature", args.temperature, 0)
    if not 0 < args.top_p <= 1:
        raise EvalError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.temperature == 0 and args.num_samples > 1:
        raise EvalError("--temperature 0 (greedy) gives k identical samples; use --num-samples 1 or a temperature > 0")
    if args.data_dir is not None:
        try:
            for spec in specs:
                read_local_rows(find_local_file(args.data_dir, spec))
        except ValueError as exc:
            raise EvalError(str(exc)) from None
    resolve_model(args.model)
    return specs


def resolve_model(model: str) -> Path | None:
    """The local folder of `model`, or `None` for a Hub id. Raises `EvalError` for a path that does not exist."""
    path = Path(model).expanduser()
    if path.is_dir():
        if is_adapter_folder(path):  # a LoRA adapter: merged into a temporary folder before the eval
            return path.resolve()
        if not (path / "config.json").is_file():
            raise EvalError(
                f"model folder {model!r} has no config.json (not a saved transformers model) and no adapter_config.json"
            )
        if "," in path.name or "=" in path.name:
            raise EvalError(f"model folder name {path.name!r} must not contain ',' or '='")
        return path.resolve()
    if path.exists():
        raise EvalError(f"model path {model!r} is not a folder")
    if not _HUB_ID.match(model) or model.startswith((".", "~")):
        raise EvalError(f"model path {model!r} does not exist")
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(model, "config.json")
        except Exception:  # a malformed id: report it as missing below
            cached = None
        if not isinstance(cached, str):
            raise EvalError(f"model path {model!r} does not exist (and HF_HUB_OFFLINE=1, so it is not a Hub download)")
    return None


def model_fingerprint(folder: Path) -> str:
    """A hash of a model folder's top-level files (name, size, mtime, first and last MiB); card, results, training
    records excluded ([`NOT_WEIGHTS`]).

    Cheap for multi-GB checkpoints, and any rewrite of the weights changes it.
    """
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.is_file() and p.name not in NOT_WEIGHTS):
        stat = path.stat()
        digest.update(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
        with open(path, "rb") as handle:
            digest.update(handle.read(_FINGERPRINT_CHUNK))
            if stat.st_size > 2 * _FINGERPRINT_CHUNK:
                handle.seek(-_FINGERPRINT_CHUNK, os.SEEK_END)
                digest.update(handle.read())
    return digest.hexdigest()[:16]


def length_token_ids(model: str, revision: str | None = None) -> tuple[tuple[int, ...], int | None]:
    """End-of-sequence ids and the pad id of `model` (tokenizer and generation config), to measure lengths."""
    eos: list[int] = []
    pad = None
    try:
        from transformers import AutoTokenizer, GenerationConfig

        tokenizer = AutoTokenizer.from_pretrained(model, revision=revision)
        eos += [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        pad = tokenizer.pad_token_id
        try:
            config_eos = GenerationConfig.from_pretrained(model, revision=revision).eos_token_id
            eos += config_eos if isinstance(config_eos, list) else [config_eos] if config_eos is not None else []
        except OSError:
            pass
    except Exception:  # lengths then count every returned token; never fail the eval for this
        return (), None
    return tuple(dict.fromkeys(int(i) for i in eos)), pad


def default_device() -> str:
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def pick_backend(backend: str) -> str:
    if backend != "auto":
        return backend
    try:
        import importlib.util

        has_vllm = importlib.util.find_spec("vllm") is not None
    except ValueError:
        has_vllm = False
    return "vllm" if has_vllm and default_device() == "cuda" else "transformers"


def model_parameters(args: argparse.Namespace, model_name: str, backend: str, cache_dir: Path) -> dict:
    """lighteval's `model_parameters` (written to a YAML file: no quoting trouble with paths or braces)."""
    generation = {"temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k}
    params: dict = {"model_name": model_name, "cache_dir": str(cache_dir)}
    if args.revision:
        params["revision"] = args.revision
    if backend == "vllm":
        params["dtype"] = args.dtype or "bfloat16"
        # lighteval's vLLM backend takes the budget from here first, then from the task's generation_size
        generation["max_new_tokens"] = args.max_new_tokens
        if args.seed is not None:
            params["seed"] = args.seed
        if args.max_length:
            params["max_model_length"] = args.max_length
        if args.gpu_memory_utilization:
            params["gpu_memory_utilization"] = args.gpu_memory_utilization
    else:
        device = args.device or default_device()
        params.update(device=device, dtype=args.dtype or ("float32" if device == "cpu" else "bfloat16"))
        # No max_new_tokens here: lighteval 0.13's transformers backend also uses it as the *prompt* truncation
        # length; the budget goes through the task's generation_size instead (TRL_OPD_EVAL_MAX_NEW_TOKENS).
        if args.batch_size:
            params["batch_size"] = args.batch_size
        if args.max_length:
            params["max_length"] = args.max_length
    params["generation_parameters"] = generation
    return params


def subprocess_env(
    args: argparse.Namespace, local_model: bool, staging: Path, model_dir: Path | None = None
) -> dict[str, str]:
    """Environment for the lighteval process: the task settings, and offline mode when everything is local."""
    env = dict(os.environ)
    env.update(
        {
            ENV_NUM_SAMPLES: str(args.num_samples),
            ENV_MAX_NEW_TOKENS: str(args.max_new_tokens),
            ENV_CACHE_DIR: str(staging),
            "TOKENIZERS_PARALLELISM": "false",
        }
    )
    for name in (ENV_DATA_DIR, ENV_EOS_IDS, ENV_PAD_ID):
        env.pop(name, None)
    eos, pad = length_token_ids(str(model_dir) if model_dir else args.model, args.revision)
    if eos:
        env[ENV_EOS_IDS] = ",".join(map(str, eos))
    if pad is not None:
        env[ENV_PAD_ID] = str(pad)
    if args.data_dir:
        env[ENV_DATA_DIR] = str(Path(args.data_dir).resolve())
        if local_model:
            env.setdefault("HF_HUB_OFFLINE", "1")
            env.setdefault("HF_DATASETS_OFFLINE", "1")
    # lighteval runs from the model's parent folder: make sure this copy of trl_opd is the one it imports
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    return env


def _details_files(run_dir: Path, task_name: str) -> list[Path]:
    return sorted(run_dir.glob(f"details/**/details_{task_name}|0_*.parquet"))


def load_generations(run_dir: str | os.PathLike, task_name: str) -> list[list[str]]:
    """The k completions of every problem of a task, from a lighteval run's details (`--save-details`)."""
    import pyarrow.parquet as pq

    generations = []
    for path in _details_files(Path(run_dir), task_name):
        for response in pq.read_table(path, columns=["model_response"]).column("model_response").to_pylist():
            generations.append(list(response["text"]))
    return generations


def collect_results(run_dir: Path, specs: list[BenchmarkSpec]) -> list[dict]:
    """Rows of the table, read from lighteval's results JSON."""
    files = sorted(run_dir.glob("results/**/results_*.json"))
    if not files:
        raise EvalError(f"lighteval wrote no results file under {run_dir}")
    data = json.loads(files[-1].read_text())
    rows = []
    for spec in specs:
        scores = data["results"].get(f"{spec.task_name}|0")
        if scores is None:
            raise EvalError(f"lighteval's results have no entry for {spec.task_name}")
        import pyarrow.parquet as pq

        num_problems = sum(pq.read_metadata(p).num_rows for p in _details_files(run_dir, spec.task_name))
        rows.append(
            {
                "task": spec.key,
                "task_name": spec.task_name,
                "title": spec.title,
                "average_at_k": scores[AVG_METRIC],
                "pass_at_k": scores[PASS_METRIC],
                "mean_length": scores[LENGTH_METRIC],
                "k": int(round(scores[K_METRIC])),
                "num_problems": num_problems,
            }
        )
    return rows


def format_table(result: dict) -> str:
    """The results as one Markdown table, followed by the sampling settings."""
    lines = [
        "| task | Average@k | pass@k | mean length | k |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in result["results"]:
        lines.append(
            f"| {row['task']} | {100 * row['average_at_k']:.2f} | {100 * row['pass_at_k']:.2f} "
            f"| {row['mean_length']:.1f} | {row['k']} |"
        )
    s = result["sampling"]
    lines.append("")
    lines.append(
        f"Average@k and pass@k in %, mean length in tokens; temperature {s['temperature']}, top-p {s['top_p']}, "
        f"top-k {s['top_k']}, max_new_tokens {s['max_new_tokens']}, backend {result['backend']}."
    )
    return "\n".join(lines)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def default_output_dir(model: str) -> Path:
    """A local model folder records its own results (`MODEL/eval_results.json`); a Hub model `eval_results/<name>`."""
    if Path(model).expanduser().is_dir():
        return Path(model).expanduser()
    name = Path(model.rstrip("/")).name or "model"
    return Path("eval_results") / re.sub(r"[^\w.-]+", "_", name)


def _model_identity(args: argparse.Namespace, local: Path | None) -> tuple[str, Path, str]:
    """(fingerprint, working folder, `model_name` for lighteval) of the model to evaluate."""
    if local is not None:
        # Relative name, run from the parent folder: lighteval's cache then goes under cache_dir, not the model.
        return model_fingerprint(local), local.parent, f"./{local.name}"
    key = f"{args.model}@{args.revision or 'main'}"
    return "hub-" + hashlib.sha256(key.encode()).hexdigest()[:16], Path.cwd(), args.model


def launch(
    args: argparse.Namespace, specs: list[BenchmarkSpec], output_dir: Path
) -> tuple[Path, str, str, Path | None]:
    """Write lighteval's model config and run it once for all tasks; returns (run dir, fingerprint, backend, local)."""
    from trl_opd.eval.offline import prepare_offline

    try:
        if prepare_offline() is None:
            raise EvalError("lighteval is not installed; install it with: pip install 'trl-opd[eval]'")
    except OSError as exc:
        raise EvalError(f"cannot create lighteval's offline stub: {exc}") from None
    import yaml

    backend = pick_backend(args.backend)
    local = resolve_model(args.model)
    fingerprint, cwd, model_name = _model_identity(args, local)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"
    run_dir = output_dir / "lighteval" / stamp
    run_dir.mkdir(parents=True, exist_ok=True)
    # lighteval keys its cache by the model arguments, cache_dir included: a folder per fingerprint of the weights.
    cache_dir = output_dir / "lighteval_cache" / fingerprint
    merged = None
    if local is not None and is_adapter_folder(local):
        merged = _merged_copy(local, run_dir)
        cwd, model_name = merged.parent, f"./{merged.name}"
    config_path = run_dir / "model_config.yaml"
    config_path.write_text(
        yaml.safe_dump({"model_parameters": model_parameters(args, model_name, backend, cache_dir)})
    )
    command = [sys.executable, "-m", "lighteval", "accelerate" if backend == "transformers" else "vllm"]
    command += [str(config_path), ",".join(f"{spec.task_name}|0" for spec in specs)]
    command += ["--custom-tasks", "trl_opd.eval.tasks", "--output-dir", str(run_dir), "--save-details"]
    if args.max_samples:
        command += ["--max-samples", str(args.max_samples)]
    log_path = run_dir / "lighteval.log"
    print(f"lighteval log: {log_path}", flush=True)
    env = subprocess_env(args, local is not None, output_dir / "data", merged)
    try:
        run_lighteval(command, env, cwd, log_path)
    finally:
        if merged is not None:
            shutil.rmtree(merged.parent, ignore_errors=True)
    return run_dir, fingerprint, backend, local


def _merged_copy(adapter: Path, run_dir: Path) -> Path:
    """The base model with `adapter` merged in, saved to a temporary folder (removed after the eval)."""
    base = adapter_base_model(adapter)
    print(f"{adapter} is a LoRA adapter: merging it into {base} for the eval ...", flush=True)
    folder = Path(tempfile.mkdtemp(prefix="merged-", dir=run_dir)) / "model"
    try:
        return merge_adapter(adapter, folder, base)
    except Exception as exc:  # base model unreachable, incompatible adapter: one line for the user
        shutil.rmtree(folder.parent, ignore_errors=True)
        raise EvalError(f"cannot merge the adapter {adapter} into {base}: {' '.join(str(exc).split())[:300]}") from exc


def run_eval(args: argparse.Namespace) -> dict:
    """Validate, run lighteval once for all tasks, write `eval_results.json` / `.md`; returns the result dict."""
    specs = validate_args(args)
    output_dir = Path(args.output_dir or default_output_dir(args.model)).resolve()
    start = time.time()
    run_dir, fingerprint, backend, local = launch(args, specs, output_dir)
    result = {
        "model": str(local) if local is not None else args.model,
        "revision": args.revision,
        "model_fingerprint": fingerprint,
        "backend": backend,
        "num_samples": args.num_samples,
        "sampling": {
            "temperature": args.temperature,
            "top_p": args.top_p,
            "top_k": args.top_k,
            "max_new_tokens": args.max_new_tokens,
        },
        "data": str(Path(args.data_dir).resolve()) if args.data_dir else {s.key: s.hub_repo for s in specs},
        "max_samples": args.max_samples,
        "results": collect_results(run_dir, specs),
        "lighteval_run_dir": str(run_dir),
        "wall_time_s": round(time.time() - start, 1),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    _write_atomic(output_dir / RESULTS_FILE, json.dumps(result, indent=2) + "\n")
    _write_atomic(output_dir / TABLE_FILE, format_table(result) + "\n")
    return result


def evaluate_model(model: str | os.PathLike, **options) -> dict:
    """Python entry point of `trl-opd eval`: same options as the CLI, with underscores (`num_samples=12`).

    Raises:
        [`EvalError`]: bad input, or lighteval failing.
    """
    args = build_parser().parse_args(["--model", str(model)])
    for key, value in options.items():
        if not hasattr(args, key):
            raise TypeError(f"evaluate_model() got an unknown option {key!r}")
        setattr(args, key, value)
    if not isinstance(args.tasks, str):
        args.tasks = ",".join(args.tasks)
    return run_eval(args)


def main(argv: list[str] | None = None) -> int:
    """`trl-opd eval ...`: 0 on success, 2 on bad input, 1 when lighteval fails (one `error: ...` line each)."""
    try:
        args = build_parser().parse_args(argv)
        specs = validate_args(args)
    except EvalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    print(f"Evaluating {args.model} on {', '.join(s.key for s in specs)} with k={args.num_samples} ...", flush=True)
    try:
        result = run_eval(args)
    except EvalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(format_table(result))
    print(f"Results: {Path(result['lighteval_run_dir']).parents[1] / RESULTS_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
