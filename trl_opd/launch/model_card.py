# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""Model cards: one template for every method (`trl_opd/launch/model_cards/model_card.md`), and a thin Hub upload.

```python
from trl_opd.launch.model_card import render_model_card, write_model_card

card = render_model_card({"base_model": "Qwen/Qwen3-1.7B", "teacher": "Qwen/Qwen3-8B", "method": "tropd", ...})
write_model_card("outputs/tropd-qwen3-1.7b", card)
```
"""

from __future__ import annotations

import json
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

from .methods import METHODS


class MethodPaper(NamedTuple):
    """A method's paper: `(title, arxiv_id)`."""

    title: str
    arxiv_id: str


# method -> its paper, read from the registry (the one table of method facts).
METHOD_PAPERS: dict[str, MethodPaper] = {
    name: MethodPaper(spec.paper_title, spec.paper_id) for name, spec in METHODS.items()
}


TRL_CITATION = """@misc{vonwerra2022trl,
  title        = {{TRL: Transformer Reinforcement Learning}},
  author       = {Leandro von Werra and Younes Belkada and Lewis Tunstall and Edward Beeching and Tristan Thrush and Nathan Lambert and Shengyi Huang and Kashif Rasul and Quentin Gallou{\\'e}dec},
  year         = 2020,
  journal      = {GitHub repository},
  publisher    = {GitHub},
  howpublished = {\\url{https://github.com/huggingface/trl}}
}"""

DEFAULT_INTENDED_USE = (
    "Research on on-policy distillation and math reasoning: solving competition-style math problems with a long "
    "chain of thought and a final answer in `\\boxed{}`. Not evaluated for safety, factuality outside math, or "
    "languages other than English; it inherits the base model's and the teacher's limitations and biases, and scores "
    "on 30-problem benchmarks have a large variance (see k above). Do not use it for high-stakes decisions."
)

TEMPLATE_NAME = "model_card.md"
CARD_FILE = "README.md"
_PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def load_template(name: str = TEMPLATE_NAME) -> str:
    """The card template shipped in `trl_opd/launch/model_cards/`."""
    return resources.files("trl_opd.launch").joinpath("model_cards", name).read_text(encoding="utf-8")


def git_commit(path: str | os.PathLike | None = None) -> str:
    """The commit of the trl-opd checkout or install, read from files: no `git` runs (its config can run commands)."""
    from .provenance import source_commit

    return source_commit(path)


def framework_versions() -> str:
    """Installed versions of the packages a run depends on, as one line."""
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    for package in ("trl-opd", "trl", "transformers", "torch", "lighteval"):
        try:
            parts.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            continue
    return ", ".join(parts)


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table; `|` in cells is escaped."""

    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def hyperparameters_table(hyperparameters: dict[str, Any] | None) -> str:
    if not hyperparameters:
        return "No hyperparameters were recorded for this run."
    rows = [[f"`{key}`", f"`{value}`"] for key, value in hyperparameters.items()]
    return markdown_table(["hyperparameter", "value"], rows)


def eval_section(evaluation: dict | None, model_hint: str = "MODEL") -> str:
    """The eval table and its sampling settings, from a `trl-opd eval` result dict."""
    if not evaluation or not evaluation.get("results"):
        return (
            "Not evaluated yet. Run `trl-opd eval --model " + model_hint + " --tasks aime24,aime25,hmmt25` "
            "(Average@k, pass@k, mean length) and re-render this card."
        )
    rows = [
        [
            r.get("title", r["task"]),
            f"{100 * r['average_at_k']:.2f}",
            f"{100 * r['pass_at_k']:.2f}",
            f"{r['mean_length']:.1f}",
            r["k"],
            r.get("num_problems") or "",
        ]
        for r in evaluation["results"]
    ]
    table = markdown_table(["benchmark", "Average@k (%)", "pass@k (%)", "mean length (tokens)", "k", "problems"], rows)
    s = evaluation["sampling"]
    data = evaluation.get("data")
    source = (
        "local files in `" + data + "`"
        if isinstance(data, str)
        else ", ".join(f"`{v}`" for v in (data or {}).values())
    )
    notes = [
        f"Sampling: temperature {s['temperature']}, top-p {s['top_p']}, top-k {s['top_k']}, "
        f"max_new_tokens {s['max_new_tokens']}; k = {evaluation.get('num_samples')} samples per problem.",
        f"Evaluated with lighteval 0.13 (`trl-opd eval`, {evaluation.get('backend', 'transformers')} backend) on {source}.",
    ]
    if evaluation.get("max_samples"):
        notes.append(
            f"Only {evaluation['max_samples']} problems per benchmark were used (`--max-samples`): "
            "not comparable with full-benchmark numbers."
        )
    if evaluation.get("step") is not None:
        notes.append(f"Checkpoint evaluated: training step {evaluation['step']}.")
    return table + "\n\n" + "\n".join(f"- {n}" for n in notes)


def citation(method: str) -> str:
    paper = METHOD_PAPERS[method]
    key = re.sub(r"\W", "", method) + paper.arxiv_id.replace(".", "")
    year = 2000 + int(paper.arxiv_id[:2])
    entry = (
        f"@misc{{{key},\n  title         = {{{paper.title}}},\n  year          = {year},\n"
        f"  eprint        = {{{paper.arxiv_id}}},\n  archivePrefix = {{arXiv}},\n"
        f"  url           = {{https://arxiv.org/abs/{paper.arxiv_id}}}\n}}"
    )
    return entry + "\n\n" + TRL_CITATION


def _training_data(value: Any) -> str:
    if not value:
        raise ValueError("model card: 'training_data' is required (dataset id(s) or a description)")
    items = value if isinstance(value, (list, tuple)) else [value]
    return ", ".join(f"`{v}`" if _HUB_ID.match(str(v)) or "/" in str(v) else str(v) for v in items)


def _model_ref(name: str, link: bool) -> str:
    return f"[{name}](https://huggingface.co/{name})" if link and _HUB_ID.match(name) else f"`{name}`"


def _teacher(info: dict) -> str:
    teacher, method = info.get("teacher"), info["method"]
    if teacher:
        return _model_ref(str(teacher), link=True)
    kind = METHODS[method].teacher
    if kind == "self":
        return "the student itself, shown privileged context (self-distillation)"
    if kind == "none":
        return "none (reinforcement learning with the verifiable math reward)"
    raise ValueError(f"model card: 'teacher' is required for method {method!r}")


def card_fields(info: dict) -> dict[str, str]:
    """Every template field, computed from `info` (see [`render_model_card`]). Raises `ValueError` when incomplete."""
    method = str(info.get("method", "")).lower()
    if method not in METHOD_PAPERS:
        raise ValueError(f"model card: unknown method {method!r}; known: {', '.join(METHOD_PAPERS)}")
    if not info.get("base_model"):
        raise ValueError("model card: 'base_model' is required")
    info = {**info, "method": method}
    paper = METHOD_PAPERS[method]
    base_model = str(info["base_model"])
    model_name = info.get("model_name") or info.get("hub_model_id") or f"{base_model.split('/')[-1]}-{method}"
    is_hub_base = bool(_HUB_ID.match(base_model)) and not Path(base_model).exists()
    return {
        "license": info.get("license") or "apache-2.0",
        "base_model_metadata": f"base_model: {base_model}"
        if is_hub_base
        else "# base_model: a local model (no Hub id)",
        "base_model": base_model,
        "base_model_link": _model_ref(base_model, link=is_hub_base),
        "model_name": str(model_name),
        "teacher": _teacher(info),
        "method": method,
        "method_display": METHODS[method].display_name,
        "paper_reference": f"[{paper.title}](https://arxiv.org/abs/{paper.arxiv_id}), arXiv:{paper.arxiv_id}",
        "recipe": str(info.get("recipe") or "not recorded (trainer configured in code)"),
        "commit": str(info.get("commit") or git_commit()),
        "training_data": _training_data(info.get("training_data")),
        "framework_versions": info.get("framework_versions") or framework_versions(),
        "hyperparameters_table": hyperparameters_table(info.get("hyperparameters")),
        "eval_section": eval_section(info.get("eval"), model_hint=str(model_name)),
        "intended_use": info.get("intended_use") or DEFAULT_INTENDED_USE,
        "citation": citation(method),
    }


def render_model_card(info: dict, template: str | None = None) -> str:
    """Render the model card.

    Args:
        info (`dict`): `base_model`, `method` (a key of [`METHOD_PAPERS`]) and `training_data` are required;
            optional: `teacher` (required for external-teacher methods), `model_name`, `hub_model_id`, `recipe`,
            `commit` (default: this checkout's), `hyperparameters` (dict), `eval` (a `trl-opd eval` result dict, as
            in `eval_results.json`), `intended_use`, `license`, `framework_versions`.
        template (`str`, *optional*): a template string; default: the packaged `model_card.md`.

    Returns:
        `str`: the card, with no `{{ placeholder }}` left.

    Raises:
        `ValueError`: a required field is missing, or the template has a placeholder with no value.
    """
    fields = card_fields(info)
    text = template if template is not None else load_template()
    missing = sorted({m.group(1) for m in _PLACEHOLDER.finditer(text)} - fields.keys())
    if missing:
        raise ValueError(f"model card template has placeholders with no value: {', '.join(missing)}")
    return _PLACEHOLDER.sub(lambda m: fields[m.group(1)], text)


def write_model_card(output_dir: str | os.PathLike, card_text: str, filename: str = CARD_FILE) -> Path:
    """Write the card as `output_dir/README.md` atomically (temp file + `os.replace`)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    target = output_dir / filename
    tmp = output_dir / f".{filename}.{os.getpid()}.tmp"
    tmp.write_text(card_text, encoding="utf-8")
    os.replace(tmp, target)
    return target


def load_eval_results(output_dir: str | os.PathLike) -> dict | None:
    """The `trl-opd eval` result stored in `output_dir/eval_results.json` (by the runner or the callback), if any."""
    path = Path(output_dir) / "eval_results.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


# Not uploaded with the weights: checkpoints, eval runs and caches, trainer scratch files.
UPLOAD_IGNORE = [
    "checkpoint-*",
    "checkpoint-*/**",
    "eval/**",
    "lighteval/**",
    "lighteval_cache/**",
    "data/**",
    "runs/**",
    ".*",
    "training_args.bin",  # the pickled TrainingArguments hold `hub_token` in clear text
    "**/training_args.bin",
    "trl_opd_state.pt",
    "*.tmp",
]


def push_model_with_card(
    trainer_or_output_dir: Any,
    hub_model_id: str,
    revision: str | None = None,
    card_text: str | None = None,
    *,
    private: bool | None = None,
    commit_message: str | None = None,
    api: Any = None,
    token: str | None = None,
) -> Any:
    """Upload a saved model folder (or a trainer's `output_dir`) and its card to the Hub.

    huggingface_hub's standard path: `create_repo(exist_ok=True)`, `create_branch` when `revision` is not `main`
    (one branch per checkpoint, e.g. `step-500`), then `upload_folder` with `README.md` written first.

    Args:
        trainer_or_output_dir: a `transformers.Trainer` (its model is saved to `args.output_dir` first; only the main
            process uploads) or a folder path.
        hub_model_id (`str`): the repo id, `user/name`.
        revision (`str`, *optional*): the branch to upload to; default `main`.
        card_text (`str`, *optional*): the card; default: keep the folder's `README.md`.
        private (`bool`, *optional*): create the repo private (`hub_private_repo`).
        api (`huggingface_hub.HfApi`, *optional*): the client (tests pass a stand-in).
        token (`str`, *optional*): the Hub token (`hub_token`); a file that contains it is never uploaded.

    Returns:
        the `upload_folder` result (a `CommitInfo`), or `None` on a non-main process.
    """
    if hasattr(trainer_or_output_dir, "save_model"):
        trainer = trainer_or_output_dir
        folder = Path(trainer.args.output_dir)
        trainer.save_model(str(folder))
        if not trainer.is_world_process_zero():
            return None
    else:
        folder = Path(trainer_or_output_dir)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a saved model folder (no config.json)")
    if card_text is not None:
        write_model_card(folder, card_text)
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    api.create_repo(repo_id=hub_model_id, repo_type="model", private=private, exist_ok=True)
    if revision and revision != "main":
        api.create_branch(repo_id=hub_model_id, branch=revision, repo_type="model", exist_ok=True)
    return api.upload_folder(
        repo_id=hub_model_id,
        folder_path=str(folder),
        repo_type="model",
        revision=revision,
        commit_message=commit_message or f"Upload {folder.name} with trl-opd" + (f" ({revision})" if revision else ""),
        ignore_patterns=UPLOAD_IGNORE + files_holding(folder, token),
    )


def files_holding(folder: Path, secret: str | None, max_bytes: int = 64 << 20) -> list[str]:
    """Paths (relative to `folder`) of the files, up to `max_bytes` each, whose bytes contain `secret`."""
    if not secret:
        return []
    needle, found = secret.encode(), []
    for path in folder.rglob("*"):
        if path.is_file() and path.stat().st_size <= max_bytes and needle in path.read_bytes():
            found.append(path.relative_to(folder).as_posix())
    return found


# Training arguments every card lists (when the config has them); method-specific fields are added automatically.
KEY_HYPERPARAMETERS = (
    "learning_rate",
    "lr_scheduler_type",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "num_train_epochs",
    "max_steps",
    "max_completion_length",
    "num_generations",
    "temperature",
    "beta",
    "seed",
)


def _method_fields(args: Any) -> list[str]:
    """Fields a trl-opd config adds to the TRL config it extends (its method's own hyperparameters)."""
    from dataclasses import fields, is_dataclass

    trl_base = next((c for c in type(args).__mro__ if c.__module__.startswith("trl.") and is_dataclass(c)), None)
    base_names = {f.name for f in fields(trl_base)} if trl_base else set()
    return [f.name for f in fields(args) if f.name not in base_names]


def training_card_info(
    method: str,
    args: Any,
    base_model: str,
    teacher: str | None = None,
    recipe: str | None = None,
    training_data: Any = None,
    evaluation: dict | None = None,
) -> dict:
    """The `info` of [`render_model_card`] for a finished run, from its method name and training config."""
    names = [n for n in KEY_HYPERPARAMETERS if hasattr(args, n)] + _method_fields(args)
    hyperparameters = {name: getattr(args, name) for name in dict.fromkeys(names)}
    return {
        "method": method,
        "base_model": base_model,
        "teacher": teacher,
        "recipe": recipe,
        "training_data": training_data or "not recorded",
        "hyperparameters": hyperparameters,
        "eval": evaluation,
        "hub_model_id": getattr(args, "hub_model_id", None),
        "model_name": Path(getattr(args, "output_dir", "") or base_model).name,
    }
