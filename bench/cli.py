"""Command line: ``python -m bench {run,status,report,readme,docs,check,spread,power,estimate,compare,ablate,published,speed,speed-report,gpu-check,gpu-session}``.

This module only parses: each command's work lives in bench.commands and is imported when that command
runs, so reading results (report, compare, readme) never loads PyTorch. User errors (unknown
image or flag, bad value, corrupt data) print one line and exit with status 2; cells that failed
(diverged training) and failed regression checks exit with status 1; a stop signal exits 130 or 143.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from bench.config import CHECK_PARTS, PROFILES
from bench.errors import BenchError, RunStopped
from bench.executors.options import EXECUTORS
from bench.flags import OneLineParser, add_config_flags, parse_comma_list
from bench.methods import BUILTIN, configured_method
from bench.paths import GOLDENS_DIR, README_RUNS, REPORTS_DIR, RUNS_DIR
from bench.progress import LOG_EVERY_S

# command -> (module under bench.commands, function): imported only when the command runs.
COMMANDS = {
    "run": ("run", "cmd_run"),
    "status": ("results", "cmd_status"),
    "report": ("results", "cmd_report"),
    "readme": ("results", "cmd_readme"),
    "docs": ("docs", "cmd_docs"),
    "compare": ("results", "cmd_compare"),
    "check": ("checks", "cmd_check"),
    "spread": ("checks", "cmd_spread"),
    "power": ("checks", "cmd_power"),
    "speed": ("checks", "cmd_speed"),
    "speed-report": ("checks", "cmd_speed_report"),
    "gpu-check": ("checks", "cmd_gpu_check"),
    "gpu-session": ("checks", "cmd_gpu_session"),
    "estimate": ("studies", "cmd_estimate"),
    "ablate": ("studies", "cmd_ablate"),
    "published": ("studies", "cmd_published"),
}


def non_negative_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not seconds >= 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"need a finite number of seconds >= 0, got {text!r}")
    return seconds


def build_parser(method: str = BUILTIN) -> argparse.ArgumentParser:
    """The parser; ``method``: the --method of a ``run`` command line, whose fields become its flags."""
    parser = OneLineParser(prog="python -m bench", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run_p = commands.add_parser("run", help="train every (image, seed) cell of a profile and write records")
    run_p.add_argument("--profile", choices=PROFILES, help="what to run (default: paper with CUDA, brief without)")
    _add_results_dir(run_p)
    run_p.add_argument("--data-dir", metavar="DIR", help="image directory (default $DIP_DATA_DIR, else datasets/cache)")
    run_p.add_argument("--publish", action="store_true", help="also write reports/<profile>.md and its records")
    run_p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    run_p.add_argument("--log-every", type=non_negative_seconds, metavar="SECONDS", default=LOG_EVERY_S,
                       help=f"without bars (no terminal, or --no-progress): a status line per cell every this many "
                            f"seconds, 0 for none (default {LOG_EVERY_S:g})")
    _add_with(run_p)
    add_config_flags(run_p, configured_method(method))
    ex = run_p.add_argument_group("where the cells run (none of it changes a result)")
    ex.add_argument("--executor", choices=EXECUTORS, default="inline",
                    help="inline: here, one cell after another (default); local: parallel subprocesses, one per "
                         "visible GPU or --jobs; slurm: a submitit job array, one task per cell")
    ex.add_argument("--jobs", type=int, metavar="N", help="local: parallel jobs (default: one per visible GPU, else 1)")
    ex.add_argument("--slurm-partition", metavar="NAME", help="slurm: sbatch --partition")
    ex.add_argument("--slurm-time", type=int, metavar="MINUTES", help="slurm: sbatch --time per job (default 1440)")
    ex.add_argument("--gpus-per-job", type=int, metavar="N", default=1, help="slurm: GPUs per job (default 1)")
    ex.add_argument("--slurm-param", dest="slurm_params", action="append", default=[], metavar="KEY=VALUE",
                    help="slurm: any other sbatch option, e.g. account=lab or qos=high; repeatable")

    status_p = commands.add_parser("status", help="done / running / failed / stopped / pending cells of a run")
    status_p.add_argument("run", metavar="RUN", help="a results directory, or a run name under $DIP_RUNS_DIR (default runs/)")

    report_p = commands.add_parser("report", help="markdown table from stored records")
    _add_results_selection(report_p)
    report_p.add_argument("--out", type=Path, metavar="FILE", help="default reports/<profile>.md, records beside it")
    _add_with(report_p)

    check_p = commands.add_parser("check", help="the regression check: recipe fingerprint and outcome against the "
                                                 "goldens in reports/baselines; exit 1 outside tolerance")
    check_p.add_argument("--part", choices=("all", *CHECK_PARTS), default="all",
                         help="all (default): fingerprint then outcome; fingerprint: 24 smooth fp32 iterations "
                              "(about 15 s); outcome: the smoke profile's PSNR (about 40 s)")
    check_p.add_argument("--record", action="store_true",
                         help="write new goldens instead of checking (after an intended recipe change; "
                              "tolerances from reports/regression-spread.json)")
    check_p.add_argument("--work-dir", type=Path, metavar="DIR", default=RUNS_DIR / "check",
                         help="where the check trains (emptied first; default runs/check)")
    check_p.add_argument("--goldens-dir", type=Path, metavar="DIR", default=GOLDENS_DIR, help="default reports/baselines")
    check_p.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON here")
    check_p.add_argument("--images", type=parse_comma_list, default=(),
                         metavar="A,B", help="fingerprint part only: check these of its images (default: all three)")
    check_p.add_argument("--data-dir", metavar="DIR", help="image directory (default $DIP_DATA_DIR, else datasets/cache)")

    spread_p = commands.add_parser("spread", help="measure how far CPU kernels and thread counts move the check's "
                                                  "numbers; writes the tolerances (about 10 minutes)")
    spread_p.add_argument("--out", type=Path, metavar="FILE", default=REPORTS_DIR / "regression-spread.md",
                          help="the markdown report; the tolerances go beside it as .json (default reports/regression-spread.md)")
    spread_p.add_argument("--work-dir", type=Path, metavar="DIR", default=RUNS_DIR / "spread",
                          help="where the measurement trains (default runs/spread)")
    spread_p.add_argument("--data-dir", metavar="DIR", help="image directory (default $DIP_DATA_DIR, else datasets/cache)")

    power_p = commands.add_parser("power", help="run every mutation of bench.mutations through the check; "
                                                "writes reports/regression-power.md")
    power_p.add_argument("--out", type=Path, metavar="FILE", default=REPORTS_DIR / "regression-power.md",
                         help="the markdown report (default reports/regression-power.md)")
    power_p.add_argument("--work-dir", type=Path, metavar="DIR", default=RUNS_DIR / "power",
                         help="where the mutated copies and their checks run (default runs/power)")
    power_p.add_argument("--mutations", type=parse_comma_list,
                         default=None, metavar="LIST", help="mutations to run, comma-separated (default: all)")
    power_p.add_argument("--data-dir", metavar="DIR", help="image directory (default $DIP_DATA_DIR, else datasets/cache)")

    readme_p = commands.add_parser("readme", help="write the README's results table from a published report's records")
    readme_p.add_argument("--runs", default=README_RUNS, metavar="LIST", type=parse_comma_list,
                          help="the published runs whose records fill the tables, in order, comma-separated: "
                               f"reports/NAME/records (default {','.join(README_RUNS)})")
    readme_p.add_argument("--check", action="store_true", help="write nothing; exit 1 if the README's table differs")

    docs_p = commands.add_parser("docs", help="write docs/protocol.md's tables of the profiles' and the recipe's "
                                              "defaults from the code")
    docs_p.add_argument("--check", action="store_true", help="write nothing; exit 1 if docs/protocol.md's tables differ")

    cmp_p = commands.add_parser("compare", help="two runs side by side (e.g. fast vs reference path)")
    cmp_p.add_argument("--results-dir", type=Path, metavar="DIR", required=True, help="the first run's results directory")
    cmp_p.add_argument("--against", type=Path, metavar="DIR", required=True, help="the other run's results directory")
    cmp_p.add_argument("--labels", default="fast,reference",
                       help="names of the two runs, comma-separated (default fast,reference)")
    cmp_p.add_argument("--out", type=Path, metavar="FILE", required=True, help="the markdown comparison to write")

    speed_p = commands.add_parser("speed", help="reference vs fast path ratio at one size, alternating rounds, each path in a process of its own")
    speed_p.add_argument("--size", type=int, metavar="N", default=256, help="side of the square image trained on (default 256)")
    speed_p.add_argument("--rounds", type=int, metavar="N", default=3,
                         help="alternating rounds of reference and fast path; the median counts (default 3)")
    speed_p.add_argument("--steps", type=int, metavar="N", default=2, help="steps per round and path (default 2)")
    gate = speed_p.add_mutually_exclusive_group()
    gate.add_argument("--min-ratio", type=float, metavar="X", default=None, help="exit 1 if the speed-up is below this")
    gate.add_argument("--gate", action="store_true",
                      help="exit 1 if the speed-up is below the gate for the fast path's precision here "
                           "(bf16: 1.8x; fp32, where the CPU or an instruction-set cap rules bf16 out: 0.8x)")
    speed_p.add_argument("--authors", action="store_true",
                         help="also time the authors' network and loop (bench/authors.py) and print the fast path's ratio to it")
    speed_p.add_argument("--cells", type=int, metavar="K", default=1,
                         help="also time K cells as one batched model (--cells-per-gpu K) against the K cells "
                              "stepped alone, per cell-iteration (default 1: not timed)")
    speed_p.add_argument("--device", default="auto", metavar="{auto,cpu,cuda,cuda:N}",
                         help="auto (default; cuda if available, else cpu), cpu, cuda or cuda:N")

    gpu_p = commands.add_parser("gpu-check", help="first run on a new GPU: CUDA vs the CPU baseline, graphs and batched "
                                                  "cells vs eager, speed and fraction of peak; writes a record to "
                                                  "attach to an issue")
    gpu_p.add_argument("--work-dir", type=Path, metavar="DIR", default=RUNS_DIR / "gpu-check",
                       help="where its runs and gpu-check.json go (default runs/gpu-check)")
    gpu_p.add_argument("--data-dir", metavar="DIR", help="image directory (default $DIP_DATA_DIR, else datasets/cache)")
    session_p = commands.add_parser("gpu-session", help="the one command for a GPU window, without network: gpu-check's "
                                                        "parts, then the paper table (seed 0) in the fastest mode they "
                                                        "proved correct until --budget; writes DIR/gpu-session.tar.gz")
    session_p.add_argument("--out", type=Path, metavar="DIR", required=True,
                           help="where its records, report, log and archive go (must not hold an earlier session's)")
    session_p.add_argument("--budget", type=non_negative_seconds, metavar="SECONDS", required=True,
                           help="wall seconds from its start, report and archive included; training stops in time")
    session_p.add_argument("--rehearse", action="store_true",
                           help="the same flow on the CPU with a tiny configuration (64x64 crops, a few iterations, "
                                "3 images), well under a minute: every step but CUDA itself")
    session_p.add_argument("--data-dir", metavar="DIR", help="image directory (default $DIP_DATA_DIR, else datasets/cache); "
                                                            "every file must be there already: nothing is downloaded")
    sreport_p = commands.add_parser("speed-report", help="reports/speed.md from pytest-benchmark JSON + a profile")
    sreport_p.add_argument("--json", type=Path, metavar="FILE", required=True, action="append",
                           help="pytest-benchmark's JSON output (--benchmark-json); repeat it for other CPU kinds (or this "
                                "one under an instruction-set cap), each a section of its own after the first, "
                                "whose machine the operator profile runs on")
    sreport_p.add_argument("--out", type=Path, metavar="FILE", required=True, help="the markdown report to write")
    sreport_p.add_argument("--profile-size", type=int, metavar="N", default=256,
                           help="side of the square image the operator profile runs on (default 256)")
    sreport_p.add_argument("--device", default="auto", metavar="{auto,cpu,cuda,cuda:N}",
                           help="device of the operator profile: auto (default), cpu, cuda or cuda:N")

    abl_p = commands.add_parser("ablate", help="run the recipe ambiguities as variants and write reports/ablations.md")
    abl_p.add_argument("--profile", choices=PROFILES, default="quick", help="profile every variant starts from (default quick)")
    abl_p.add_argument("--variants", type=parse_comma_list, default=None,
                       metavar="LIST", help="variants to run, comma-separated (default: all; the baseline always runs); "
                                            "images default to barbara,cman,house, seeds to 0-2")
    abl_p.add_argument("--data-dir", metavar="DIR", help="image directory (default $DIP_DATA_DIR, else datasets/cache)")
    abl_p.add_argument("--out", type=Path, metavar="FILE", default=REPORTS_DIR / "ablations.md", help="the report (default reports/ablations.md)")
    abl_p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    add_config_flags(abl_p)  # shared by every variant, e.g. --iterations or --path reference

    pub_p = commands.add_parser("published", help="score the authors' published outputs at full size against Table 1")
    pub_p.add_argument("--data-dir", metavar="DIR", help="image directory (default $DIP_DATA_DIR, else datasets/cache)")
    pub_p.add_argument("--out", type=Path, metavar="FILE", default=REPORTS_DIR / "published.md", help="the report (default reports/published.md)")

    est_p = commands.add_parser("estimate", help="measure a few iterations and estimate a profile's run time")
    est_p.add_argument("--profile", choices=PROFILES, required=True, help="the profile whose run time to estimate")
    add_config_flags(est_p)
    return parser


def _add_with(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--with", dest="others", action="append", default=[], metavar="LABEL=DIR",
                        help="add another run of the same protocol (e.g. --recipe seed) as a column; repeatable")


def _add_results_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results-dir", type=Path, metavar="DIR", help="where records go (default $DIP_RUNS_DIR/<profile>, else runs/<profile>)")


def _add_results_selection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", choices=PROFILES, default=None, help="read $DIP_RUNS_DIR/<profile> (default runs/<profile>)")
    _add_results_dir(parser)


def method_of(argv: list[str]) -> str:
    """The --method a ``run`` command line names (the built-in one if none): its flags depend on it."""
    if not argv or argv[0] != "run":
        return BUILTIN
    for i, arg in enumerate(argv):
        if arg == "--method" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--method="):
            return arg.split("=", 1)[1]
    return BUILTIN


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        parser = build_parser(method_of(argv))
    except BenchError as exc:  # an unknown method, or one that does not follow the interface
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    try:
        return command(args.command)(args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RunStopped as exc:
        print(str(exc), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted: complete records are kept; run the same command again to continue", file=sys.stderr)
        return 130



def command(name: str):
    """The function that runs command ``name`` (its module imported now)."""
    module, function = COMMANDS[name]
    return getattr(importlib.import_module(f"bench.commands.{module}"), function)
