# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""Where the self-teacher's token signal (RLSD's `Δ`, EGRSD's entropy) falls in the start student's own rollouts.

    .venv/bin/python benchmarks/self_teacher_signal.py [--world ambiguous] [--samples 256]

Builds (or reads from the lab's cache) a world of sums (`ambiguous`, `ambiguous-long`, ...), samples the start student at temperature 1 on held-out
problems, scores each completion with the self-teacher (the same student, the full reference in its prompt) and prints
`Δ = log p_T − log p_S`, the self-teacher's and the student's entropy per token role (`trl_opd.lab.credit`). A mechanism diagnostic,
not a timing: it reads the same on every run on one kind of CPU.
"""

from __future__ import annotations

import argparse

import torch

from trl_opd.lab.build import build_lab
from trl_opd.lab.credit import self_teacher_signal_by_role, signal_markdown
from trl_opd.lab.worlds import WORLDS, sum_terms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=256, help="held-out problems to sample (one rollout each)")
    sums = [name for name, world in WORLDS.items() if sum_terms(world) is not None]
    parser.add_argument("--world", default="ambiguous", choices=sums, help="a world of sums (default: ambiguous)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    lab = build_lab(WORLDS[args.world])
    print(signal_markdown(self_teacher_signal_by_role(lab, args.samples)))


if __name__ == "__main__":
    main()
