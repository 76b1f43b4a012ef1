# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""From recipe to Hub through the CLI: `train --help`, a dry run naming a missing extra, LoRA train → merged model →
`trl-opd eval` of the adapter folder on the local AIME file → `trl-opd card` → `trl-opd push` (a recording `HfApi`).

The wheel installing into a fresh venv is checked in CI (`.ci/run` → `make package-check`), not here.
"""

from __future__ import annotations

import fnmatch
import json
import sys
from pathlib import Path

import pytest
import yaml
from conftest import tiny_recipe_values

from trl_opd.cli import main


SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_aime = pytest.mark.skipif(
    not (SHARED_DATA / "aime24.jsonl").is_file(), reason=f"aime24.jsonl is not in {SHARED_DATA}"
)


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def recipe(tmp_path, tiny_pair_dir, arithmetic_jsonl):
    def make(**overrides) -> Path:
        values = tiny_recipe_values(
            tiny_pair_dir,
            arithmetic_jsonl,
            tmp_path / "out",
            **{"max_steps": 2, "logging_steps": 1, "chat_template_kwargs": {"enable_thinking": True}, **overrides},
        )
        path = tmp_path / "recipe.yaml"
        path.write_text(yaml.safe_dump(values))
        return path

    return make


def test_train_help_lists_the_method_fields_first(capsys):
    code, out, err = run_cli(capsys, "train", "--help")
    assert code == 0 and not err
    assert out.startswith("usage: trl-opd train") and "method opd" in out and "--help-all" in out
    assert len(out.splitlines()) < 120, "the default help must not be TRL's whole list"

    code, out, _ = run_cli(capsys, "train", "--method", "motab", "-h")
    assert code == 0 and "MOTAB fields (MOTABConfig)" in out and "--boundary_quantile" in out
    own = out.index("--boundary_quantile")
    assert own < out.index("--dataset_name") and "--per_device_train_batch_size" not in out

    code, out, _ = run_cli(capsys, "train", "--method", "motab", "--help-all")
    assert code == 0 and "--per_device_train_batch_size" in out and "--boundary_quantile" in out


def test_dry_run_names_the_missing_extra_and_a_real_run_stops(recipe, capsys, tmp_path, monkeypatch):
    path = recipe(use_vllm=True, report_to="trackio")
    code, out, _ = run_cli(capsys, "train", "--config", path, "--dry-run")
    assert code == 0, out
    needs = next(line for line in out.splitlines() if line.startswith("needs:"))
    assert "vllm (use_vllm: true) missing: pip install 'trl-opd[vllm]'" in needs
    assert "trackio (report_to: trackio) missing: pip install 'trl-opd[trackio]'" in needs
    assert "card: ok" in out

    code, out, err = run_cli(capsys, "train", "--config", path)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("error: use_vllm: true needs the `vllm` package") and "trl-opd[vllm]" in err
    assert not (tmp_path / "out").exists()

    code, out, _ = run_cli(capsys, "train", "--config", recipe(), "--dry-run")
    assert code == 0 and "needs:" not in out
    code, out, _ = run_cli(capsys, "train", "--config", recipe(eval_tasks="aime24"), "--dry-run")
    assert code == 0 and "needs: lighteval (eval_tasks) ok" in out
    # a DeepSpeed accelerate config is seen through the environment `accelerate launch` sets; without deepspeed,
    # transformers' TrainingArguments cannot even be built, so that is an error in a dry run too
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # as on a machine without it (make test installs it)
    code, out, err = run_cli(capsys, "train", "--config", recipe(), "--dry-run")
    assert code == 2 and err.count("\n") == 1 and "pip install 'trl-opd[deepspeed]'" in err


def test_a_trl_dataset_mixture_trains_from_a_recipe(recipe, capsys, arithmetic_jsonl):
    """`ScriptArguments` builds on TRL's `ScriptArguments` and `DatasetMixtureConfig`: `datasets:` works."""
    mixture = [{"path": "json", "data_files": str(arithmetic_jsonl)}] * 2
    code, out, err = run_cli(capsys, "train", "--config", recipe(dataset_name=None, datasets=mixture), "--dry-run")
    assert code == 0, err
    assert f"dataset={arithmetic_jsonl}, {arithmetic_jsonl} (32 rows" in out
    code, _, err = run_cli(capsys, "train", "--config", recipe(dataset_streaming=True), "--dry-run")
    assert code == 2 and "streaming datasets are not supported" in err


def test_eval_tasks_in_a_recipe_adds_the_eval_callback(recipe, tmp_path):
    from trl_opd.eval.callback import LightevalCallback
    from trl_opd.launch.build import build_trainer
    from trl_opd.launch.recipe import parse_recipe

    script_args, config, model_args = parse_recipe(str(recipe(eval_tasks="aime24,hmmt25", eval_num_samples=4)))
    trainer = build_trainer(script_args, config, model_args)
    (callback,) = [c for c in trainer.callback_handler.callbacks if isinstance(c, LightevalCallback)]
    assert callback.options["tasks"] == "aime24,hmmt25" and callback.options["num_samples"] == 4
    assert trainer._paper["id"] == "2306.13649" and type(trainer)._name == "OPD"
    # TRL's per-save card is ours
    trainer.create_model_card(model_name="x")
    card = (tmp_path / "out" / "README.md").read_text()
    assert "trl-opd" in card and "| Method | OPD (`opd`) |" in card


class RecordingHfApi:
    """A stand-in for `huggingface_hub.HfApi`: records the calls and the files `upload_folder` would send."""

    made: list = []

    def __init__(self, token=None, **_):
        self.token, self.calls = token, []
        RecordingHfApi.made.append(self)

    def create_repo(self, **kwargs):
        self.calls.append(("create_repo", kwargs))

    def create_branch(self, **kwargs):
        self.calls.append(("create_branch", kwargs))

    def upload_folder(self, **kwargs):
        root = Path(kwargs["folder_path"])
        files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
        ignored = kwargs.get("ignore_patterns") or []
        sent = [f for f in files if not any(fnmatch.fnmatch(f, pattern) for pattern in ignored)]
        self.calls.append(("upload_folder", {**kwargs, "sent": sent}))
        return "commit"


@needs_aime
def test_lora_train_merge_eval_card_push(recipe, capsys, tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub import ModelCard

    out = tmp_path / "out"
    path = recipe(use_peft=True, lora_r=4, lora_alpha=8, lora_target_modules=["q_proj", "v_proj"], merge_adapter=True)
    code, stdout, err = run_cli(capsys, "train", "--config", path)
    assert code == 0, err
    # the adapter, the merged model beside it, and the run's records
    assert (out / "adapter_config.json").is_file() and not (out / "config.json").is_file()
    assert (out / "merged" / "config.json").is_file() and (out / "merged" / "tokenizer_config.json").is_file()
    assert (out / "merged" / "model.safetensors").is_file()
    assert json.loads((out / "train_results.json").read_text())["train_loss"] is not None
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and any("loss" in entry for entry in state["log_history"])
    assert (out / "training_curves.png").stat().st_size > 1000
    saved = yaml.safe_load((out / "trl_opd_recipe.yaml").read_text())
    assert saved["merge_adapter"] is True and saved["recipe_path"] == str(path) and "hub_token" not in saved
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "peft" and "lora" in card.data.tags
    assert "AutoPeftModelForCausalLM" in card.text and "enable_thinking=True" in card.text
    assert "Not evaluated yet" in card.text and f"trl-opd eval --model {out}" in card.text

    # eval of the adapter folder: merged into a temporary folder, results recorded in the run folder
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRL_OPD_EVAL_PROGRESS_S": "1"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    code, stdout, err = run_cli(
        capsys, "eval", "--model", out, "--tasks", "aime24", "--data-dir", SHARED_DATA, "--num-samples", "2",
        "--max-new-tokens", "8", "--max-samples", "2", "--device", "cpu", "--dtype", "float32", "--batch-size", "4",
        "--max-length", "2048",
    )  # fmt: skip
    assert code == 0, err
    assert "LoRA adapter: merging it" in stdout and f"lighteval log: {out}/lighteval/" in stdout
    assert "progress: 2/2 problems" in stdout or "progress:" not in stdout  # a fast run may end before a poll
    result = json.loads((out / "eval_results.json").read_text())
    assert result["results"][0]["task"] == "aime24" and result["results"][0]["k"] == 2
    assert not list((out / "lighteval").glob("*/merged-*")), "the temporary merge is removed"

    # the card, re-rendered from the folder, now carries the eval (model-index)
    code, stdout, _ = run_cli(capsys, "card", out, "--hub-model-id", "someone/tiny-opd-lora")
    assert code == 0 and stdout.startswith("card: ")
    card = ModelCard.load(out / "README.md")
    (first, *_) = card.data.eval_results
    assert card.data.model_name == "someone/tiny-opd-lora"
    assert first.dataset_name == "AIME 2024" and first.metric_type == "avg@k" and first.metric_name == "Average@2"
    assert "someone/tiny-opd-lora" in card.text and "| AIME 2024 |" in card.text and "2 optimizer steps" in card.text
    text = card.text
    assert "SchedulerType" not in text and "num_train_epochs" not in text and "vllm_server_port" not in text
    assert "| `lr_scheduler_type` | `linear` |" in text and "| `max_steps` | `2` |" in text
    assert "| `lora_r` | `4` |" in text and '| `chat_template_kwargs` | `{"enable_thinking": true}` |' in text

    # push: the card goes with the adapter; no token-bearing file, no training_args.bin, no merged copy
    RecordingHfApi.made.clear()
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingHfApi)
    monkeypatch.setenv("HF_TOKEN", "hf_fromenv")
    (out / "notes.txt").write_text("token hf_fromenv")
    code, stdout, err = run_cli(capsys, "push", out, "--hub-model-id", "someone/tiny-opd-lora", "--revision", "v1",
                                "--private")  # fmt: skip
    assert code == 0, err
    (api,) = RecordingHfApi.made
    assert api.token == "hf_fromenv"
    calls = dict(api.calls)
    assert calls["create_repo"]["private"] is True and calls["create_branch"]["branch"] == "v1"
    sent = calls["upload_folder"]["sent"]
    assert {"README.md", "adapter_config.json", "adapter_model.safetensors", "eval_results.json"} <= set(sent)
    assert {"trainer_state.json", "train_results.json", "training_curves.png", "trl_opd_recipe.yaml"} <= set(sent)
    assert not [f for f in sent if f.startswith(("merged/", "lighteval", "checkpoint-")) or f.endswith(".bin")]
    assert "notes.txt" not in sent
    pushed = ModelCard.load(out / "README.md")
    assert pushed.data.library_name == "peft" and pushed.data.eval_results

    # the merged model is a plain transformers model: it pushes on its own, with a full-model card
    RecordingHfApi.made.clear()
    code, _, err = run_cli(capsys, "push", out / "merged", "--hub-model-id", "someone/tiny-opd")
    assert code == 0, err
    merged_card = ModelCard.load(out / "merged" / "README.md")
    assert merged_card.data.library_name == "transformers" and "2 optimizer steps" in merged_card.text
    assert "model.safetensors" in dict(RecordingHfApi.made[0].calls)["upload_folder"]["sent"]
    code, _, err = run_cli(capsys, "card", tmp_path)
    assert code == 2 and err.startswith("error:") and "no trl_opd_recipe.yaml" in err


def test_eval_progress_and_error_lines_are_read_from_the_lighteval_log(tmp_path):
    from trl_opd.eval.process import last_error_line, progress_line, read_progress

    log = tmp_path / "lighteval.log"
    log.write_text("INFO: Cache: Starting to process 30/30 samples (not found in cache) for tasks opd_aime24|0\n")
    assert read_progress(log) == (0, 30)
    log.write_text(log.read_text() + "Greedy generation:  50%|#####     | 4/8 [01:00<01:00,  1.12s/it]\r")
    assert read_progress(log) == (15, 30)
    assert progress_line(15, 30, 600) == "progress: 15/30 problems (50%), elapsed 0:10:00, ETA 0:10:00"
    assert read_progress(tmp_path / "missing.log") is None
    log.write_text("Traceback (most recent call last):\n  File 'x'\nValueError: a message that\n  goes on here\n")
    assert last_error_line(log) == "ValueError: a message that goes on here"
    log.write_text("[x] [\x1b[31m ERROR\x1b[0m]: RuntimeError: out of memory (x.py:1)\x1b[0m\n")
    assert last_error_line(log) == "RuntimeError: out of memory (x.py:1)"


def test_provenance_from_the_install_record(monkeypatch):
    """`pip install .` from a clone records `dir_info` in `direct_url.json`: the commit is that clone's HEAD."""
    from importlib import metadata

    from trl_opd.launch import provenance

    clone = Path(__file__).resolve().parents[1]
    head = provenance.checkout_commit(clone)
    if head is None:
        pytest.skip("this checkout's HEAD cannot be read")

    class Record:
        def __init__(self, payload):
            self.payload = payload

        def read_text(self, name):
            return json.dumps(self.payload) if name == "direct_url.json" else None

    monkeypatch.setattr(metadata, "distribution", lambda name: Record({"url": clone.as_uri(), "dir_info": {}}))
    assert provenance.installed_commit() == head
    sha = "a" * 40
    monkeypatch.setattr(
        metadata, "distribution", lambda name: Record({"url": "https://x", "vcs_info": {"commit_id": sha}})
    )
    assert provenance.installed_commit() == sha
