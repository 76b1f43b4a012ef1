# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""Make lighteval 0.13 importable offline (placeholder; the evaluation issue fills this in)."""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prepare", action="store_true")
    parser.parse_args(argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
