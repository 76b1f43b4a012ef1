# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""The lab's synthetic reasoning tasks: step-by-step arithmetic chains with reference solutions and boxed answers.

A chain problem (`Compute 7+5-3.`) has a reference solution with one step per segment (`7+5=12`, delimiter,
`12-3=9`) and ends with `The answer is \\boxed{9}.` Each generator returns dataset rows (`prompt`, `answer`,
`solution`, `problem`) and, beside them, the structured problem (`meta`) that the worlds' diagnostics read.
"""

from __future__ import annotations

import random
import re

from datasets import Dataset


INSTRUCTION = "Put your final answer within \\boxed{}."
STEP = re.compile(r"^\s*(\d+)\s*([+-])\s*(\d+)\s*=\s*(\d+)\s*$")
SUM_LINE = re.compile(r"^(\d+)\+(\d+)=(\d+)")  # one line of a sum problem's solution


def apply_op(value: int, op: str, operand: int, modulus: int | None) -> int:
    result = value + operand if op == "+" else value - operand
    return result % modulus if modulus else result


def chain_step(value: int, op: str, operand: int, modulus: int | None) -> str:
    return f"{value}{op}{operand}={apply_op(value, op, operand, modulus)}"


def _row(problem: str, solution: str, answer: int) -> dict:
    return {
        "prompt": [{"role": "user", "content": f"{problem} {INSTRUCTION}"}],
        "answer": str(answer),
        "solution": solution,
        "problem": problem,
    }


def chain_problem(
    rng: random.Random,
    n_ops: int = 2,
    max_value: int = 20,
    modulus: int | None = None,
    delimiter: str = "\n\n",
    style: str = "equation",
) -> tuple[dict, dict]:
    """One chain problem: `(row, meta)`. `modulus` makes it modular arithmetic (any operand, results mod m);
    without it, results stay non-negative. `style` `words` writes `7 add 5 equals 12` (another valid style)."""
    top = modulus - 1 if modulus else max_value
    value = rng.randint(0, top)
    start, ops, steps = value, [], []
    for _ in range(n_ops):
        operand = rng.randint(1 if modulus else 0, top)
        if modulus:
            op = rng.choice("+-")
        else:
            op = "+" if value < operand or rng.random() < 0.5 else "-"
        ops.append((op, operand))
        steps.append(chain_step(value, op, operand, modulus))
        value = apply_op(value, op, operand, modulus)
    expression = str(start) + "".join(f"{op}{operand}" for op, operand in ops)
    problem = f"Compute {expression} modulo {modulus}." if modulus else f"Compute {expression}."
    if style == "words":
        words = {"+": "add", "-": "subtract"}
        lines, v = [], start
        for op, operand in ops:
            new = apply_op(v, op, operand, modulus)
            lines.append(f"{v} {words[op]} {operand} equals {new}")
            v = new
        solution = delimiter.join(lines + [f"So the result is \\boxed{{{value}}}."])
    else:
        solution = delimiter.join(steps + [f"The answer is \\boxed{{{value}}}."])
    meta = {"start": start, "ops": ops, "modulus": modulus, "steps": steps, "delimiter": delimiter}
    return _row(problem, solution, value), meta


def sum_problem(
    rng: random.Random, n_terms: int = 4, max_value: int = 19, delimiter: str = "\n\n"
) -> tuple[dict, dict]:
    """`Add 3, 8, 5 and 11.`: the reference adds the numbers in a random order, so the choice of the next number is
    free (several equally valid continuations) while each running sum is determined. `meta["choices"]` holds, per
    step, the character spans of freely chosen numbers in the solution."""
    numbers = rng.sample(range(1, max_value + 1), n_terms)
    order = numbers[:]
    rng.shuffle(order)
    problem = "Add " + ", ".join(map(str, numbers[:-1])) + f" and {numbers[-1]}."
    lines, spans, offset, total = [], [], 0, order[0]
    remaining = n_terms
    for i, term in enumerate(order[1:]):
        if i == 0:
            line = f"{order[0]}+{term}={order[0] + term}"
            spans.append((offset, offset + len(str(order[0]))))  # the first term: n choices
            remaining -= 1
            pos = offset + len(str(order[0])) + 1
        else:
            line = f"{total}+{term}={total + term}"
            pos = offset + len(str(total)) + 1
        if remaining > 1:  # the next term is free when more than one number is left
            spans.append((pos, pos + len(str(term))))
        remaining -= 1
        total += term
        lines.append(line)
        offset += len(line) + len(delimiter)
    solution = delimiter.join(lines + [f"The answer is \\boxed{{{total}}}."])
    return _row(problem, solution, total), {"numbers": numbers, "order": order, "choices": spans}


def make_rows(generator, n: int, seed: int, **kwargs) -> tuple[Dataset, list[dict]]:
    """`n` rows from a seeded generator (disjoint seeds give practically disjoint splits) and their metas."""
    rng = random.Random(seed)
    pairs = [generator(rng, **kwargs) for _ in range(n)]
    return Dataset.from_list([row for row, _ in pairs]), [meta for _, meta in pairs]


def make_dataset(n: int, seed: int = 0, n_ops: int = 2, max_value: int = 9) -> Dataset:
    """The demo's (the lab's `arith`) task: `n` two-step chains of additions/subtractions of numbers up to 9."""
    return make_rows(chain_problem, n, seed, n_ops=n_ops, max_value=max_value)[0]
