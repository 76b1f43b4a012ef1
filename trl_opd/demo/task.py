# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""A synthetic multi-step arithmetic reasoning task with reference solutions and boxed answers.

A problem chains `n_ops` additions/subtractions (`Compute 7+5-3.`); its reference solution writes one step per
reasoning segment (`7+5=12`, blank line, `12-3=9`) and ends with `\\boxed{9}`, so every part of the pipeline (segments,
privileged context, boxed-answer reward) is exercised.
"""

from __future__ import annotations

import random

from datasets import Dataset


INSTRUCTION = "Put your final answer within \\boxed{}."


def make_problem(rng: random.Random, n_ops: int = 2, max_value: int = 20) -> dict:
    """One row: `prompt` (chat messages), `answer`, `solution`, `problem`."""
    value = rng.randint(0, max_value)
    expression, steps = str(value), []
    for _ in range(n_ops):
        operand = rng.randint(0, max_value)
        op = "+" if value < operand or rng.random() < 0.5 else "-"
        new_value = value + operand if op == "+" else value - operand
        steps.append(f"{value}{op}{operand}={new_value}")
        expression += f"{op}{operand}"
        value = new_value
    problem = f"Compute {expression}."
    solution = "\n\n".join(steps + [f"The answer is \\boxed{{{value}}}."])
    return {
        "prompt": [{"role": "user", "content": f"{problem} {INSTRUCTION}"}],
        "answer": str(value),
        "solution": solution,
        "problem": problem,
    }


def make_dataset(n: int, seed: int = 0, n_ops: int = 2) -> Dataset:
    """`n` problems from a seeded generator (disjoint seeds give practically disjoint splits)."""
    rng = random.Random(seed)
    return Dataset.from_list([make_problem(rng, n_ops) for _ in range(n)])
