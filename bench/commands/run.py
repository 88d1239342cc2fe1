"""``python -m bench run``: plan, execute (inline, local or Slurm) and report a profile's cells."""

from __future__ import annotations

import argparse
import sys

import torch

from bench.analysis.report import render, write_report
from bench.analysis.summary import check_comparable, shared_config
from bench.commands.common import config_overrides, paper_coverage, parse_others
from bench.config import build_config
from bench.data import data_dir
from bench.errors import BenchError
from bench.estimate import estimate_seconds, measure_ms_per_iter
from bench.execution import cell_recipe, resolve_device
from bench.executors.execute import Finished, Submitted, execute
from bench.executors.options import ExecutorOptions
from bench.paths import RUNS_DIR, published_paths, run_name
from bench.plan import run_fields
from bench.progress import human_duration
from bench.provenance import checkout_problem
from bench.rundir import RunDir


def check_others_match(config, others: dict[str, list[dict]]) -> None:
    """Refuse, before training, a --with run that the report would refuse after it: the same rule
    (bench.analysis.summary.check_comparable) on the configuration this run's records will share."""
    device = resolve_device(config.device)
    mine = run_fields(config, device, cell_recipe(config, device, out_channels=1))  # channels: a recipe field
    for label, records in others.items():
        check_comparable(mine, shared_config(records), label)


# Where torch sees no CUDA device: the profile `python -m bench run` (and `make bench`) picks. nvidia-smi is no
# sign of one: under a CPU build of torch, or a driver too old for the wheel, the paper profile would take days.
CPU_DEFAULT_PROFILE = "brief"


def choose_profile(args: argparse.Namespace) -> str:
    """--profile, else paper where torch sees a CUDA device and brief (saying so, with the paper's cost) elsewhere."""
    if args.profile:
        return args.profile
    on_cpu = vars(args).get("run.device") == "cpu"  # asked for the CPU: the paper profile would take days there
    if torch.cuda.is_available() and not on_cpu:
        return "paper"
    why = "--device cpu" if on_cpu else f"torch {torch.__version__} sees no CUDA device"
    said = f"{why}: running the '{CPU_DEFAULT_PROFILE}' profile (not comparable to Table 1)"
    paper = build_config("paper", config_overrides(args))
    if not paper.images:  # only the user's own files: no Table 1 images to estimate the paper profile on
        print(f"{said}.", flush=True)
        return CPU_DEFAULT_PROFILE
    seconds = estimate_seconds(paper, measure_ms_per_iter(paper))
    print(f"{said}; the paper profile, 'python -m bench run --profile paper', would take about "
          f"{human_duration(seconds)} on this machine (measured here: {len(paper.images)} images x "
          f"{paper.recipe.iterations} iterations).", flush=True)
    return CPU_DEFAULT_PROFILE


def cmd_run(args: argparse.Namespace) -> int:
    options = ExecutorOptions(args.executor, args.jobs, args.slurm_partition, args.slurm_time, args.gpus_per_job,
                              tuple(args.slurm_params))
    profile = choose_profile(args)
    config = build_config(profile, config_overrides(args))
    # named by the method's own name (a method from a Python path names itself), so that no other method's
    # run shares runs/<profile>/ or overwrites its published report
    name = run_name(config.profile, config.recipe_name, config.loaded_method().method.name)
    results_dir = args.results_dir or RUNS_DIR / name
    if options.executor == "slurm" and (args.others or args.publish):
        raise BenchError("--with and --publish need the finished records: run `python -m bench report` once the jobs are done")
    if problem := checkout_problem():  # before training: a record that names no commit is found out too late
        raise BenchError(problem)
    others = parse_others(args.others)  # read and checked before training: a bad --with fails now, not in an hour
    if others:
        check_others_match(config, others)
    result = execute(config, options, data_dir(args.data_dir), results_dir, progress=args.progress, log_every=args.log_every)
    if isinstance(result, Submitted):
        return say_submitted(result, results_dir)
    return report_finished(result, name, args, others, results_dir)


def report_finished(result: Finished, name: str, args: argparse.Namespace, others: dict, results_dir) -> int:
    """Write and print the run's report (published as reports/``name``.md with --publish); exit 1 if a cell failed or a job ended without its cell."""
    records, failures = result.outcome.records, result.outcome.failures
    if records:
        rows = paper_coverage(records, results_dir)
        report_path = write_report(records, RunDir(results_dir).report, others=others, results_dir=results_dir,
                                   failures=failures, coverage=rows)
        if args.publish:
            report_path = write_report(records, *published_paths(name),
                                       others=others, results_dir=results_dir, failures=failures, coverage=rows)
        print(render(records, others, failures=failures))
        print(f"Report written to {report_path}")
    for line in result.problems:
        print(f"error: {line}", file=sys.stderr)
    if failures:
        names = ", ".join(f"{f.label} seed {f.seed}" for f in failures)
        print(f"error: {len(failures)} cell{'s' if len(failures) > 1 else ''} failed ({names}): training diverged; "
              f"reasons in their records in {results_dir}", file=sys.stderr)
    return 1 if failures or result.problems else 0


def say_submitted(result: Submitted, results_dir) -> int:
    """What was submitted, and how to follow it."""
    entries = result.entries
    if not entries:
        print(f"nothing to submit: all {len(result.cells)} cells have complete records in {results_dir}")
        return 0
    scheduled = f"array {entries[0]['job_id'].split('_')[0]}" if len(entries) > 1 else f"job {entries[0]['job_id']}"
    print(f"submitted {len(entries)} job{'s' if len(entries) > 1 else ''} (Slurm {scheduled}, one per cell) with records "
          f"going to {results_dir} and logs to {RunDir(results_dir).jobs}")
    print(f"follow them with: python -m bench status {results_dir}")
    print(f"when they are done: python -m bench report --results-dir {results_dir}  (or submit the same command "
          f"again: finished cells are skipped, stopped ones resume)")
    return 0
