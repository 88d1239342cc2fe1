"""The layers of the harness, checked: analysis reads records without PyTorch, and the results
directory's layout has one owner."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ANALYSIS_MODULES = sorted(f"bench.analysis.{p.stem}" for p in (REPO / "bench" / "analysis").glob("*.py") if p.stem != "__init__")


def imported_modules(code: str) -> set[str]:
    """Module names a Python process has loaded after running ``code``."""
    out = subprocess.run([sys.executable, "-c", f"{code}\nimport sys; print('\\n'.join(sys.modules))"],
                         capture_output=True, text=True, cwd=REPO, check=True).stdout
    return set(out.split())


def test_analysis_modules_exist():
    assert {"bench.analysis.report", "bench.analysis.summary", "bench.analysis.check", "bench.analysis.compare"} <= set(ANALYSIS_MODULES)


@pytest.mark.parametrize("module", ANALYSIS_MODULES)
def test_analysis_does_not_import_torch(module):
    assert "torch" not in imported_modules(f"import {module}")


def test_report_and_readme_commands_do_not_import_torch(tmp_path):
    """`python -m bench report` and `readme` only read records: no torch import (fast on a login node)."""
    loaded = imported_modules("import bench.cli as c; c.build_parser(); import bench.commands.results")
    assert "torch" not in loaded


def _string_constants(path: Path) -> list[str]:
    return [n.value for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def test_only_rundir_names_the_results_layout():
    """The results directory's sub-folders are spelled in bench/rundir.py alone."""
    layout = {"checkpoints", ".locks", "panels", "submitted.json"}
    offenders = {p.relative_to(REPO).as_posix(): sorted(layout & set(_string_constants(p)))
                 for p in (REPO / "bench").rglob("*.py") if p.name != "rundir.py"}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_no_file_cites_outside_the_repository():
    """The project carries its own protocol (docs/protocol.md): no reference to files outside it."""
    outside = ("REFERENCE.md", "../shared", "seed/dip-reproduction")
    files = [p for p in REPO.rglob("*") if p.is_file() and p.suffix in {".py", ".md", ".toml", ".tsv", ".cfg"}
             and not {".git", ".venv", "runs", "cache"} & set(p.relative_to(REPO).parts)]
    hits = [f"{p.relative_to(REPO)}: {needle}" for p in files for needle in outside
            if needle in p.read_text(errors="replace") and p.name != "test_architecture.py"]
    assert hits == []


# Keys only a record has (not a summary frame's columns, nor a baseline's): an analysis module that
# subscripts one of them is reading a raw record dict instead of bench.record.Record.
RECORD_ONLY_KEYS = {"provenance", "timing", "curve", "reference_psnr", "status", "schema", "divergences", "panel",
                    "started", "full_size", "psnr_masked_input", "median_ms_per_iter"}


def _record_parameters(tree: ast.AST) -> list[tuple[str, str, str]]:
    """(function, parameter, annotation) of every parameter named like records."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef):
            for arg in node.args.args + node.args.kwonlyargs:
                if arg.arg in ("record", "records", "failures"):
                    found.append((node.name, arg.arg, ast.unparse(arg.annotation) if arg.annotation else ""))
    return found


@pytest.mark.parametrize("module", ANALYSIS_MODULES)
def test_analysis_reads_records_only_through_the_typed_record(module):
    path = REPO / Path(*module.split(".")).with_suffix(".py")
    tree = ast.parse(path.read_text())
    raw = [ast.unparse(n) for n in ast.walk(tree) if isinstance(n, ast.Subscript)
           and isinstance(n.slice, ast.Constant) and n.slice.value in RECORD_ONLY_KEYS]
    assert raw == []
    untyped = [(f, p, a) for f, p, a in _record_parameters(tree) if "Record" not in a and "DataFrame" not in a]
    assert untyped == []
