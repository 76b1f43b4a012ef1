# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""LoRA adapter folders: recognise one, read its base model, and save the base model with the adapter merged in.

A merged folder is a plain transformers model (`config.json` and weights): what vLLM, lighteval and `trl-opd eval`
load. The merge reloads the saved adapter onto a fresh copy of the base model on the CPU, so it is the same on one
process, DDP or ZeRO-3 (whose in-memory parameters are sharded).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import UserError


ADAPTER_CONFIG = "adapter_config.json"


def is_adapter_folder(path: str | os.PathLike) -> bool:
    """A PEFT adapter folder: `adapter_config.json` and no `config.json` of a full model."""
    path = Path(path)
    return (path / ADAPTER_CONFIG).is_file() and not (path / "config.json").is_file()


def adapter_base_model(path: str | os.PathLike) -> str:
    """The base model an adapter was trained on (`base_model_name_or_path` of `adapter_config.json`)."""
    config_file = Path(path) / ADAPTER_CONFIG
    try:
        base = json.loads(config_file.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {config_file}: {err}") from err
    if not base:
        raise UserError(f"{config_file} names no base model (base_model_name_or_path)")
    return str(base)


def merge_adapter(
    adapter_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    base_model: str | None = None,
    dtype: str | None = None,
    revision: str | None = None,
) -> Path:
    """Load `base_model` (default: the adapter's own), apply the adapter, merge it, and save the result to `output_dir`.

    The tokenizer (the adapter folder's, else the base model's) is saved beside the weights. Returns `output_dir`.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter_dir, output_dir = Path(adapter_dir), Path(output_dir)
    base_model = base_model or adapter_base_model(adapter_dir)
    torch_dtype = getattr(torch, dtype) if dtype and dtype != "auto" else "auto"
    base = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch_dtype, revision=revision)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    output_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(output_dir))
    tokenizer_source = adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else base_model
    AutoTokenizer.from_pretrained(str(tokenizer_source)).save_pretrained(str(output_dir))
    return output_dir


__all__ = ["adapter_base_model", "is_adapter_folder", "merge_adapter"]
