"""Helpers the commands share: reading results selected on the command line, and --with columns."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.analysis.summary import is_paper_budget
from bench.errors import BenchError
from bench.paths import RUNS_DIR
from bench.records import Record, load_records


def parse_others(specs: list[str]) -> dict[str, list[Record]]:
    """{"seed recipe": records} from ["seed recipe=runs/quick-seed"]."""
    others = {}
    for spec in specs:
        label, sep, directory = spec.partition("=")
        if not sep or not label.strip() or not directory.strip():
            raise BenchError(f"--with expects LABEL=DIR, got {spec!r}")
        others[label.strip()] = load_records(Path(directory.strip()))
    return others


def results_dir_of(args: argparse.Namespace) -> Path:
    if args.results_dir is not None:
        return args.results_dir
    if args.profile is None:
        raise BenchError("say which run: --profile NAME or --results-dir DIR")
    return RUNS_DIR / args.profile


def config_overrides(args: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(args).items() if "." in k}


def paper_coverage(records: list[Record], results_dir: Path) -> list[dict] | None:
    """The coverage rows of a run at the paper's budget (full images, 11000 iterations), else None."""
    if not is_paper_budget(records[0].config):
        return None
    from bench.coverage import coverage  # reads checkpoints: torch, only for paper-budget runs

    return coverage(results_dir, records)
