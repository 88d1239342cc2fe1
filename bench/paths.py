"""Where the harness reads and writes at the repository level: working runs, published reports and
the regression check's goldens. (Inside one results directory, bench.rundir owns the layout.)"""

from __future__ import annotations

import os
from pathlib import Path

from bench.data import REPO_ROOT


def runs_dir() -> Path:
    """Working records, checkpoints and panels: $DIP_RUNS_DIR if set (outside the checkout, so that a
    long campaign survives a fresh clone and runs from a pinned worktree), else runs/ (git-ignored)."""
    configured = os.environ.get("DIP_RUNS_DIR", "")
    return Path(configured).expanduser().absolute() if configured.strip() else REPO_ROOT / "runs"


RUNS_DIR = runs_dir()
REPORTS_DIR = REPO_ROOT / "reports"  # published reports with a snapshot of their records (committed)
GOLDENS_DIR = REPORTS_DIR / "baselines"  # the regression check's goldens
SPREAD_PATH = REPORTS_DIR / "regression-spread.json"  # the measurement its tolerances come from
README = REPO_ROOT / "README.md"
PROTOCOL = REPO_ROOT / "docs" / "protocol.md"  # holds the defaults tables that `python -m bench docs` writes
# The published runs whose tables the README shows, in order: the paper's protocol (the campaign), then
# what `make bench` gives without a GPU.
README_RUNS = ("paper", "brief")


def run_name(profile: str, recipe_name: str = "paper", method: str = "dip-bench") -> str:
    """runs/<name> and reports/<name>.md: the profile, suffixed with the recipe unless it is the paper's and
    with the method unless it is the built-in one (quick, quick-seed, quick-convdecoder)."""
    name = profile if recipe_name == "paper" else f"{profile}-{recipe_name}"
    if method == "dip-bench":
        return name
    return f"{name}-" + "-".join("".join(c if c.isalnum() else " " for c in method.lower()).split())


def published_paths(name: str) -> tuple[Path, Path]:
    """Where a run's published report goes, and the snapshot of its records beside it."""
    return REPORTS_DIR / f"{name}.md", REPORTS_DIR / name / "records"
