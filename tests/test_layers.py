"""The method package's layers: every dip module imports on its own, dip/ knows nothing of bench/, the
imports between dip modules form no cycle, and the recipe and network config load without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DIP = REPO_ROOT / "dip"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


DIP_MODULES = {module_name(path): path for path in sorted(DIP.rglob("*.py"))}


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function (``from a.b import c`` counts as a.b)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def dip_imports() -> dict[str, set[str]]:
    """The import graph between dip modules: module -> the dip modules it imports."""
    return {name: {m for m in imported_modules(path) if m in DIP_MODULES} for name, path in DIP_MODULES.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` as [a, b, ..., a], or None (depth-first search)."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return path[path.index(node):] + [node]
        if node in done:
            return None
        for nxt in sorted(graph.get(node, ())):
            cycle = visit(nxt, path + [node])
            if cycle:
                return cycle
        done.add(node)
        return None

    for start in sorted(graph):
        cycle = visit(start, [])
        if cycle:
            return cycle
    return None


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)


def test_every_dip_module_imports_on_its_own():
    # One fresh interpreter; dip's modules are dropped from sys.modules before each import, so none
    # leans on another having been imported first (torch stays loaded: importing it once is slow).
    code = (
        "import importlib, sys\n"
        f"for name in {sorted(DIP_MODULES)!r}:\n"
        "    for loaded in [m for m in sys.modules if m == 'dip' or m.startswith('dip.')]:\n"
        "        del sys.modules[loaded]\n"
        "    importlib.import_module(name)\n"
    )
    done = run_python(code)
    assert done.returncode == 0, done.stderr


def test_the_recipe_and_the_network_config_load_without_torch():
    done = run_python("import dip.recipe, dip.nets.config, sys; assert 'torch' not in sys.modules, 'torch was imported'")
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("name", sorted(DIP_MODULES))
def test_dip_imports_nothing_from_bench(name):
    assert not {m for m in imported_modules(DIP_MODULES[name]) if m == "bench" or m.startswith("bench.")}


def test_dip_modules_import_each_other_without_a_cycle():
    assert find_cycle(dip_imports()) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # the search finds one


def test_the_network_layers_point_one_way():
    """config <- blocks <- skipnet, seednet <- dip.nets; the method (trainer, restore) knows no network. The
    blocks' convolution (dip.conv, with dip.winograd) has algorithms the trainer switches, and knows no network either."""
    graph = dip_imports()
    assert graph["dip.nets.config"] == set()
    assert graph["dip.winograd"] == set()
    assert graph["dip.conv"] == {"dip.winograd"}
    assert graph["dip.nets.blocks"] == {"dip.nets.config", "dip.conv"}
    assert graph["dip.nets.skipnet"] == graph["dip.nets.seednet"] == {"dip.nets.blocks", "dip.nets.config"}
    assert graph["dip.nets"] == {"dip.nets.config", "dip.nets.skipnet", "dip.nets.seednet"}
    for method in ("dip.trainer", "dip.restore"):
        assert not {m for m in graph[method] if m == "dip.nets" or m.startswith("dip.nets.")}


def test_every_precision_has_an_autocast_dtype():
    from dip.recipe import PRECISIONS
    from dip.trainer import AUTOCAST_DTYPES

    assert tuple(AUTOCAST_DTYPES) == PRECISIONS
