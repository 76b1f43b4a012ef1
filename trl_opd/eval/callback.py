# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""Optional training-time evaluation: `trl-opd eval` on every saved checkpoint and on the final model.

```python
from trl_opd.eval.callback import LightevalCallback

trainer.add_callback(LightevalCallback(tasks="aime24,aime25,hmmt25", num_samples=12, data_dir=None))
```

Not imported by any default code path: importing it needs only transformers, and lighteval runs in a subprocess.
Evaluation is synchronous (training waits), on the main process only; with the vLLM backend leave GPU memory for it
(`gpu_memory_utilization=...`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from trl_opd.eval.process import EvalError
from trl_opd.eval.runner import RESULTS_FILE, evaluate_model


logger = logging.getLogger(__name__)

HISTORY_FILE = "eval_history.json"


def log_entry(result: dict, step: int) -> dict[str, float]:
    """The flat `state.log_history` record of one eval: `eval/<task>/avg@k`, `.../pass@k`, `.../mean_length`."""
    entry: dict[str, Any] = {"step": step}
    for row in result["results"]:
        prefix = f"eval/{row['task']}"
        entry[f"{prefix}/avg@k"] = row["average_at_k"]
        entry[f"{prefix}/pass@k"] = row["pass_at_k"]
        entry[f"{prefix}/mean_length"] = row["mean_length"]
    entry["eval/num_samples"] = result["num_samples"]
    return entry


class LightevalCallback(TrainerCallback):
    """Evaluate each saved checkpoint (`on_save`) and the final model (`on_train_end`) with `trl-opd eval`.

    Results go to `state.log_history` (keys `eval/<task>/avg@k`, `pass@k`, `mean_length`), to
    `<output_dir>/eval/<checkpoint>/eval_results.json` (plus lighteval's details), to
    `<output_dir>/eval_history.json` (all evals) and to `<output_dir>/eval_results.json` (the latest, which
    [`trl_opd.launch.model_card.load_eval_results`] reads for the card). A failed eval is logged and training goes on,
    unless `raise_on_error=True`.

    Args:
        tasks (`str` or `list[str]`, *optional*, defaults to all three): `aime24`, `aime25`, `hmmt25`.
        num_samples (`int`, *optional*, defaults to `12`): k samples per problem.
        data_dir (`str`, *optional*): folder of local JSONL files; default: the Hub datasets.
        eval_on_save (`bool`, *optional*, defaults to `True`): evaluate every checkpoint.
        eval_on_train_end (`bool`, *optional*, defaults to `True`): evaluate the final model (reusing the last
            checkpoint's result when it was saved at the final step).
        raise_on_error (`bool`, *optional*, defaults to `False`): stop training when an eval fails.
        **eval_options: any other `trl-opd eval` option with underscores (`max_new_tokens`, `backend`, `device`,
            `max_samples`, `batch_size`, `max_length`, `dtype`, ...).
    """

    def __init__(
        self,
        tasks: str | list[str] = "aime24,aime25,hmmt25",
        num_samples: int = 12,
        data_dir: str | os.PathLike | None = None,
        eval_on_save: bool = True,
        eval_on_train_end: bool = True,
        raise_on_error: bool = False,
        **eval_options,
    ):
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.options = {
            "tasks": tasks if isinstance(tasks, str) else ",".join(tasks),
            "num_samples": num_samples,
            "data_dir": str(data_dir) if data_dir is not None else None,
            **eval_options,
        }
        self.eval_on_save = eval_on_save
        self.eval_on_train_end = eval_on_train_end
        self.raise_on_error = raise_on_error
        self.history: list[dict] = []
        self.latest: dict | None = None

    def evaluate(self, model_dir: str | os.PathLike, output_dir: str | os.PathLike, step: int, state=None):
        """Evaluate a saved model folder; record and return the result (`None` when it failed)."""
        try:
            result = evaluate_model(str(model_dir), output_dir=str(output_dir), **self.options)
        except EvalError as exc:
            if self.raise_on_error:
                raise
            logger.warning("LightevalCallback: evaluation of %s failed: %s", model_dir, exc)
            return None
        result["step"] = step
        result["checkpoint"] = Path(model_dir).name
        self.history.append(result)
        self.latest = result
        if state is not None:
            state.log_history.append(log_entry(result, step))
        return result

    def _write(self, args) -> None:
        root = Path(args.output_dir)
        root.mkdir(parents=True, exist_ok=True)
        for name, payload in ((HISTORY_FILE, self.history), (RESULTS_FILE, self.latest)):
            tmp = root / f".{name}.{os.getpid()}.tmp"
            tmp.write_text(json.dumps(payload, indent=2) + "\n")
            os.replace(tmp, root / name)

    def on_save(self, args, state, control, **kwargs):
        if not self.eval_on_save or not state.is_world_process_zero:
            return
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not (checkpoint / "config.json").is_file() and not (checkpoint / "adapter_config.json").is_file():
            logger.warning("LightevalCallback: no saved model at %s; skipping its evaluation", checkpoint)
            return
        if self.evaluate(checkpoint, Path(args.output_dir) / "eval" / checkpoint.name, state.global_step, state):
            self._write(args)

    def on_train_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if not self.eval_on_train_end or not state.is_world_process_zero:
            return
        if self.latest is not None and self.latest.get("step") == state.global_step:
            self.latest = {**self.latest, "final": True}
            self._write(args)
            return
        if model is None:
            logger.warning("LightevalCallback: no model passed to on_train_end; final model not evaluated")
            return
        tokenizer = processing_class if processing_class is not None else kwargs.get("tokenizer")
        final_dir = Path(args.output_dir) / "eval" / "final-model"
        model.save_pretrained(final_dir)
        if tokenizer is not None:
            tokenizer.save_pretrained(final_dir)
        try:
            result = self.evaluate(final_dir, Path(args.output_dir) / "eval" / "final", state.global_step, state)
        finally:
            shutil.rmtree(final_dir, ignore_errors=True)
        if result is not None:
            result["final"] = True
            self._write(args)
