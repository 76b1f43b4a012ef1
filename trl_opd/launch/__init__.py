# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""The application layer: the method registry, recipe parsing, trainer building and the model card.

It imports the library (`trainers`, `data`, `rewards`, ...) and is imported by the CLI, the demo and evaluation.
"""
