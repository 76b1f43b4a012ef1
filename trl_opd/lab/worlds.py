# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""The lab's worlds: small declarative objects (task generator, solution styles, sizes, warm-up band, per-world
method settings, diagnostic), each CPU-sized and offline, each built so that one method's problem is really there.
"""

from __future__ import annotations

import inspect
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch

from ..data import privileged_prompt, truncate_reference
from .tasks import STEP, SUM_LINE, chain_problem, chain_step, make_rows, sum_problem
from .training import encode_example, generate_texts, heldout_accuracy, prompt_texts


@dataclass(frozen=True)
class World:
    """One lab world. `generator(rng) -> (row, meta)` makes a problem; the teacher learns `generator`'s reference
    style, the student `student_generator`'s (the same unless the world is about a style mismatch)."""

    name: str
    description: str
    generator: Callable
    diagnostic: Callable  # (world, lab) -> dict of numbers with a "summary" line
    student_generator: Callable | None = None
    privileged_warmup: bool = False  # the student's warm-up also has rows with a reference in the prompt
    n_train: int = 4000
    n_heldout: int = 256
    n_val: int = 96
    max_new_tokens: int = 48
    band: tuple[float, float] = (0.10, 0.25)
    # > 0: a validation check that enters the band is confirmed on this many fresh problems before the warm-up stops
    # (a world whose chance accuracy sits near the band's low end enters it by luck on 96 problems; build.py)
    n_confirm: int = 0
    teacher_steps: int = 1500
    teacher_target: float = 0.97
    method_settings: dict = field(default_factory=dict)
    version: str = "1"

    def rows(self, n: int, seed: int, student: bool = False):
        generator = self.student_generator if student and self.student_generator else self.generator
        return make_rows(generator, n, seed)


def with_privileged_context(dataset, seed: int):
    """The same rows with the teacher's privileged prompt (none, half or all of the reference's steps, then its
    answer). A tiny model has to be taught to read a reference in its context, as an LLM does unprompted (build.py
    `teach_reading`)."""
    rng = random.Random(seed)

    def expose(row):
        alpha = rng.choice([0.0, 0.5, 1.0])
        reference = row["solution"] if alpha == 1.0 else truncate_reference(row["solution"], alpha)[0]
        return {"prompt": privileged_prompt(row["prompt"], reference)}

    return dataset.map(expose)


def reference_prompts(rows, alpha: float) -> list:
    """Each row's prompt with exposure `alpha` of its reference in the privileged context (1: the reference verbatim)."""
    return [
        privileged_prompt(r["prompt"], r["solution"] if alpha == 1 else truncate_reference(r["solution"], alpha)[0])
        for r in rows
    ]


# --------------------------------------------------------------------------------------------------- diagnostics


@torch.no_grad()
def completion_logprobs_and_entropy(model, tokenizer, prompts, completions: list[str]):
    """Per completion: the model's log-prob of each completion token and its entropy there (teacher forcing)."""
    out = []
    for prompt, completion in zip(prompts, completions):
        ids, prompt_len = encode_example(tokenizer, prompt, completion)
        logits = model(input_ids=torch.tensor([ids])).logits[0, prompt_len - 1 : len(ids) - 1].float()
        logp = torch.log_softmax(logits, dim=-1)
        target = torch.tensor(ids[prompt_len:])
        token_logp = logp.gather(-1, target[:, None])[:, 0]
        entropy = -(logp.exp() * logp).sum(-1)
        out.append((token_logp, entropy))
    return out


def student_samples(lab, rows) -> list[str]:
    """The lab student's temperature-1 completions of `rows`' prompts, seeded (0) without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        completions, _ = generate_texts(
            lab.student, lab.tokenizer, prompt_texts(lab.tokenizer, rows["prompt"]), lab.world.max_new_tokens, True
        )
    return completions


def low_teacher_probability_share(lab, n: int = 64, threshold: float = 1e-3) -> dict:
    """Share of the student's sampled tokens (temperature 1) to which the teacher gives `p_T(y_t) < threshold`."""
    rows = lab.heldout.select(range(min(n, len(lab.heldout))))
    completions = student_samples(lab, rows)
    scored = completion_logprobs_and_entropy(lab.teacher, lab.tokenizer, rows["prompt"], completions)
    token_logp = torch.cat([lp for lp, _ in scored])
    share = (token_logp < math.log(threshold)).float().mean().item()
    return {
        "low_teacher_prob_share": share,
        "summary": f"share of student tokens with p_T(y_t) < {threshold:g}: {share:.3f} "
        f"({len(token_logp)} sampled tokens)",
    }


def next_step_accuracy(lab, teacher, teacher_prompt: Callable, n: int = 96) -> dict:
    """The teacher's greedy next step after a correct student step vs after the student's first wrong step.

    The student samples (temperature 1) on held-out chain problems; every step that equals the reference's (on the
    reference's path) and the first step that differs are each followed by the teacher, given the student's prefix.
    Its next step is right when it continues consistently from the student's value (`v op operand = result`).
    """
    rows = lab.heldout.select(range(min(n, len(lab.heldout))))
    metas = lab.heldout_meta[: len(rows)]
    completions = student_samples(lab, rows)
    contexts, expected, kinds = [], [], []
    for row, meta, completion in zip(rows, metas, completions):
        delimiter = meta["delimiter"]
        lines = completion.split(delimiter)
        for i, line in enumerate(lines[: len(meta["ops"]) - 1]):
            match = STEP.match(line)
            if not match:
                break
            value = int(match.group(4))
            op, operand = meta["ops"][i + 1]
            contexts.append(
                prompt_texts(lab.tokenizer, [teacher_prompt(row)])[0] + delimiter.join(lines[: i + 1]) + delimiter
            )
            expected.append(chain_step(value, op, operand, meta["modulus"]))
            correct = line.strip() == meta["steps"][i]
            kinds.append("correct" if correct else "wrong")
            if not correct:
                break
    nexts, _ = generate_texts(teacher, lab.tokenizer, contexts, 16) if contexts else ([], [])
    result = {}
    for kind in ("correct", "wrong"):
        hits = [
            nxt.split(meta_delim(lab))[0].strip() == exp for nxt, exp, k in zip(nexts, expected, kinds) if k == kind
        ]
        result[f"next_step_acc_after_{kind}"] = sum(hits) / len(hits) if hits else float("nan")
        result[f"n_after_{kind}"] = len(hits)
    result["summary"] = (
        f"teacher next-step accuracy after a correct student step {result['next_step_acc_after_correct']:.3f} "
        f"(n={result['n_after_correct']}), after a wrong one {result['next_step_acc_after_wrong']:.3f} "
        f"(n={result['n_after_wrong']})"
    )
    return result


def meta_delim(lab) -> str:
    return lab.heldout_meta[0]["delimiter"]


def diagnose_arith(world, lab) -> dict:
    return low_teacher_probability_share(lab)


def diagnose_long_chains(world, lab) -> dict:
    return next_step_accuracy(lab, lab.teacher, lambda row: row["prompt"])


def diagnose_mismatch(world, lab) -> dict:
    return low_teacher_probability_share(lab)


def diagnose_external_teacher_entropy(world, lab, n: int = 96) -> dict:
    """The teacher's entropy on reference solutions at freely chosen numbers vs at determined tokens."""
    rows = lab.heldout.select(range(min(n, len(lab.heldout))))
    metas = lab.heldout_meta[: len(rows)]
    scored = completion_logprobs_and_entropy(lab.teacher, lab.tokenizer, rows["prompt"], rows["solution"])
    ambiguous, determined = [], []
    for (_, entropy), meta, solution in zip(scored, metas, rows["solution"]):
        offsets = lab.tokenizer(solution, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        starts = {start for start, _ in meta["choices"]}
        for position, (start, _) in enumerate(offsets):
            (ambiguous if start in starts else determined).append(entropy[position].item())
    amb, det = sum(ambiguous) / len(ambiguous), sum(determined) / len(determined)
    return {
        "teacher_entropy_ambiguous": amb,
        "teacher_entropy_determined": det,
        "summary": f"teacher entropy (nats) at freely chosen numbers {amb:.3f} (n={len(ambiguous)}), "
        f"at determined tokens {det:.3f} (n={len(determined)})",
    }


def free_choice_spans(completion: str, delimiter: str = "\n\n", n_terms: int = 4) -> list[tuple[int, int]]:
    """Character spans of the freely chosen numbers in a completion of an `n_terms`-term sum (`sum_problem`'s rule):
    both terms of the first line and the added term of each next line while more than one number is left (the last
    term is forced). Stops at a line that is not `a+b=c`."""
    spans, offset = [], 0
    for i, line in enumerate(completion.split(delimiter)[: n_terms - 2]):
        match = SUM_LINE.match(line)
        if not match:
            break
        if i == 0:
            spans.append((offset + match.start(1), offset + match.end(1)))
        spans.append((offset + match.start(2), offset + match.end(2)))
        offset += len(line) + len(delimiter)
    return spans


def sum_terms(world) -> int | None:
    """How many numbers a problem of `world` adds, or None when it is not a world of `sum_problem`s."""
    if getattr(world.generator, "func", world.generator) is not sum_problem:
        return None
    default = inspect.signature(sum_problem).parameters["n_terms"].default
    return getattr(world.generator, "keywords", {}).get("n_terms", default)


def self_teacher_entropy_on_samples(lab, n: int = 96) -> dict:
    """EGRSD's gate input where it is computed: the self-teacher's entropy (the student with the full reference in its
    prompt) on the student's own temperature-1 samples, at freely chosen numbers vs at every other token."""
    rows = lab.heldout.select(range(min(n, len(lab.heldout))))
    completions = student_samples(lab, rows)
    scored = completion_logprobs_and_entropy(lab.student, lab.tokenizer, reference_prompts(rows, 1.0), completions)
    free, other = [], []
    for (_, entropy), completion in zip(scored, completions):
        starts = {start for start, _ in free_choice_spans(completion, n_terms=sum_terms(lab.world))}
        offsets = lab.tokenizer(completion, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        for position, (start, _) in enumerate(offsets):
            (free if start in starts else other).append(entropy[position].item())
    return {
        "self_teacher_entropy_free": sum(free) / max(1, len(free)),
        "self_teacher_entropy_other": sum(other) / max(1, len(other)),
        "n_free": len(free),
        "n_other": len(other),
    }


def self_teacher_accuracies(lab, n: int = 128) -> dict:
    """Greedy held-out accuracy of the self-teacher (the student with no, half or the full reference in its prompt)."""
    rows = lab.heldout.select(range(min(n, len(lab.heldout))))
    result = {}
    for name, alpha in (("none", None), ("partial", 0.5), ("full", 1.0)):
        prompts = rows["prompt"] if alpha is None else reference_prompts(rows, alpha)
        result[f"self_teacher_acc_{name}"] = heldout_accuracy(
            lab.student, lab.tokenizer, rows, lab.world.max_new_tokens, prompts=prompts
        )
    return result


def self_teacher_accuracy_summary(result: dict) -> str:
    """The summary phrase for [`self_teacher_accuracies`]' numbers."""
    return (
        f"self-teacher greedy accuracy with no reference {result['self_teacher_acc_none']:.3f}, partial "
        f"{result['self_teacher_acc_partial']:.3f}, full {result['self_teacher_acc_full']:.3f}"
    )


def diagnose_ambiguous(world, lab) -> dict:
    """The external teacher's entropy on the references (free vs determined tokens); in a world whose student reads a
    reference, also the self-teacher's entropy on the student's samples (the gate's input) and its accuracies."""
    result = diagnose_external_teacher_entropy(world, lab)
    if not world.privileged_warmup:
        return result
    result.update(self_teacher_entropy_on_samples(lab))
    result.update(self_teacher_accuracies(lab))
    result["summary"] += (
        f"; self-teacher entropy on the student's samples at free numbers {result['self_teacher_entropy_free']:.3f} "
        f"(n={result['n_free']}), elsewhere {result['self_teacher_entropy_other']:.3f} (n={result['n_other']}); "
        + self_teacher_accuracy_summary(result)
    )
    return result


def diagnose_ambiguous_reader(world, lab) -> dict:
    """`ambiguous`'s entropy diagnostic, and the self-teacher's accuracy with no, half and the full reference."""
    result = diagnose_external_teacher_entropy(world, lab)
    result.update(self_teacher_accuracies(lab))
    result["summary"] += "; " + self_teacher_accuracy_summary(result)
    return result


def diagnose_privileged(world, lab) -> dict:
    """The self-teacher (the student shown a reference) with no, partial and full reference; and its next step after
    a correct vs a wrong student step, with the full reference in its prompt."""
    result = self_teacher_accuracies(lab)
    steps = next_step_accuracy(lab, lab.student, lambda row: privileged_prompt(row["prompt"], row["solution"]))
    summary = steps.pop("summary").replace("teacher", "privileged self-teacher")
    result.update(steps)
    result["summary"] = f"{self_teacher_accuracy_summary(result)}; {summary}"
    return result


LONG = partial(chain_problem, n_ops=5, modulus=17, delimiter="\n")
WORLDS: dict[str, World] = {
    w.name: w
    for w in [
        World(
            "arith",
            "two-step additions/subtractions of numbers up to 9 (the general world: no method may lose here)",
            partial(chain_problem, n_ops=2, max_value=9),
            diagnose_arith,
            max_new_tokens=40,
            n_confirm=512,
            version="2",  # 2: a band entry is confirmed on 512 fresh problems (v1 stopped on lucky answers: first step right 1/256)
        ),
        World(
            "long-chains",
            "five-step modular (mod 17) chains, one step per line: one wrong step ruins the answer",
            LONG,
            diagnose_long_chains,
            max_new_tokens=56,
            n_confirm=512,
            method_settings={"motab": {"step_delimiter": "\n", "max_segment_tokens": 12}},
            version="2",  # 2: a band entry is confirmed on 512 fresh problems (a guess mod 17 is right 1 time in 17)
        ),
        World(
            "mismatch",
            "two-step arithmetic (numbers up to 9); the teacher writes `7+5=12`, the student was warmed up on `7 add 5 equals 12`",
            partial(chain_problem, n_ops=2, max_value=9),
            diagnose_mismatch,
            student_generator=partial(chain_problem, n_ops=2, max_value=9, style="words"),
            max_new_tokens=48,
        ),
        World(
            "ambiguous",
            "add four numbers in any order: which number comes next is free, each running sum is determined; the "
            "student first learned to read a reference in its prompt (the GRPO family's self-teacher can use it) and "
            "starts warm enough that a quarter of its samples are right, so GRPO's groups carry a reward signal",
            sum_problem,
            diagnose_ambiguous,
            privileged_warmup=True,
            band=(0.40, 0.60),
            max_new_tokens=48,
            version="2",  # 2: a reading student and a warm start (version 1 is `ambiguous-noreader`)
        ),
        World(
            "ambiguous-long",
            "`ambiguous` with six numbers: rollouts of about 55 tokens (37 in `ambiguous`), so the reward's uniform "
            "credit spreads a wrong rollout's blame over more tokens; a reading student from a warm start",
            partial(sum_problem, n_terms=6),
            diagnose_ambiguous,
            privileged_warmup=True,
            band=(0.30, 0.50),
            max_new_tokens=80,
        ),
        World(
            "ambiguous-noreader",
            "add four numbers in any order: which number comes next is free, each running sum is determined (the "
            "student never saw a reference, so a self-teacher cannot use one; `ambiguous` up to version 1)",
            sum_problem,
            diagnose_ambiguous,
            max_new_tokens=48,
        ),
        World(
            "ambiguous-reader",
            "`ambiguous` for self-distillation: the student first learned to read a reference in its prompt (EGRSD's "
            "and RLSD's self-teacher can use it)",
            sum_problem,
            diagnose_ambiguous_reader,
            privileged_warmup=True,
            max_new_tokens=48,
        ),
        World(
            "privileged",
            "three-step arithmetic (numbers up to 9); the student first learned to read a reference in its prompt, "
            "then warmed up on rows with and without one (self-distillation), until a quarter of its samples are "
            "right, so GRPO's groups carry a reward signal",
            partial(chain_problem, n_ops=3, max_value=9),
            diagnose_privileged,
            privileged_warmup=True,
            band=(0.40, 0.60),
            max_new_tokens=48,
            version="3",  # 2: a reading student (build.py `teach_reading`); 3: a warm start (2 is `privileged-cold`)
        ),
        World(
            "privileged-cold",
            "three-step arithmetic (numbers up to 9); the student first learned to read a reference in its prompt, "
            "then warmed up on rows with and without one (self-distillation), only into the band 0.10-0.25, so "
            "few of its samples are right (`privileged` up to version 2)",
            partial(chain_problem, n_ops=3, max_value=9),
            diagnose_privileged,
            privileged_warmup=True,
            max_new_tokens=48,
            version="2",
        ),
    ]
}
