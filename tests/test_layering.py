"""The package's import arrows, read from the source (``ast``, nothing is executed): which layer may import which.

- Nothing outside ``trl_edge/cli/`` imports ``trl_edge.cli``: the console script sits on top of the library.
- ``trl_edge.cache`` may import ``trl_edge.backends`` (the writer scores with them), never the other way round: what
  both need (``scored_positions``, ``tokenizer_fingerprint``, the clock) lives in neutral modules.
- ``trl_edge.rollout`` may import ``trl_edge.cache`` (a rollout set hands the cache its scoring plan), never the other
  way round.

Every import counts, those inside functions too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import trl_edge

PACKAGE_DIR = Path(trl_edge.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, relative imports resolved (``from . import x`` counts ``package.x`` too)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


MODULES = {_module_name(p): _imports(p) for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def _importers(target: str, among: str = "trl_edge") -> dict[str, list[str]]:
    """The modules under ``among`` that import ``target`` (or anything under it), with what they import."""
    out = {}
    for module, imports in MODULES.items():
        if module == among or module.startswith(among + "."):
            hits = sorted(i for i in imports if i == target or i.startswith(target + "."))
            if hits:
                out[module] = hits
    return out


def _outside(importers: dict[str, list[str]], package: str) -> dict[str, list[str]]:
    return {m: i for m, i in importers.items() if not (m == package or m.startswith(package + "."))}


def test_the_walk_sees_the_imports():  # a walk that found nothing would pass every rule below
    assert "trl_edge.cache.writer" in MODULES and "trl_edge.cli.main" in MODULES
    assert "trl_edge.backends.transformers_backend" in MODULES["trl_edge.cache.writer"]
    assert "trl_edge.cli.launch" in MODULES["trl_edge.cli.main"]  # a function-level relative import
    assert _importers("trl_edge.cli")


def test_nothing_outside_the_cli_imports_it():
    assert _outside(_importers("trl_edge.cli"), "trl_edge.cli") == {}


@pytest.mark.parametrize(
    "lower, upper",
    [("trl_edge.backends", "trl_edge.cache"), ("trl_edge.cache", "trl_edge.rollout")],
)
def test_imports_run_one_way(lower, upper):
    """``upper`` may import ``lower``; ``lower`` never imports ``upper``."""
    assert _importers(upper, among=lower) == {}
