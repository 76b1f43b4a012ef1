# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""Dataset columns, validation, and the privileged-context (OPSD-style) teacher prompt.

Every method reads the same columns: `prompt` (text or chat messages), `answer` (final answer) and `solution`
(reference reasoning, the privileged context). A recipe can rename them (`prompt_column`, ...).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any

from .errors import UserError
from .rewards import extract_boxed


BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
REFERENCE_HEADER = "Here is a reference solution to this problem:"
TRANSITION = (
    "After understanding the reference solution, please try to solve this problem using your own approach below, "
    "reasoning on your own to the same final answer."
)


class DatasetValidationError(UserError):
    """A dataset cannot be used as given (missing column, empty, ...). Its message is one line for the user."""


class DatasetUnavailableError(DatasetValidationError):
    """A named dataset (Hub id or folder) could not be loaded from here, e.g. offline: nothing is known of it."""


@dataclass(frozen=True)
class ColumnMap:
    """Dataset column names for the three canonical columns."""

    prompt: str = "prompt"
    answer: str = "answer"
    solution: str = "solution"

    def renames(self) -> dict[str, str]:
        return {src: dst for dst, src in vars(self).items() if src != dst}


def validate_columns(column_names: list[str], required: list[str], columns: ColumnMap, where: str = "dataset") -> None:
    """Raise a one-line [`DatasetValidationError`] naming each required column that is missing (by its dataset name)."""
    missing = [getattr(columns, name) for name in required if getattr(columns, name) not in column_names]
    if missing:
        hints = []
        for name in missing:
            close = difflib.get_close_matches(name, column_names, n=1)
            hints.append(f"'{name}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        raise DatasetValidationError(
            f"The {where} has no column {', '.join(hints)}; it has {sorted(column_names)}. "
            f"Rename it in the recipe with `prompt_column` / `answer_column` / `solution_column`."
        )


def prepare_dataset(dataset, required: list[str], columns: ColumnMap = ColumnMap(), where: str = "train dataset"):
    """Check the required columns and non-emptiness, then rename to the canonical names. Returns the dataset."""
    validate_columns(list(dataset.column_names), required, columns, where)
    if len(dataset) == 0:
        raise DatasetValidationError(f"The {where} is empty.")
    renames = {src: dst for src, dst in columns.renames().items() if src in dataset.column_names}
    for dst in renames.values():
        if dst in dataset.column_names:
            dataset = dataset.remove_columns(dst)
    return dataset.rename_columns(renames) if renames else dataset


BLANK_LINE = "\n\n"


def split_reasoning_segments(solution: str, delimiter: str = BLANK_LINE) -> list[str]:
    """Reasoning segments of a reference solution, stripped, empty ones dropped: separated by blank lines (the
    default, any whitespace between the two newlines) or by `delimiter` exactly (e.g. `"\\n"`, one step a line)."""
    parts = re.split(r"\n\s*\n", solution or "") if delimiter == BLANK_LINE else (solution or "").split(delimiter)
    return [s.strip() for s in parts if s.strip()]


def exposed_segments(alpha: float, m: int) -> int:
    """How much of a reference with `m` reasoning segments exposure `α ∈ [0, 1]` shows: `k = min(m+1, ⌊α·(m+2)⌋)`,
    where `k ≤ m` keeps the first `k` reasoning segments (then the boxed answer) and `k = m + 1` is the reference
    verbatim.

    The `m + 2` levels share `[0, 1]` equally: `α = 0` shows only the answer, every `α ≥ (m+1)/(m+2)` (`α = 1`, and a
    Beta sample clipped just below 1) the whole reference, and a uniform `α` gives every level the same chance.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return min(m + 1, int(alpha * (m + 2) + 1e-9))


def truncate_reference(solution: str, alpha: float, delimiter: str = BLANK_LINE) -> tuple[str, int, int] | None:
    """The reference as exposure `α` shows it ([`exposed_segments`]): its first `k` reasoning segments followed by
    `The final answer is \\boxed{X}.`, or at the top level the reference verbatim (full exposure, `kept = m`).

    Returns `(text, kept, m)`, or `None` when the reference has no `\\boxed{}` answer (the row cannot be used).
    The segment that holds the box is not counted among the reasoning segments.
    """
    answer = extract_boxed(solution or "")
    if answer is None:
        return None
    segments = split_reasoning_segments(solution, delimiter)
    reasoning = [s for s in segments if "\\boxed" not in s and "\\fbox" not in s]
    kept = exposed_segments(alpha, len(reasoning))
    if kept > len(reasoning):
        return solution.strip(), len(reasoning), len(reasoning)
    parts = reasoning[:kept] + [f"The final answer is \\boxed{{{answer}}}."]
    joiner = BLANK_LINE if delimiter == BLANK_LINE else delimiter
    return joiner.join(parts), kept, len(reasoning)


def prompt_text(prompt: Any) -> str:
    """The problem text of a prompt: the string, or the last user message's content."""
    if isinstance(prompt, str):
        return prompt
    users = [m for m in prompt if m.get("role") == "user"]
    return users[-1]["content"] if users else ""


def privileged_prompt(prompt: Any, reference: str, instruction: str = BOXED_INSTRUCTION) -> Any:
    """The teacher's view of a prompt: problem, reference, transition sentence, then the student's instruction.

    The instruction to box the final answer closes both prompts: if the student's prompt ends with `instruction`,
    it is moved after the reference; otherwise it is appended. Chat prompts keep their other messages.
    """
    problem = prompt_text(prompt).rstrip()
    if instruction and problem.endswith(instruction):
        problem = problem[: -len(instruction)].rstrip()
    content = f"{problem}\n\n{REFERENCE_HEADER}\n{reference}\n\n{TRANSITION}"
    if instruction:
        content += f"\n\n{instruction}"
    if isinstance(prompt, str):
        return content
    last_user = max(i for i, m in enumerate(prompt) if m.get("role") == "user")
    return [dict(m, content=content) if i == last_user else dict(m) for i, m in enumerate(prompt)]
