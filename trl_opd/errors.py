# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""[`UserError`]: the base of every error caused by the user's input (recipe, data, paths, checkpoints).

The CLI prints such an error as one `error: ...` line with exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input from the user. The message is one line that names the field, file or row."""


class ConfigValueError(UserError):
    """A configuration value that cannot train (checked before any model loads)."""


class CheckpointError(UserError):
    """A checkpoint that cannot be resumed from (incomplete, unreadable, or of another method or configuration)."""
