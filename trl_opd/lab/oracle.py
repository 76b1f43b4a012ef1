# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""The lab's `step-oracle` control: RLSD's token magnitude read from the verifier's step check, not a self-teacher.

Issue 14 asks EGRSD's token weights to beat GRPO and RLSD on `ambiguous`. Those weights can only win by moving credit
onto the tokens that made a rollout right or wrong. This control gives the same trainer ([`EGRSDTrainer`] at RLSD's
setting, `g_min = 1`) the best such signal the world has: each token's role from the step checker
([`~trl_opd.lab.credit.first_wrong_position`]). Where even this signal does not clear the bar, no reweighting of GRPO's
advantages by a token signal can. It is a lab instrument, not a method: it needs the world's answer key.
"""

from __future__ import annotations

import re
from typing import Any

import torch
import yaml

from ..trainers.egrsd_trainer import EGRSDTrainer
from .build import LabError
from .credit import first_wrong_position
from .worlds import free_choice_spans, sum_terms


STEP_ORACLE = "step-oracle"
#: The registry method whose config and trainer the control uses (its gate off: the magnitude alone).
ORACLE_BASE = "rlsd"
#: The control's own options (not config fields), with their allowed values.
ORACLE_OPTIONS = {"blame": ("after", "first"), "right_rollouts": (False, True)}
#: What the control sets on [`ORACLE_BASE`]'s config: no teacher copy, no self-teacher check.
ORACLE_CONFIG = {"self_teacher": "live", "self_teacher_check": "off"}
#: `|Δ|` of a label: large enough that the magnitude sits at its clip bound for any `ε_w` in [0, 1].
LABEL_NATS = 20.0


def is_step_oracle(method: str) -> bool:
    return method.split(":")[0] == STEP_ORACLE


def split_oracle_variant(method: str) -> tuple[str, dict]:
    """`"step-oracle:blame=first:epsilon_w=1.0"` -> `("rlsd:epsilon_w=1.0", {"blame": "first", "right_rollouts":
    False})`: the control's own options out, the rest a variant of [`ORACLE_BASE`]."""
    _, *assignments = method.split(":")
    options, rest = {"blame": "after", "right_rollouts": False}, []
    for assignment in assignments:
        key, _, value = assignment.partition("=")
        if key not in ORACLE_OPTIONS:
            rest.append(assignment)
            continue
        options[key] = yaml.safe_load(value)
        if options[key] not in ORACLE_OPTIONS[key]:
            raise LabError(f"variant {method!r}: {key} must be one of {ORACLE_OPTIONS[key]}, got {value!r}.")
    return ":".join([ORACLE_BASE, *rest]), options


def check_oracle_world(world) -> None:
    """The step checker knows one task: the sums of `sum_problem` (`ambiguous` and its versions)."""
    if sum_terms(world) is None:
        raise LabError(f"{STEP_ORACLE} needs a world of sums (ambiguous*), not {world.name!r}.")


def step_labels(pieces: list[str], numbers: list[int], blame: str, right_rollouts: bool) -> list[float]:
    r"""Per-token credit labels of one completion (its decoded tokens `pieces`) from the step checker.

    A wrong completion: `+1` before its first wrong token, `−1` at it, and after it `−1` (`blame: after`) or `0`
    (`blame: first`). A right completion: `0`, or with `right_rollouts` `−1` on its freely chosen numbers (any order is
    right: no credit) and `+1` on every other token (the determined sums). With `Δ = L·label` the RLSD magnitude
    $\mathrm{clip}(\exp(\mathrm{sign}(A)\,\Delta), 1 - \epsilon_w, 1 + \epsilon_w)$ pushes a penalised rollout down
    hardest where it went wrong and a rewarded one up hardest on what was determined.
    """
    text, labels, position = "".join(pieces), [], 0
    wrong = first_wrong_position(text, numbers)
    free = free_choice_spans(text, n_terms=len(numbers)) if wrong is None and right_rollouts else []
    for piece in pieces:
        start, position = position, position + len(piece)
        if wrong is None:
            free_token = any(a < position and start < b for a, b in free)
            labels.append(0.0 if not right_rollouts else -1.0 if free_token else 1.0)
        elif position <= wrong:
            labels.append(1.0)
        else:
            labels.append(-1.0 if blame == "after" or start <= wrong else 0.0)
    return labels


class StepOracleTrainer(EGRSDTrainer):
    """[`EGRSDTrainer`] whose `Δ_t` is `LABEL_NATS` times the step checker's label ([`step_labels`]) instead of the
    self-teacher's log-ratio: no teacher forward, no student forward, no self-teacher check. Lab only (the labels
    need the world's problems and its tiny tokenizer's one-character pieces)."""

    def __init__(self, *args, blame: str = "after", right_rollouts: bool = False, **kwargs):
        self.blame, self.right_rollouts = blame, right_rollouts
        super().__init__(*args, **kwargs)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        self._signature_columns = list(dict.fromkeys([*self._signature_columns, "problem"]))

    def teacher_token_stats(
        self, inputs: list[dict[str, Any]], output: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = output["completion_ids"], output["completion_mask"]
        delta = torch.zeros(ids.shape, dtype=torch.float32)
        for row, example in enumerate(inputs):
            numbers = [int(n) for n in re.findall(r"\d+", example["problem"])]
            pieces = [self.processing_class.decode([t]) for t in ids[row][mask[row].bool()].tolist()]
            labels = step_labels(pieces, numbers, self.blame, self.right_rollouts)
            delta[row, : len(labels)] = LABEL_NATS * torch.tensor(labels)
        return delta.to(ids.device), torch.zeros_like(delta, device=ids.device)

    def student_token_logps(self, output: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.zeros_like(output["completion_mask"], dtype=torch.float32)

    def _defers_magnitude(self, output: dict[str, Any]) -> bool:
        return False
