# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""A thin Hub upload: a saved model folder and its card, through huggingface_hub's standard path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..checkpoints import STATE_FILE
from .model_card import write_model_card


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
    STATE_FILE,  # the method state of a checkpoint (MOTAB boundary, ATESD controller)
    "merged/**",  # the merged copy of an adapter is pushed on its own (`trl-opd push OUT/merged`)
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
    if not (folder / "config.json").is_file() and not (folder / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a saved model folder (no config.json or adapter_config.json)")
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
