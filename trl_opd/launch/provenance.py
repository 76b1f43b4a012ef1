# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""The commit trl-opd was installed from, read without running `git`.

`git` reads configuration (`GIT_CONFIG_*`, `core.fsmonitor`, filters) that can run commands; a model-card writer has
no business running any. The commit comes from the install's `direct_url.json` (`pip install git+...`) or, for a
checkout, from the files under `.git` (HEAD, loose refs, packed refs).
"""

from __future__ import annotations

import json
import re
from importlib import metadata
from pathlib import Path


_SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")


def installed_commit(distribution: str = "trl-opd") -> str | None:
    """The commit recorded by the install (PEP 610 `direct_url.json`): `vcs_info.commit_id` (`pip install git+...`),
    or, for `pip install .` from a clone (`dir_info`), that clone's HEAD read from its files."""
    try:
        text = metadata.distribution(distribution).read_text("direct_url.json")
        record = json.loads(text or "{}")
        commit = record.get("vcs_info", {}).get("commit_id")
        url = record.get("url", "")
        if commit is None and "dir_info" in record and isinstance(url, str) and url.startswith("file://"):
            from urllib.parse import unquote, urlparse

            commit = checkout_commit(unquote(urlparse(url).path))
    except (metadata.PackageNotFoundError, ValueError, AttributeError, OSError):
        return None
    return commit if isinstance(commit, str) and _SHA.match(commit) else None


def _git_dir(checkout: Path) -> Path | None:
    dot_git = checkout / ".git"
    if dot_git.is_dir():
        return dot_git
    if dot_git.is_file():  # a worktree or submodule: `gitdir: PATH`
        text = dot_git.read_text(errors="replace").strip()
        if text.startswith("gitdir:"):
            path = Path(text[len("gitdir:") :].strip())
            return path if path.is_absolute() else (checkout / path).resolve()
    return None


def _read_ref(git_dir: Path, common: Path, ref: str) -> str | None:
    for base in (git_dir, common):
        loose = base / ref
        if loose.is_file():
            return loose.read_text(errors="replace").strip()
    packed = common / "packed-refs"
    if packed.is_file():
        for line in packed.read_text(errors="replace").splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1] == ref:
                return parts[0]
    return None


def checkout_commit(checkout: str | Path) -> str | None:
    """The commit a git checkout (or worktree) has at HEAD, read from its files; `None` if it cannot be read."""
    try:
        git_dir = _git_dir(Path(checkout))
        if git_dir is None or not (git_dir / "HEAD").is_file():
            return None
        common = git_dir
        if (git_dir / "commondir").is_file():
            common = (git_dir / (git_dir / "commondir").read_text().strip()).resolve()
        head = (git_dir / "HEAD").read_text(errors="replace").strip()
        commit = _read_ref(git_dir, common, head[4:].strip()) if head.startswith("ref:") else head
    except OSError:
        return None
    return commit if commit and _SHA.match(commit) else None


def source_commit(checkout: str | Path | None = None) -> str:
    """The commit of `checkout` (default: this package's source tree, else the install record); `"unknown"`."""
    package_root = Path(__file__).resolve().parents[2]
    if checkout is None and not (package_root / "pyproject.toml").is_file():
        return installed_commit() or "unknown"  # an install in site-packages: its metadata, never a nearby .git
    return checkout_commit(checkout or package_root) or installed_commit() or "unknown"
