# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""The verifiable math reward: 1 if a completion's final `\\boxed{}` answer matches the reference, else 0.

One implementation, used by the trainers (as a TRL reward function), the demo's held-out scoring and the eval
helpers. Answers are compared with math-verify (symbolic equality), after taking the last `\\boxed{...}` of the
completion's final answer (the text after `</think>`; a completion cut off inside `<think>` has no answer).
"""

from __future__ import annotations

import re
import threading
from typing import Any

from math_verify import parse, verify


THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
INTEGER = re.compile(r"[+-]?\d+")


def final_answer_text(completion: str) -> str | None:
    """The part of a completion that holds its final answer: after the last `</think>`; `None` if cut off in `<think>`."""
    if THINK_CLOSE in completion:
        return completion.rsplit(THINK_CLOSE, 1)[1]
    if THINK_OPEN in completion:
        return None
    return completion


def extract_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`) in `text`, braces balanced; `None` when there is none."""
    best = None
    for marker in ("\\boxed{", "\\fbox{"):
        start = text.rfind(marker)
        if start != -1 and (best is None or start > best[0]):
            best = (start, marker)
    if best is None:
        return None
    i = best[0] + len(best[1])
    depth, begin = 1, i
    while i < len(text):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[begin:i].strip()
        i += 1
    return None


def extract_final_answer(completion: str) -> str | None:
    """The boxed final answer of a completion, or `None` (no box, or cut off inside `<think>`)."""
    text = final_answer_text(completion)
    return None if text is None else extract_boxed(text)


def answers_match(predicted: str | None, reference: str) -> bool:
    """Whether a predicted answer string equals the reference with math-verify (`025` = `25`, `26!·2^{25}` = …)."""
    if predicted is None or reference is None or str(reference).strip() == "":
        return False
    predicted, reference = predicted.strip(), str(reference).strip()
    if predicted == reference:
        return True
    if INTEGER.fullmatch(predicted) and INTEGER.fullmatch(reference):  # exact, and ~1000x faster than parsing
        return int(predicted) == int(reference)
    # math-verify's time-outs use SIGALRM, which only the main thread may set
    timeout = 3 if threading.current_thread() is threading.main_thread() else None
    try:
        gold = parse("\\boxed{" + str(reference) + "}", parsing_timeout=timeout)
        pred = parse("\\boxed{" + predicted + "}", parsing_timeout=timeout)
        return bool(gold) and bool(pred) and verify(gold, pred, timeout_seconds=timeout)
    except Exception:  # math-verify raises on malformed LaTeX; a malformed answer is a wrong answer
        return False


def score_completion(completion: str, reference: str) -> float:
    """`1.0` if the completion's boxed final answer matches `reference`, else `0.0`."""
    return float(answers_match(extract_final_answer(completion), reference))


def completion_text(completion: Any) -> str:
    """Text of a completion as TRL passes it: a string, or chat messages `[{"role": "assistant", "content": ...}]`."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return "".join(m.get("content", "") if isinstance(m, dict) else str(m) for m in completion)
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    return str(completion)


def math_accuracy_reward(completions: list, answer: list[str], **kwargs) -> list[float]:
    """TRL reward function (`f(prompts, completions, ..., **columns)`) scoring the dataset's `answer` column."""
    return [score_completion(completion_text(c), a) for c, a in zip(completions, answer, strict=True)]
