# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""Evaluation on AIME 2024, AIME 2025 and HMMT February 2025 with lighteval."""
