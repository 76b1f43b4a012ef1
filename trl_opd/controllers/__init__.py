# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""Plain-Python controllers with `state_dict()`: the MOTAB boundary and the ATESD exposure controller."""

from .boundary import AdaptiveBoundary
from .exposure import ExposureController


__all__ = ["AdaptiveBoundary", "ExposureController"]
