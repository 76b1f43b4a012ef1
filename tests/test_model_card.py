# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""Model cards: rendered from a finished tiny run (with the eval callback), complete, and pushed through a stand-in."""

import json
import re
from pathlib import Path

import pytest

from trl_opd.launch.hub import push_model_with_card
from trl_opd.launch.model_card import (
    METHOD_PAPERS,
    load_eval_results,
    load_template,
    render_model_card,
    write_model_card,
)


SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PLACEHOLDER = re.compile(r"\{\{\s*\w+\s*\}\}")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A 2-step tiny `transformers.Trainer` run with `LightevalCallback` (AIME 2024, 2 problems, k=2)."""
    if not (SHARED_DATA / "aime24.jsonl").is_file():
        pytest.skip(f"the shared eval data (aime24.jsonl) is not in {SHARED_DATA}")
    import torch
    from transformers import Trainer, TrainingArguments

    from trl_opd.eval.callback import LightevalCallback
    from trl_opd.testing.tiny import build_tiny_model, build_tiny_tokenizer

    torch.manual_seed(0)
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer, "student")
    rows = [tokenizer(f"{a}+{b}={a + b}")["input_ids"] for a in range(4) for b in range(2)]
    train = [{"input_ids": ids, "labels": ids} for ids in rows if len(ids) == len(rows[0])]
    output_dir = tmp_path_factory.mktemp("run") / "tiny-tropd"
    args = TrainingArguments(
        output_dir=str(output_dir), max_steps=2, save_steps=2, per_device_train_batch_size=2, learning_rate=1e-3,
        logging_steps=1, report_to="none", use_cpu=True, save_only_model=True, disable_tqdm=True,
    )  # fmt: skip
    callback = LightevalCallback(
        tasks="aime24", num_samples=2, data_dir=SHARED_DATA, max_new_tokens=8, max_samples=2, device="cpu",
        dtype="float32", batch_size=8, max_length=2048, raise_on_error=True,
    )  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=train, processing_class=tokenizer, callbacks=[callback])
    trainer.train()
    trainer.save_model()
    return trainer, output_dir


def test_card_from_a_finished_tiny_run_is_complete(finished_run):
    trainer, output_dir = finished_run
    assert any("eval/aime24/avg@k" in entry for entry in trainer.state.log_history)
    evaluation = load_eval_results(output_dir)
    assert evaluation["step"] == 2 and evaluation["final"] is True and evaluation["results"][0]["k"] == 2
    info = {
        "base_model": "trl-opd/tiny-qwen3-student",
        "teacher": "trl-opd/tiny-qwen3-teacher",
        "method": "tropd",
        "recipe": "recipes/tropd_tiny.yaml",
        "training_data": ["local arithmetic rows (8)"],
        "hyperparameters": {"learning_rate": trainer.args.learning_rate, "max_steps": trainer.args.max_steps},
        "eval": evaluation,
        "hub_model_id": "someone/tiny-tropd",
    }
    path = write_model_card(output_dir, render_model_card(info))
    card = path.read_text()
    assert path == output_dir / "README.md" and not list(output_dir.glob(".README.md*"))
    assert not PLACEHOLDER.search(card)
    for needle in [
        "base_model: trl-opd/tiny-qwen3-student",
        "| Teacher | [trl-opd/tiny-qwen3-teacher](https://huggingface.co/trl-opd/tiny-qwen3-teacher) |",
        "| Method | TrOPD (`tropd`) |",
        "arXiv:2606.01249",
        "| Recipe | `recipes/tropd_tiny.yaml` |",
        "| Training data | local arithmetic rows (8) |",
        "| `learning_rate` | `0.001` |",
        "| AIME 2024 |",
        "temperature 0.6, top-p 0.95, top-k 20, max_new_tokens 8; k = 2",
        "## Intended use and limitations",
        "eprint        = {2606.01249}",
        "@misc{vonwerra2022trl",
    ]:
        assert needle in card, needle
    commit = re.search(r"\| trl-opd commit \| `([^`]+)` \|", card).group(1)
    assert commit == "unknown" or re.fullmatch(r"[0-9a-f]{40}(-dirty)?", commit)
    # every row of the provenance table has a value
    section = card.split("## How it was made")[1].split("###")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")][1:]  # after the empty header
    assert len(rows) == 8 and all(cell.strip() for row in rows for cell in row.strip("|").split("|"))


def test_template_placeholders_are_all_filled_for_every_method():
    placeholders = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", load_template()))
    assert len(placeholders) >= 15
    assert {"base_model", "teacher", "method", "recipe", "commit", "eval_section", "citation"} <= placeholders
    for method, (title, arxiv_id) in METHOD_PAPERS.items():
        teacher = "Qwen/Qwen3-8B" if method in {"motab", "tropd", "opd", "gkd"} else None
        info = {"base_model": "Qwen/Qwen3-1.7B", "teacher": teacher, "method": method, "training_data": "x/y"}
        card = render_model_card(info)
        assert not PLACEHOLDER.search(card) and f"arXiv:{arxiv_id}" in card and title in card
        assert "Not evaluated yet" in card


def test_card_metadata_through_huggingface_hub_for_an_adapter_and_a_full_model():
    from huggingface_hub import ModelCard

    evaluation = {
        "results": [{"task": "aime24", "title": "AIME 2024", "average_at_k": 0.5, "pass_at_k": 0.75, "mean_length": 9.0,
                     "k": 4}],
        "sampling": {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "max_new_tokens": 8},
        "num_samples": 4, "data": "/local/data",
    }  # fmt: skip
    info = {"base_model": "Qwen/Qwen3-1.7B", "method": "atesd", "training_data": "open-r1/OpenR1-Math-220k",
            "datasets": ["open-r1/OpenR1-Math-220k"], "hub_model_id": "me/q-atesd", "eval": evaluation,
            "chat_template_kwargs": {"enable_thinking": True}, "adapter": True}  # fmt: skip
    card = ModelCard(render_model_card(info))
    assert card.data.library_name == "peft" and card.data.base_model == "Qwen/Qwen3-1.7B"
    assert card.data.datasets == ["open-r1/OpenR1-Math-220k"] and card.data.model_name == "me/q-atesd"
    avg, passed = card.data.eval_results
    assert (avg.dataset_type, avg.metric_type, avg.metric_value) == ("HuggingFaceH4/aime_2024", "avg@k", 50.0)
    assert (passed.metric_name, passed.metric_value) == ("pass@4", 75.0)
    assert 'model_id = "me/q-atesd"' in card.text and "enable_thinking=True" in card.text
    full = ModelCard(render_model_card({**info, "adapter": False, "eval": None}))
    assert full.data.library_name == "transformers" and full.data.eval_results is None
    assert "AutoModelForCausalLM.from_pretrained(model_id" in full.text


@pytest.mark.parametrize(
    ("info", "message"),
    [
        ({"method": "tropd", "teacher": "a/b", "training_data": "d"}, "'base_model' is required"),
        ({"base_model": "a/b", "method": "distill", "training_data": "d"}, "unknown method 'distill'"),
        ({"base_model": "a/b", "method": "tropd", "training_data": "d"}, "'teacher' is required"),
        ({"base_model": "a/b", "method": "atesd"}, "'training_data' is required"),
    ],
)
def test_incomplete_info_is_rejected(info, message):
    with pytest.raises(ValueError, match=message):
        render_model_card(info)


def test_unfilled_template_placeholder_is_rejected():
    with pytest.raises(ValueError, match="no value: nope"):
        render_model_card({"base_model": "a/b", "method": "grpo", "training_data": "d"}, template="{{ nope }}")


class FakeHfApi:
    """Records the huggingface_hub calls instead of making them."""

    def __init__(self):
        self.calls = []

    def create_repo(self, **kwargs):
        self.calls.append(("create_repo", kwargs))

    def create_branch(self, **kwargs):
        self.calls.append(("create_branch", kwargs))

    def upload_folder(self, **kwargs):
        files = sorted(p.name for p in Path(kwargs["folder_path"]).iterdir())
        self.calls.append(("upload_folder", {**kwargs, "files": files}))
        return "commit-info"


def test_push_model_with_card_uses_the_standard_hub_calls(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    api = FakeHfApi()
    card = render_model_card({"base_model": "Qwen/Qwen3-1.7B", "method": "atesd", "training_data": "x/y"})
    assert (
        push_model_with_card(tmp_path, "someone/model", revision="step-500", card_text=card, api=api) == "commit-info"
    )
    names = [name for name, _ in api.calls]
    assert names == ["create_repo", "create_branch", "upload_folder"]
    assert api.calls[0][1]["repo_id"] == "someone/model" and api.calls[0][1]["exist_ok"] is True
    assert api.calls[1][1]["branch"] == "step-500"
    upload = api.calls[2][1]
    assert upload["revision"] == "step-500" and upload["files"] == ["README.md", "config.json"]
    assert "checkpoint-*" in upload["ignore_patterns"]
    assert (tmp_path / "README.md").read_text() == card

    api = FakeHfApi()
    push_model_with_card(tmp_path, "someone/model", api=api)
    assert [name for name, _ in api.calls] == ["create_repo", "upload_folder"]
    with pytest.raises(FileNotFoundError):
        push_model_with_card(tmp_path / "empty", "someone/model", api=api)


def test_push_respects_token_private_revision_and_uploads_no_token(tmp_path, monkeypatch):
    import huggingface_hub

    made = []

    class RecordingHfApi(FakeHfApi):
        def __init__(self, token=None):
            super().__init__()
            made.append(self)
            self.token = token

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingHfApi)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    (tmp_path / "training_args.bin").write_bytes(b"pickled args")
    (tmp_path / "notes.txt").write_text("token: hf_secret123")
    push_model_with_card(tmp_path, "me/model", "exp1", "card", private=True, token="hf_secret123")
    (api,) = made
    assert api.token == "hf_secret123"
    calls = dict(api.calls)
    assert calls["create_repo"]["private"] is True and calls["create_branch"]["branch"] == "exp1"
    upload = calls["upload_folder"]
    assert upload["revision"] == "exp1"
    assert {"training_args.bin", "notes.txt"} <= set(upload["ignore_patterns"])
