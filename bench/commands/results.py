"""Commands that read results only (no training, no torch): status, report, compare, readme."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.analysis.report import render, write_report
from bench.analysis.tables import coverage_section
from bench.commands.common import paper_coverage, parse_others, results_dir_of
from bench.data import REPO_ROOT
from bench.errors import BenchError
from bench.paths import README, RUNS_DIR, published_paths, run_name
from bench.records import load_failures, load_records, write_text_atomic


def cmd_status(args: argparse.Namespace) -> int:
    from bench.status import STATES, run_status

    results_dir = Path(args.run) if Path(args.run).is_dir() else RUNS_DIR / args.run
    if not results_dir.is_dir():
        raise BenchError(f"no run {args.run!r}: neither a directory nor a name under {RUNS_DIR}")
    states = run_status(results_dir)
    if not states:
        raise BenchError(f"{results_dir} holds no cells (no records, checkpoints, locks or submitted jobs)")
    width = max(len(s.cell) for s in states)
    for s in states:
        print(f"{s.cell:<{width}}  {s.state:<8} {s.detail}")
    counts = {state: sum(s.state == state for s in states) for state in STATES}
    print(", ".join(f"{n} {state}" for state, n in counts.items() if n) + f" ({len(states)} cells in {results_dir})")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    results_dir = results_dir_of(args)
    records = load_records(results_dir)
    others = parse_others(args.others)
    failures = load_failures(results_dir)
    if args.out is None:
        first = records[0].config
        out, snapshot = published_paths(run_name(first.profile, first.recipe_name, first.method.name))
    else:
        out, snapshot = args.out, args.out.with_suffix("") / "records"
    if snapshot.resolve() == results_dir.resolve():
        snapshot = None  # the records already sit there
    rows = paper_coverage(records, results_dir)
    write_report(records, out, snapshot, others=others, results_dir=results_dir, failures=failures, coverage=rows)
    print(render(records, others, failures=failures))
    if rows:
        print(" ".join(coverage_section(rows)[1:2]))
    print(f"Report written to {out}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from bench.analysis.compare import side_by_side

    labels = [x.strip() for x in args.labels.split(",")]
    if len(labels) != 2 or not all(labels):
        raise BenchError(f"--labels needs two names separated by a comma, got {args.labels!r}")
    text = side_by_side(load_records(args.results_dir), load_records(args.against), *labels)
    write_text_atomic(args.out, text)
    print(text)
    print(f"Comparison written to {args.out}")
    return 0


def cmd_readme(args: argparse.Namespace) -> int:
    from bench.analysis.readme import current_block, replace_block, results_block

    runs = [published_paths(name) for name in args.runs]
    block = results_block([(load_records(records_dir), report.relative_to(REPO_ROOT).as_posix())
                           for report, records_dir in runs])
    sources = ", ".join(str(records_dir) for _, records_dir in runs)
    if args.check:
        if current_block(README) != block:
            print(f"README.md's results table differs from {sources}'s records; run `python -m bench readme`")
            return 1
        print(f"README.md's results table matches {sources}")
        return 0
    write_text_atomic(README, replace_block(README.read_text(), block))
    print(f"README.md's results table written from {sources}")
    return 0
