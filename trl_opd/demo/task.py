# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""The demo's synthetic arithmetic task: the lab's `arith` world (see `trl_opd.lab.tasks`)."""

from ..lab.tasks import INSTRUCTION, chain_problem, make_dataset


__all__ = ["INSTRUCTION", "chain_problem", "make_dataset"]
