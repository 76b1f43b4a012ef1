# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""Make lighteval 0.13 importable offline.

lighteval's task registry imports every built-in task module, and `tiny_benchmarks.py` downloads
`tinyBenchmarks.pkl` from raw.githubusercontent.com when that file is missing next to it: without network access
every `lighteval` command then fails before it starts. Our tasks never use tinyBenchmarks, so an empty stub at that
path is enough. `make bootstrap` runs `python -m trl_opd.eval.offline --prepare` once after `pip install`; the
`trl-opd eval` runner calls [`prepare_offline`] again before each run (it is idempotent and never downloads).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import sys
from pathlib import Path


TINY_BENCHMARKS_STUB = "tinyBenchmarks.pkl"

# Versions known to break lighteval 0.13 at run time (see docs/stack-notes.md).
_VERSION_LIMITS = {"huggingface_hub": (2, "mt_bench's import-time HfApi call"), "xxhash": (4, "the details logger")}


def lighteval_tasks_dir() -> Path | None:
    """The folder holding lighteval's built-in task modules, found without importing lighteval; `None` if absent."""
    spec = importlib.util.find_spec("lighteval")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "tasks" / "tasks"
    return path if path.is_dir() else None


def version_warnings() -> list[str]:
    """Human-readable warnings for installed packages whose versions break lighteval 0.13."""
    warnings = []
    for package, (major_limit, what) in _VERSION_LIMITS.items():
        try:
            version = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
        major = int(version.split(".")[0]) if version.split(".")[0].isdigit() else 0
        if major >= major_limit:
            warnings.append(f"{package}=={version} breaks {what} in lighteval 0.13; install '{package}<{major_limit}'")
    return warnings


def prepare_offline() -> Path | None:
    """Create the empty `tinyBenchmarks.pkl` stub lighteval would otherwise download at import.

    Idempotent: an existing file (stub or real) is left alone.

    Returns:
        `Path` or `None`: the stub's path, or `None` when lighteval is not installed.

    Raises:
        `OSError`: when lighteval's folder is not writable and the stub is missing.
    """
    tasks_dir = lighteval_tasks_dir()
    if tasks_dir is None:
        return None
    stub = tasks_dir / TINY_BENCHMARKS_STUB
    if not stub.exists():
        stub.touch()
    return stub


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trl_opd.eval.offline", description=__doc__.splitlines()[0])
    parser.add_argument("--prepare", action="store_true", help="create the files lighteval needs to import offline")
    args = parser.parse_args(argv)
    if not args.prepare:
        parser.print_help()
        return 0
    try:
        stub = prepare_offline()
    except OSError as exc:
        print(f"error: cannot create lighteval's offline stub: {exc}", file=sys.stderr)
        return 1
    if stub is None:
        print("lighteval is not installed; nothing to prepare (install the 'eval' extra for `trl-opd eval`)")
        return 0
    for warning in version_warnings():
        print(f"warning: {warning}", file=sys.stderr)
    print(f"lighteval offline stub ready: {stub}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
