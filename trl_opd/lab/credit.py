# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""Where the self-teacher's token signal falls in the student's own rollouts of `ambiguous` (issue 14's question).

RLSD's magnitude and EGRSD's gate move credit between the tokens of a rollout by the self-teacher's disagreement
`Δ_t = log p_T(y_t) − log p_S(y_t)` and its entropy `H_t`. That can only beat the reward's uniform credit if they tell
the token that made a wrong rollout wrong from the tokens that did not. This module sorts the tokens of the start
student's temperature-1 samples by their role (a freely chosen number of a right rollout, a correct token before a
wrong rollout's first error, the error itself, the tokens after it) and reports `Δ`, `H` and the student's own
entropy for each role.
"""

from __future__ import annotations

import statistics

import torch

from .tasks import SUM_LINE
from .worlds import completion_logprobs_and_entropy, free_choice_spans, reference_prompts, student_samples


ROLES = (
    "right rollout: freely chosen number",
    "right rollout: other token",
    "wrong rollout, before its first error: freely chosen number",
    "wrong rollout, before its first error: other token",
    "wrong rollout: the first wrong token",
    "wrong rollout: after the first wrong token",
)


def first_wrong_position(completion: str, numbers: list[int], delimiter: str = "\n\n") -> int | None:
    """The character position of the first wrong field of a completion of a sum problem (`tasks.sum_problem`), checked
    step by step: a term that is not one of the numbers left, a running total that is not the previous sum, a wrong
    sum, a line that is not a step, a wrong or missing boxed answer. None for a right completion."""
    remaining, total, offset = list(numbers), None, 0
    lines = completion.split(delimiter)
    for i in range(len(numbers) - 1):
        match = SUM_LINE.fullmatch(lines[i]) if i < len(lines) else None
        if match is None:
            return offset
        a, b, c = (int(x) for x in match.groups())
        if i > 0 and a != total:
            return offset + match.start(1)
        for group, term in [(1, a), (2, b)] if i == 0 else [(2, b)]:
            if term not in remaining:
                return offset + match.start(group)
            remaining.remove(term)
        if c != a + b:
            return offset + match.start(3)
        total = c
        offset += len(lines[i]) + len(delimiter)
    if len(lines) < len(numbers) or f"\\boxed{{{total}}}" not in lines[len(numbers) - 1]:
        return offset
    return None


def token_roles(offsets: list[tuple[int, int]], wrong_at: int | None, free: list[int]) -> list[str]:
    """Each token's role ([`ROLES`]) from its character offsets, the first wrong position and the start positions of
    the freely chosen numbers (`worlds.free_choice_spans`; only those before the first wrong token count)."""
    free_starts, roles, seen_error = set(free), [], False
    for start, end in offsets:
        if wrong_at is None:
            roles.append(ROLES[0] if start in free_starts else ROLES[1])
        elif seen_error:
            roles.append(ROLES[5])
        elif end > wrong_at:
            roles.append(ROLES[4])
            seen_error = True
        else:
            roles.append(ROLES[2] if start in free_starts else ROLES[3])
    return roles


@torch.no_grad()
def self_teacher_signal_by_role(lab, n: int = 256) -> dict:
    """`Δ`, the self-teacher's and the student's entropy (nats) on the start student's own samples of `n` held-out
    problems, per token role; and how often a wrong rollout's first wrong token is its most negative `Δ` (the token
    RLSD blames most)."""
    rows = lab.heldout.select(range(min(n, len(lab.heldout))))
    completions = student_samples(lab, rows)
    teacher = completion_logprobs_and_entropy(lab.student, lab.tokenizer, reference_prompts(rows, 1.0), completions)
    student = completion_logprobs_and_entropy(lab.student, lab.tokenizer, list(rows["prompt"]), completions)
    by_role = {role: ([], [], []) for role in ROLES}
    ranks = []
    for completion, meta, (t_logp, entropy), (s_logp, s_entropy) in zip(
        completions, lab.heldout_meta, teacher, student, strict=False
    ):
        wrong_at = first_wrong_position(completion, meta["numbers"])
        free = [start for start, _ in free_choice_spans(completion, n_terms=len(meta["numbers"]))]
        offsets = lab.tokenizer(completion, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        delta = (t_logp - s_logp).tolist()
        roles = token_roles(offsets[: len(delta)], wrong_at, free)
        delta = delta[: len(roles)]  # the completion's own tokens (not an appended EOS)
        for role, d, h, h_s in zip(roles, delta, entropy.tolist(), s_entropy.tolist(), strict=False):
            by_role[role][0].append(d)
            by_role[role][1].append(h)
            by_role[role][2].append(h_s)
        if ROLES[4] in roles:
            error = roles.index(ROLES[4])
            ranks.append(1 + sum(d < delta[error] for d in delta))
    table = {
        role: {
            "tokens": len(d),
            "delta_mean": statistics.fmean(d),
            "delta_below_minus_1": sum(x < -1 for x in d) / len(d),
            "teacher_entropy_mean": statistics.fmean(h),
            "student_entropy_mean": statistics.fmean(h_s),
        }
        for role, (d, h, h_s) in by_role.items()
        if d
    }
    return {
        "samples": len(completions),
        "wrong_with_error": len(ranks),
        "error_is_most_negative": sum(r == 1 for r in ranks),
        "error_rank_median": statistics.median(ranks) if ranks else None,
        "roles": table,
    }


def signal_markdown(result: dict) -> str:
    """[`self_teacher_signal_by_role`]'s result as a markdown table and a closing line."""
    lines = [
        "| tokens | n | mean Δ (nats) | share with Δ < −1 | mean self-teacher entropy | mean student entropy |",
        "|---|---|---|---|---|---|",
    ]
    for role, row in result["roles"].items():
        lines.append(
            f"| {role} | {row['tokens']} | {row['delta_mean']:.3f} | {row['delta_below_minus_1']:.2f} | "
            f"{row['teacher_entropy_mean']:.3f} | {row['student_entropy_mean']:.3f} |"
        )
    lines.append(
        f"\n{result['samples']} samples, {result['wrong_with_error']} wrong: the first wrong token is its rollout's "
        f"most negative Δ in {result['error_is_most_negative']} of them (median rank {result['error_rank_median']})."
    )
    return "\n".join(lines)
