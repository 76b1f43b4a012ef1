# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""The trainers: one config/trainer pair per method, MOTAB's rollout engine and TRL's baselines.

Library layer: imports `ops`, `teacher`, `data`, `rewards` and `controllers`, never `launch` or the CLI. Import the
classes from `trl_opd` (lazily) or from their modules here.
"""
