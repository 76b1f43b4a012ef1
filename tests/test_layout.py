# Copyright 2026 The trl-opd developers. Licensed under the Apache License, Version 2.0.
"""The package's layering, read from the source (ast): library below, application above, the CLI on top; no cycles.

Also: the method registry is the one table of method facts, and the trainers agree with it.
"""

import ast
from pathlib import Path

import pytest


PACKAGE = Path(__file__).resolve().parents[1] / "trl_opd"

# module prefix -> module prefixes it must never import (directly, anywhere in the file)
FORBIDDEN = {
    "trl_opd.ops": (
        "trl_opd.trainers",
        "trl_opd.launch",
        "trl_opd.cli",
        "trl_opd.eval",
        "trl_opd.demo",
        "trl_opd.teacher",
        "trl_opd.controllers",
    ),
    "trl_opd.controllers": ("trl_opd.trainers", "trl_opd.launch", "trl_opd.cli", "trl_opd.eval", "trl_opd.demo"),
    "trl_opd.teacher": ("trl_opd.trainers", "trl_opd.launch", "trl_opd.cli", "trl_opd.eval", "trl_opd.demo"),
    "trl_opd.data": ("trl_opd.trainers", "trl_opd.launch", "trl_opd.cli", "trl_opd.eval", "trl_opd.demo"),
    "trl_opd.rewards": ("trl_opd.trainers", "trl_opd.launch", "trl_opd.cli", "trl_opd.eval", "trl_opd.demo"),
    "trl_opd.runtime": ("trl_opd.trainers", "trl_opd.launch", "trl_opd.cli", "trl_opd.eval", "trl_opd.demo"),
    "trl_opd.trainers": ("trl_opd.launch", "trl_opd.cli", "trl_opd.eval", "trl_opd.demo"),
    "trl_opd.eval": ("trl_opd.trainers", "trl_opd.cli", "trl_opd.demo"),
    "trl_opd.launch": ("trl_opd.cli", "trl_opd.demo"),
    "trl_opd.demo": ("trl_opd.cli",),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every trl_opd module a file imports (relative imports resolved; `from x import y` counts `x` and `x.y`)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {m for m in found if m == "trl_opd" or m.startswith("trl_opd.")}


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {name: {m for m in _imports(path) if m in MODULES and m != name} for name, path in MODULES.items()}


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_upward_import(module):
    for layer, forbidden in FORBIDDEN.items():
        if _under(module, layer):
            bad = sorted(m for m in _imports(MODULES[module]) for f in forbidden if _under(m, f))
            assert not bad, f"{module} imports {bad}: a layer above it"


def test_no_import_cycle():
    """No cycle among trl_opd modules (package `__init__`s that only re-export are part of the graph too)."""
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(GRAPH[node]):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep) :] + [dep] if dep in stack else [node, dep]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])


def test_registry_is_the_table_of_method_facts():
    from trl_opd.launch.methods import METHODS, TEACHER_KINDS, load_method

    for name, spec in METHODS.items():
        assert spec.teacher in TEACHER_KINDS and spec.display_name and spec.paper_id and spec.paper_title
        config_class, trainer_class = load_method(name)
        assert "prompt" in spec.required_columns
        # the trainer's own column check asks for no more than the registry's (checked before weights load)
        assert set(getattr(trainer_class, "required_columns", ())) <= set(spec.required_columns), name
        overrides = set(spec.config_overrides) - {f for f in config_class.__dataclass_fields__}
        assert not overrides, f"{name}: preset sets fields its config lacks: {overrides}"
        # the method's own entry (not a preset) names the trainer as the trainer names itself
        if not spec.config_overrides and spec.trainer.startswith("trl_opd."):
            assert trainer_class._name == spec.display_name, name
            # and TRL's card (written when `create_model_card` is not ours) names the method's paper, not GKD's
            assert trainer_class._paper == {"title": spec.paper_title, "id": spec.paper_id}, name
    rlsd = {"g_min": 1.0, "self_teacher_check": "warn"}  # the gate off; as published, no fallback to GRPO
    assert METHODS["rlsd"].config_overrides == rlsd and METHODS["rlsd"].trainer == METHODS["egrsd"].trainer


def test_rlsd_preset_parses_with_the_gate_off(tmp_path):
    from trl_opd.launch.recipe import parse_recipe

    recipe = tmp_path / "rlsd.yaml"
    recipe.write_text("method: rlsd\nmodel_name_or_path: x/y\noutput_dir: out\n")
    _, config, _ = parse_recipe(str(recipe))
    assert config.g_min == 1.0 and config.epsilon_w == 0.2 and config.self_teacher_check == "warn"


def test_model_card_reads_the_registry():
    from trl_opd.launch.methods import METHODS
    from trl_opd.launch.model_card import METHOD_PAPERS

    assert set(METHOD_PAPERS) == set(METHODS)
    assert all(METHOD_PAPERS[n].arxiv_id == s.paper_id for n, s in METHODS.items())
