# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""Every relative link in the README, docs/ and the recipes' comments resolves inside the repository."""

import re
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
MARKDOWN = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "model_cards").glob("*.md"))]
RECIPES = sorted((ROOT / "recipes").rglob("*.yaml"))
SOURCES = sorted((ROOT / "trl_opd").rglob("*.py"))
LINK = re.compile(r"\]\(([^)\s]+)\)")
DOC_PATH = re.compile(r"\b((?:\.\./)*docs/[\w./-]+\.md)\b")


def _dead(base: Path, target: str) -> bool:
    target = target.split("#", 1)[0]
    if not target or re.match(r"^[a-z]+:", target):  # an anchor, or http(s):, mailto:
        return False
    path = (base / target).resolve()
    return not path.exists() or ROOT not in path.parents


def test_docs_exist():
    assert (ROOT / "docs" / "methods.md").is_file()


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_markdown_links_resolve(path):
    text = path.read_text(encoding="utf-8")
    dead = [t for t in LINK.findall(text) if _dead(path.parent, t)]
    assert not dead, f"dead relative links in {path.name}: {dead}"


@pytest.mark.parametrize("path", [*MARKDOWN, *RECIPES, *SOURCES], ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_paths_are_in_the_repository(path):
    """`docs/...` named in recipe comments and docstrings is a file of this repository; nothing points outside it."""
    text = path.read_text(encoding="utf-8")
    assert "shared/docs" not in text, f"{path.name} points to ../shared/docs; use docs/ in the repository"
    missing = [p for p in DOC_PATH.findall(text) if not (ROOT / p.lstrip("./")).is_file()]
    assert not missing, f"{path.name} names docs that do not exist: {missing}"
