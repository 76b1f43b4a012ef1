# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""Model cards: one template for every method (`trl_opd/launch/model_cards/model_card.md`); what a card says about a
run is [`~trl_opd.launch.card_info`], its upload [`~trl_opd.launch.hub`].

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
            "(Average@k, pass@k, mean length; the results are recorded in that folder), then `trl-opd card "
            + model_hint
            + "` to re-render this card."
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


def _readable(value: Any) -> str:
    """A hyperparameter as a reader writes it: enum values, `1e-05`, JSON for lists and dicts."""
    from enum import Enum

    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=str)
    return str(value)


def quick_start(model_id: str, adapter: bool = False, chat_template_kwargs: dict | None = None) -> str:
    """A runnable snippet: load the model (or the base model and the adapter) and answer one problem."""
    kwargs = "".join(f", {k}={v!r}" for k, v in (chat_template_kwargs or {}).items())
    if adapter:
        load = (
            "from peft import AutoPeftModelForCausalLM\nfrom transformers import AutoTokenizer\n\n"
            f'model_id = "{model_id}"  # a LoRA adapter: the base model is read from adapter_config.json\n'
            'model = AutoPeftModelForCausalLM.from_pretrained(model_id, dtype="auto", device_map="auto")\n'
        )
    else:
        load = (
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f'model_id = "{model_id}"\n'
            'model = AutoModelForCausalLM.from_pretrained(model_id, dtype="auto", device_map="auto")\n'
        )
    return (
        "```python\n" + load + "tokenizer = AutoTokenizer.from_pretrained(model_id)\n"
        'messages = [{"role": "user", "content": "What is the sum of the first 10 odd numbers? '
        'Please reason step by step, and put your final answer within \\\\boxed{}."}]\n'
        "inputs = tokenizer.apply_chat_template(\n"
        f'    messages, add_generation_prompt=True, return_tensors="pt", return_dict=True{kwargs}\n'
        ").to(model.device)\n"
        "output = model.generate(**inputs, max_new_tokens=4096, do_sample=True, temperature=0.6, top_p=0.95, top_k=20)\n"
        'print(tokenizer.decode(output[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True))\n```'
        + (
            f"\n\nTrained with the chat template called with `{json.dumps(chat_template_kwargs)}`: "
            "pass the same at inference."
            if chat_template_kwargs
            else ""
        )
    )


def training_state_line(state: dict | None) -> str:
    """One line from `trainer_state.json`: steps, epochs, final logged loss."""
    if not state:
        return "Training state: not recorded (no `trainer_state.json`)."
    parts = [f"{state.get('global_step')} optimizer steps"]
    if state.get("epoch") is not None:
        parts.append(f"{float(state['epoch']):.2f} epochs")
    losses = [e["loss"] for e in state.get("log_history", []) if isinstance(e.get("loss"), (int, float))]
    if losses:
        parts.append(f"last logged loss {losses[-1]:.4g}")
    return "Training state: " + ", ".join(parts) + " (`trainer_state.json`; curves in `training_curves.png`)."


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
    model_name = _model_name(info)
    display = info.get("method_display") or METHODS[method].display_name
    return {
        "base_model": base_model,
        "base_model_link": _model_ref(base_model, link=_is_hub_model(base_model)),
        "model_name": str(model_name),
        "teacher": _teacher(info),
        "method": method,
        "method_display": display,
        "paper_reference": f"[{paper.title}](https://arxiv.org/abs/{paper.arxiv_id}), arXiv:{paper.arxiv_id}",
        "recipe": str(info.get("recipe") or "not recorded (trainer configured in code)"),
        "commit": str(info.get("commit") or git_commit()),
        "training_data": _training_data(info.get("training_data")),
        "framework_versions": info.get("framework_versions") or framework_versions(),
        "quick_start": quick_start(
            str(info.get("hub_model_id") or info.get("output_dir") or model_name),
            adapter=bool(info.get("adapter")),
            chat_template_kwargs=info.get("chat_template_kwargs"),
        ),
        "training_state": training_state_line(info.get("state")),
        "hyperparameters_table": hyperparameters_table(info.get("hyperparameters")),
        "eval_section": eval_section(info.get("eval"), model_hint=str(info.get("output_dir") or "OUTPUT_DIR")),
        "intended_use": info.get("intended_use") or DEFAULT_INTENDED_USE,
        "citation": citation(method),
    }


def _model_name(info: dict) -> str:
    base_model = str(info["base_model"])
    return str(info.get("model_name") or info.get("hub_model_id") or f"{base_model.split('/')[-1]}-{info['method']}")


def _is_hub_model(name: str) -> bool:
    return bool(_HUB_ID.match(name)) and not Path(name).exists()


def _eval_results(evaluation: dict | None) -> list:
    """`model-index` entries (huggingface_hub `EvalResult`s): Average@k and pass@k per benchmark, in %."""
    from huggingface_hub import EvalResult

    from ..eval.data import BENCHMARKS

    if not evaluation or not evaluation.get("results"):
        return []
    data = evaluation.get("data")
    results = []
    for row in evaluation["results"]:
        dataset = data.get(row["task"]) if isinstance(data, dict) else None
        dataset = dataset or (BENCHMARKS[row["task"]].hub_repo if row["task"] in BENCHMARKS else None)
        for metric, key, name in (("avg@k", "average_at_k", "Average"), ("pass@k", "pass_at_k", "pass")):
            results.append(
                EvalResult(
                    task_type="text-generation",
                    dataset_type=dataset or row["task"],
                    dataset_name=row.get("title", row["task"]),
                    metric_type=metric,
                    metric_name=f"{name}@{row['k']}",
                    metric_value=round(100 * row[key], 2),
                )
            )
    return results


def card_metadata(info: dict):
    """The card's metadata as a `huggingface_hub.ModelCardData`: license, base model, library, datasets, tags,
    `model-index` (the eval results, which the Hub displays)."""
    from huggingface_hub import ModelCardData

    method = str(info.get("method", "")).lower()
    base_model = str(info["base_model"])
    datasets = [str(d) for d in (info.get("datasets") or []) if _is_hub_model(str(d))]
    eval_results = _eval_results(info.get("eval"))
    return ModelCardData(
        license=info.get("license") or "apache-2.0",
        base_model=base_model if _is_hub_model(base_model) else None,
        library_name="peft" if info.get("adapter") else "transformers",
        pipeline_tag="text-generation",
        datasets=datasets or None,
        tags=["trl", "trl-opd", "on-policy-distillation", method] + (["lora"] if info.get("adapter") else []),
        model_name=_model_name(info) if eval_results else None,
        eval_results=eval_results or None,
    )


def render_model_card(info: dict, template: str | None = None) -> str:
    """Render the model card: metadata through `huggingface_hub.ModelCardData`, the body from the template.

    Args:
        info (`dict`): `base_model`, `method` (a key of [`METHOD_PAPERS`]) and `training_data` are required;
            optional: `teacher` (required for external-teacher methods), `model_name`, `hub_model_id`, `recipe`,
            `commit` (default: this install's), `hyperparameters` (dict), `eval` (a `trl-opd eval` result dict, as
            in `eval_results.json`), `intended_use`, `license`, `framework_versions`, `adapter` (a LoRA adapter:
            `library_name: peft`), `datasets` (Hub ids for the metadata), `chat_template_kwargs`, `state` (the
            `trainer_state.json` dict), `output_dir`, `method_display`.
        template (`str`, *optional*): a template string; default: the packaged `model_card.md`. A template with its
            own `---` front matter keeps it.

    Returns:
        `str`: the card, with no `{{ placeholder }}` left.

    Raises:
        `ValueError`: a required field is missing, or the template has a placeholder with no value.
    """
    from huggingface_hub import ModelCard

    fields = card_fields(info)
    text = template if template is not None else load_template()
    missing = sorted({m.group(1) for m in _PLACEHOLDER.finditer(text)} - fields.keys())
    if missing:
        raise ValueError(f"model card template has placeholders with no value: {', '.join(missing)}")
    body = _PLACEHOLDER.sub(lambda m: fields[m.group(1)], text)
    if body.startswith("---"):
        return body
    card = ModelCard(f"---\n{card_metadata(info).to_yaml()}\n---\n\n{body}")
    return str(card)


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
