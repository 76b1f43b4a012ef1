# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""Method state in checkpoints, the newest complete checkpoint, and a clean stop on SIGTERM.

A trainer with method state (MOTAB's boundary, ATESD's controller, an EMA teacher) writes `trl_opd_state.pt` into the
checkpoint folder *before* the Trainer writes `trainer_state.json`, which the Trainer writes last: a checkpoint with
`trainer_state.json` therefore holds the method state too, or it is incomplete. The file holds only tensors and plain
containers (loaded with `weights_only=True`), the method's name and the method's configuration, so that a checkpoint of
another method or another configuration is refused on resume.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import signal
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback

from .errors import CheckpointError


logger = logging.getLogger(__name__)

STATE_FILE = "trl_opd_state.pt"
TRAINER_STATE_FILE = "trainer_state.json"  # transformers writes it last: its presence marks a finished checkpoint
STATE_FORMAT = 1
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
#: Config fields of our config classes that do not change the method's trajectory (paths, loading, resume policy,
#: start-of-training checks).
NEUTRAL_FIELDS = frozenset(
    {
        "resume_ignore_method_state",
        "teacher_model_name_or_path",
        "teacher_model_revision",
        "teacher_model_init_kwargs",
        "teacher_quantization",
        "model_init_kwargs",
        "self_teacher_check",
        "self_teacher_check_rows",
    }
)
IGNORE_HINT = "set `resume_ignore_method_state: true` to resume with a fresh method state"


# ------------------------------------------------------------------------------------------------ plain state
def to_plain(value: Any, where: str = "state") -> Any:
    """`value` as tensors and plain containers only (what `torch.load(weights_only=True)` reads back).

    numpy arrays become tensors, numpy scalars Python numbers, dataclasses dicts; anything else is a bug (`TypeError`).
    """
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {key: to_plain(item, f"{where}[{key!r}]") for key, item in value.items()}
    if isinstance(value, tuple):
        return tuple(to_plain(item, f"{where}[{i}]") for i, item in enumerate(value))
    if isinstance(value, (list, set, frozenset)) or type(value).__name__ == "deque":
        return [to_plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
    raise TypeError(f"{where} holds a {type(value).__name__}: method state must be tensors and plain containers")


def method_config(args: Any) -> dict[str, str]:
    """The method-relevant configuration: the fields our own config classes declare (not TRL's or transformers'),
    as `repr` strings, minus [`NEUTRAL_FIELDS`]."""
    names: dict[str, None] = {}
    for cls in reversed(type(args).__mro__):
        if cls.__module__.split(".")[0] == "trl_opd" and dataclasses.is_dataclass(cls):
            for name in cls.__dict__.get("__annotations__", {}):
                names[name] = None
    return {name: repr(getattr(args, name)) for name in names if name not in NEUTRAL_FIELDS and hasattr(args, name)}


def save_method_state(folder: str | os.PathLike, method: str, config: dict[str, str], state: dict[str, Any]) -> Path:
    """Write `trl_opd_state.pt` into `folder` atomically (temporary file, fsync, rename)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    payload = {"format": STATE_FORMAT, "method": method, "config": dict(config), "state": to_plain(state)}
    path = folder / STATE_FILE
    tmp = folder / (STATE_FILE + ".tmp")
    with open(tmp, "wb") as handle:
        torch.save(payload, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def load_method_state(
    folder: str | os.PathLike, method: str, config: dict[str, str], *, required: bool, ignore: bool = False
) -> dict[str, Any] | None:
    """The method state saved in checkpoint `folder`, checked against `method` and `config`.

    Raises [`CheckpointError`] (one line) when the file is missing but `required`, unreadable (truncated, or not
    tensors and plain containers: nothing in it is executed), or saved by another method or another configuration.
    With `ignore`, the method state is not loaded at all (a warning says so) and `None` is returned.
    """
    path = Path(folder) / STATE_FILE
    if ignore:
        logger.warning("resume_ignore_method_state: the method state in %s is not loaded; it starts afresh", folder)
        return None
    if not path.is_file():
        if required:
            raise CheckpointError(
                f"Checkpoint {folder} has no {STATE_FILE}: it is incomplete (killed while saving?) or not from this "
                f"method; resume from another checkpoint, or {IGNORE_HINT}."
            )
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, foreign pickle (refused by weights_only, never run), I/O error
        reason = " ".join(str(err).split())[:160] or type(err).__name__
        raise CheckpointError(
            f"Cannot read {path}: it is truncated or not a trl-opd state file ({reason}); {IGNORE_HINT}."
        ) from err
    if not isinstance(payload, dict):
        raise CheckpointError(f"Cannot read {path}: not a trl-opd state file; {IGNORE_HINT}.")
    if "format" not in payload:  # written before the file recorded its method: the bare state
        logger.warning("%s predates method checks: its method and configuration are not verified", path)
        return payload
    saved_method, saved_config = payload.get("method"), payload.get("config") or {}
    if saved_method != method:
        raise CheckpointError(
            f"Checkpoint {folder} was saved by method {saved_method!r}, not {method!r}: it cannot be resumed by this "
            f"run; {IGNORE_HINT} (and train {method} from its weights)."
        )
    differing = [
        f"{name}={saved_config.get(name, '<unset>')} (now {config.get(name, '<unset>')})"
        for name in sorted(set(saved_config) | set(config))
        if saved_config.get(name) != config.get(name)
    ]
    if differing:
        raise CheckpointError(
            f"Checkpoint {folder} was saved with another {method} configuration: {', '.join(differing)}; "
            f"{IGNORE_HINT}."
        )
    return payload.get("state") or {}


# ------------------------------------------------------------------------------------------------ finding checkpoints
def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """`checkpoint-N` folders of `output_dir`, newest (largest N) first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _CHECKPOINT_RE.match(p.name))]
    return [p for _, p in sorted(found, key=lambda item: item[0], reverse=True)]


def is_complete(folder: str | os.PathLike, needs_state: bool) -> bool:
    folder = Path(folder)
    if not (folder / TRAINER_STATE_FILE).is_file():
        return False
    return not needs_state or (folder / STATE_FILE).is_file()


def newest_complete_checkpoint(output_dir: str | os.PathLike, needs_state: bool) -> Path | None:
    """The newest complete checkpoint of `output_dir` (a warning names each newer incomplete one skipped)."""
    for folder in list_checkpoints(output_dir):
        if is_complete(folder, needs_state):
            return folder
        logger.warning("Skipping the incomplete checkpoint %s (killed while saving?)", folder)
    return None


def resolve_resume(value: Any, output_dir: str | os.PathLike, needs_state: bool) -> str | None:
    """`resume_from_checkpoint` as a checkpoint path or `None`.

    `true` (bool, or the text `true` from a command line) means the newest complete checkpoint of `output_dir`; a path
    must be a complete checkpoint. Raises [`CheckpointError`] otherwise.
    """
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "", "none", "no", "yes", "1", "0"):
        value = value.strip().lower() in ("true", "yes", "1")
    if value is None or value is False:
        return None
    if value is True:
        folder = newest_complete_checkpoint(output_dir, needs_state)
        if folder is None:
            raise CheckpointError(f"resume_from_checkpoint is true, but {output_dir} holds no complete checkpoint.")
        return str(folder)
    folder = Path(str(value))
    if not folder.is_dir():
        raise CheckpointError(f"resume_from_checkpoint: no such checkpoint directory: {folder}")
    if not (folder / TRAINER_STATE_FILE).is_file():
        raise CheckpointError(
            f"resume_from_checkpoint: {folder} is incomplete (no {TRAINER_STATE_FILE}: killed while saving?)."
        )
    return str(folder)


# ------------------------------------------------------------------------------------------------ SIGTERM
class PreemptionCallback(TrainerCallback):
    """Save a checkpoint at the next step boundary and stop, once [`preemption_guard`]'s SIGTERM handler has fired."""

    def __init__(self):
        self.requested = False
        self.checkpoint: str | None = None

    def on_step_end(self, args, state, control, **kwargs):
        if self.requested:
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_save(self, args, state, control, **kwargs):
        if self.requested and self.checkpoint is None:
            self.checkpoint = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        return control


@contextmanager
def preemption_guard(trainer) -> Iterator[PreemptionCallback]:
    """While the block runs (`trainer.train()`), SIGTERM asks for a checkpoint at the next step boundary and a clean
    stop instead of killing the process. The previous handler is restored afterwards."""
    callback = PreemptionCallback()
    trainer.add_callback(callback)
    previous = None
    if threading.current_thread() is threading.main_thread():

        def handler(signum, frame):
            callback.requested = True
            logger.warning("SIGTERM received: saving a checkpoint at the end of this step, then stopping")

        previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield callback
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        trainer.remove_callback(callback)
