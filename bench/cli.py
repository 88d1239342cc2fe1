"""Command line: ``python -m bench {run,status,report,check,spread,power,estimate,compare,ablate,published,speed,speed-report}``.

User errors (unknown image or flag, bad value, corrupt data, diverged training) print one line and
exit with status 2; failed regression checks exit with status 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from bench.config import PROFILES, add_config_flags, build_config, cell_recipe, resolve_device
from bench.data import REPO_ROOT, data_dir
from bench.errors import BenchError, RunStopped
from bench.records import load_failures, load_records, write_json_atomic, write_text_atomic
from bench.regression import GOLDENS_DIR, PARTS
from bench.report import check_comparable, render, shared_config, write_report
from bench.executors import EXECUTORS, JOBS_DIR, ExecutorOptions, planning_device, record_submission, run_local, submit_slurm
from bench.runner import collect, estimate_seconds, is_done_on_any_node, measure_ms_per_iter, plan_run, run, run_fields
from dip.skipnet import SkipNetConfig, check_input_size

RUNS_DIR = REPO_ROOT / "runs"
REPORTS_DIR = REPO_ROOT / "reports"


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line rather than the usage block plus a line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m bench", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run_p = commands.add_parser("run", help="train every (image, seed) cell of a profile and write records")
    run_p.add_argument("--profile", choices=PROFILES, help="default: paper with CUDA, quick without")
    _add_results_dir(run_p)
    run_p.add_argument("--data-dir", help="image directory (default $DIP_DATA_DIR, else datasets/cache)")
    run_p.add_argument("--publish", action="store_true", help="also write reports/<profile>.md and its records")
    run_p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    _add_with(run_p)
    add_config_flags(run_p)
    ex = run_p.add_argument_group("where the cells run (none of it changes a result)")
    ex.add_argument("--executor", choices=EXECUTORS, default="inline",
                    help="inline: here, one cell after another (default); local: parallel subprocesses, one per "
                         "visible GPU or --jobs; slurm: a submitit job array, one task per cell")
    ex.add_argument("--jobs", type=int, help="local: parallel jobs (default: one per visible GPU, else 1)")
    ex.add_argument("--slurm-partition", help="slurm: sbatch --partition")
    ex.add_argument("--slurm-time", type=int, metavar="MINUTES", help="slurm: sbatch --time per job (default 1440)")
    ex.add_argument("--gpus-per-job", type=int, default=1, help="slurm: GPUs per job (default 1)")
    ex.add_argument("--slurm-param", dest="slurm_params", action="append", default=[], metavar="KEY=VALUE",
                    help="slurm: any other sbatch option, e.g. account=lab or qos=high; repeatable")

    status_p = commands.add_parser("status", help="done / running / failed / stopped / pending cells of a run")
    status_p.add_argument("run", metavar="RUN", help="a results directory, or a run name under runs/")

    report_p = commands.add_parser("report", help="markdown table from stored records")
    _add_results_selection(report_p)
    report_p.add_argument("--out", type=Path, help="default reports/<profile>.md, records beside it")
    _add_with(report_p)

    check_p = commands.add_parser("check", help="the regression check: recipe fingerprint and outcome against the "
                                                 "goldens in reports/baselines; exit 1 outside tolerance")
    check_p.add_argument("--part", choices=("all", *PARTS), default="all",
                         help="all (default): fingerprint then outcome; fingerprint: 24 smooth fp32 iterations "
                              "(about 15 s); outcome: the smoke profile's PSNR (about 40 s)")
    check_p.add_argument("--record", action="store_true",
                         help="write new goldens instead of checking (after an intended recipe change; "
                              "tolerances from reports/regression-spread.json)")
    check_p.add_argument("--work-dir", type=Path, default=RUNS_DIR / "check",
                         help="where the check trains (emptied first; default runs/check)")
    check_p.add_argument("--goldens-dir", type=Path, default=GOLDENS_DIR, help="default reports/baselines")
    check_p.add_argument("--json", type=Path, help="also write the results as JSON here")
    check_p.add_argument("--data-dir", help="image directory (default $DIP_DATA_DIR, else datasets/cache)")

    spread_p = commands.add_parser("spread", help="measure how far CPU kernels and thread counts move the check's "
                                                  "numbers; writes the tolerances (about 10 minutes)")
    spread_p.add_argument("--out", type=Path, default=REPORTS_DIR / "regression-spread.md")
    spread_p.add_argument("--work-dir", type=Path, default=RUNS_DIR / "spread")
    spread_p.add_argument("--data-dir", help="image directory (default $DIP_DATA_DIR, else datasets/cache)")

    power_p = commands.add_parser("power", help="run every mutation of bench.mutations through the check; "
                                                "writes reports/regression-power.md")
    power_p.add_argument("--out", type=Path, default=REPORTS_DIR / "regression-power.md")
    power_p.add_argument("--work-dir", type=Path, default=RUNS_DIR / "power")
    power_p.add_argument("--mutations", type=lambda t: tuple(x.strip() for x in t.split(",") if x.strip()),
                         default=None, metavar="LIST", help="default: all")
    power_p.add_argument("--data-dir", help="image directory (default $DIP_DATA_DIR, else datasets/cache)")

    cmp_p = commands.add_parser("compare", help="two runs side by side (e.g. fast vs reference path)")
    cmp_p.add_argument("--results-dir", type=Path, required=True)
    cmp_p.add_argument("--against", type=Path, required=True, help="the other run's results directory")
    cmp_p.add_argument("--labels", default="fast,reference", help="names of the two runs, comma-separated")
    cmp_p.add_argument("--out", type=Path, required=True)

    speed_p = commands.add_parser("speed", help="reference vs fast path ratio at one size, in one process")
    speed_p.add_argument("--size", type=int, default=256)
    speed_p.add_argument("--rounds", type=int, default=3)
    speed_p.add_argument("--steps", type=int, default=2, help="steps per round and path")
    gate = speed_p.add_mutually_exclusive_group()
    gate.add_argument("--min-ratio", type=float, default=None, help="exit 1 if the speed-up is below this")
    gate.add_argument("--gate", action="store_true",
                      help="exit 1 if the speed-up is below the gate for the fast path's precision here "
                           "(bf16: 1.8x; fp32, where the CPU or an instruction-set cap rules bf16 out: 0.8x)")
    speed_p.add_argument("--device", default="auto")

    sreport_p = commands.add_parser("speed-report", help="reports/speed.md from pytest-benchmark JSON + a profile")
    sreport_p.add_argument("--json", type=Path, required=True)
    sreport_p.add_argument("--out", type=Path, required=True)
    sreport_p.add_argument("--profile-size", type=int, default=256)
    sreport_p.add_argument("--device", default="auto")

    abl_p = commands.add_parser("ablate", help="run the recipe ambiguities as variants and write reports/ablations.md")
    abl_p.add_argument("--profile", choices=PROFILES, default="quick")
    abl_p.add_argument("--variants", type=lambda t: tuple(x.strip() for x in t.split(",") if x.strip()), default=None,
                       metavar="LIST", help="default: all (the baseline always runs); images default to barbara,cman,house, seeds to 0-2")
    abl_p.add_argument("--data-dir", help="image directory (default $DIP_DATA_DIR, else datasets/cache)")
    abl_p.add_argument("--out", type=Path, default=REPORTS_DIR / "ablations.md")
    abl_p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    add_config_flags(abl_p)  # shared by every variant, e.g. --iterations or --path reference

    pub_p = commands.add_parser("published", help="score the authors' published outputs at full size against Table 1")
    pub_p.add_argument("--data-dir", help="image directory (default $DIP_DATA_DIR, else datasets/cache)")
    pub_p.add_argument("--out", type=Path, default=REPORTS_DIR / "published.md")

    est_p = commands.add_parser("estimate", help="measure a few iterations and estimate a profile's run time")
    est_p.add_argument("--profile", choices=PROFILES, required=True)
    add_config_flags(est_p)
    return parser


def _add_with(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--with", dest="others", action="append", default=[], metavar="LABEL=DIR",
                        help="add another run of the same protocol (e.g. --recipe seed) as a column; repeatable")


def parse_others(specs: list[str]) -> dict[str, list[dict]]:
    """{"seed recipe": records} from ["seed recipe=runs/quick-seed"]."""
    others = {}
    for spec in specs:
        label, sep, directory = spec.partition("=")
        if not sep or not label.strip() or not directory.strip():
            raise BenchError(f"--with expects LABEL=DIR, got {spec!r}")
        others[label.strip()] = load_records(Path(directory.strip()))
    return others


def check_others_match(config, others: dict[str, list[dict]]) -> None:
    """Refuse, before training, a --with run that the report would refuse after it: the same rule
    (bench.report.check_comparable) on the configuration this run's records will share."""
    device = resolve_device(config.device)
    mine = run_fields(config, device, cell_recipe(config, device, out_channels=1))  # channels: a recipe field
    for label, records in others.items():
        check_comparable(mine, shared_config(records), label)


def _add_results_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results-dir", type=Path, help="where records go (default runs/<profile>)")


def _add_results_selection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", choices=PROFILES, default=None, help="read runs/<profile>")
    _add_results_dir(parser)


def results_dir_of(args: argparse.Namespace) -> Path:
    if args.results_dir is not None:
        return args.results_dir
    if args.profile is None:
        raise BenchError("say which run: --profile NAME or --results-dir DIR")
    return RUNS_DIR / args.profile


def published_paths(name: str) -> tuple[Path, Path]:
    """Where a run's published report goes, and the snapshot of its records beside it."""
    return REPORTS_DIR / f"{name}.md", REPORTS_DIR / name / "records"


def run_name(profile: str, recipe_name: str = "paper") -> str:
    """runs/<name> and reports/<name>.md: the profile, suffixed with the recipe unless it is the paper's."""
    return profile if recipe_name == "paper" else f"{profile}-{recipe_name}"


def config_overrides(args: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(args).items() if "." in k}


def human_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def choose_profile(args: argparse.Namespace) -> str:
    """--profile, else paper on a CUDA machine and quick (saying so, with the paper's cost) on CPU."""
    if args.profile:
        return args.profile
    if torch.cuda.is_available():
        return "paper"
    paper = build_config("paper", config_overrides(args))
    if not paper.images:  # only the user's own files: no Table 1 images to estimate the paper profile on
        print("No CUDA device: running the 'quick' profile (not comparable to Table 1).", flush=True)
        return "quick"
    seconds = estimate_seconds(paper, measure_ms_per_iter(paper))
    print(
        f"No CUDA device: running the 'quick' profile (not comparable to Table 1); the paper profile, "
        f"'python -m bench run --profile paper', would take about {human_duration(seconds)} on this machine "
        f"(measured here: {len(paper.images)} images x {paper.recipe.iterations} iterations).",
        flush=True,
    )
    return "quick"


def cmd_run(args: argparse.Namespace) -> int:
    options = ExecutorOptions(args.executor, args.jobs, args.slurm_partition, args.slurm_time, args.gpus_per_job,
                              tuple(args.slurm_params))
    profile = choose_profile(args)
    config = build_config(profile, config_overrides(args))
    results_dir = args.results_dir or RUNS_DIR / run_name(config.profile, config.recipe_name)
    if options.executor == "slurm":
        if args.others or args.publish:
            raise BenchError("--with and --publish need the finished records: run `python -m bench report` once the jobs are done")
        return submit_to_slurm(config, options, data_dir(args.data_dir), results_dir)
    others = parse_others(args.others)  # read and checked before training: a bad --with fails now, not in an hour
    check_others_match(config, others)
    data = data_dir(args.data_dir)
    problems = []
    if options.executor == "local":
        cells, todo = plan_run(config, data, results_dir)
        record_submission(results_dir, "local", [], planned=cells)
        problems = run_local(todo, config, options, data, results_dir, progress=args.progress)
        outcome = collect(cells)
    else:
        outcome = run(config, data, results_dir, progress=args.progress)
    records, failures = outcome.records, outcome.failures
    if records:
        report_path = write_report(records, results_dir / "report.md", others=others, results_dir=results_dir, failures=failures)
        if args.publish:
            report_path = write_report(records, *published_paths(run_name(config.profile, config.recipe_name)),
                                       others=others, results_dir=results_dir, failures=failures)
        print(render(records, others, failures=failures))
        print(f"Report written to {report_path}")
    for line in problems:
        print(f"error: {line}", file=sys.stderr)
    if failures:
        names = ", ".join(f"{f['name']} seed {f['seed']}" for f in failures)
        print(f"error: {len(failures)} cell{'s' if len(failures) > 1 else ''} failed ({names}): training diverged; "
              f"reasons in their records in {results_dir}", file=sys.stderr)
    return 1 if failures or problems else 0


def submit_to_slurm(config, options: ExecutorOptions, data: Path, results_dir: Path) -> int:
    """Check every cell here, then submit those without a complete record as one job array; do not wait."""
    cells, todo = plan_run(config, data, results_dir, device=planning_device(config, options), done=is_done_on_any_node)
    if not todo:
        print(f"nothing to submit: all {len(cells)} cells have complete records in {results_dir}")
        return 0
    entries = submit_slurm(todo, config, options, data, results_dir)
    record_submission(results_dir, "slurm", [], planned=cells)
    scheduled = f"array {entries[0]['job_id'].split('_')[0]}" if len(entries) > 1 else f"job {entries[0]['job_id']}"
    print(f"submitted {len(entries)} job{'s' if len(entries) > 1 else ''} (Slurm {scheduled}, one per cell) with records "
          f"going to {results_dir} and logs to {results_dir / JOBS_DIR}")
    print(f"follow them with: python -m bench status {results_dir}")
    print(f"when they are done: python -m bench report --results-dir {results_dir}  (or submit the same command "
          f"again: finished cells are skipped, stopped ones resume)")
    return 0


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
        first = records[0]["config"]
        out, snapshot = published_paths(run_name(first["profile"], first.get("recipe_name", "paper")))
    else:
        out, snapshot = args.out, args.out.with_suffix("") / "records"
    if snapshot.resolve() == results_dir.resolve():
        snapshot = None  # the records already sit there
    write_report(records, out, snapshot, others=others, results_dir=results_dir, failures=failures)
    print(render(records, others, failures=failures))
    print(f"Report written to {out}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from bench import regression

    parts = list(PARTS) if args.part == "all" else [args.part]
    directory = data_dir(args.data_dir)
    if args.record:
        for part in parts:
            path = regression.record(part, directory, args.work_dir, args.goldens_dir)
            print(f"{part}: new golden written to {path}; commit it with the reason for the change")
        return 0
    results = []
    for part in parts:
        result = regression.run_check(part, directory, args.work_dir, args.goldens_dir)
        results.append(result)
        for note in result.notes:
            print(f"note ({part}): {note}")
        for line in result.lines[:-1]:
            print(f"FAIL {line}")
        print(("OK " if result.ok else "FAIL ") + result.lines[-1])
    if args.json:
        write_json_atomic(args.json, {"results": [r.to_dict() for r in results]})
    return 0 if all(r.ok for r in results) else 1


def cmd_spread(args: argparse.Namespace) -> int:
    from bench.spread import measure, write_spread

    data_dir(args.data_dir)  # checked here, before ten minutes of subprocesses
    spread = measure(args.work_dir)
    write_spread(spread, args.work_dir, args.out)
    print(f"Spread written to {args.out} and {args.out.with_suffix('.json')}")
    return 0


def cmd_power(args: argparse.Namespace) -> int:
    from bench.mutations import measure_power, select_mutations, write_power

    mutations = select_mutations(args.mutations)
    results = measure_power(mutations, data_dir(args.data_dir), args.work_dir)
    write_power(results, args.out)
    missed = [r["name"] for r in results if not r["caught"] and not r["blind_spot"]]
    suite = [r for r in results if not r["blind_spot"] and r["name"] != "unmodified"]
    print(f"Power report written to {args.out}: {len(suite) - len(missed)} of {len(suite)} mutations caught"
          + (f"; missed: {', '.join(missed)}" if missed else ""))
    return 0 if not missed else 1


def cmd_estimate(args: argparse.Namespace) -> int:
    config = build_config(args.profile, config_overrides(args))
    measured = measure_ms_per_iter(config)
    seconds = estimate_seconds(config, measured)
    sizes = ", ".join(f"{w}x{h}: {ms:.0f} ms/iter" for (h, w), ms in measured.items())
    print(f"profile {args.profile}: about {human_duration(seconds)} on this machine ({seconds:.0f} s; measured {sizes})")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from bench.parity import side_by_side

    labels = [x.strip() for x in args.labels.split(",")]
    if len(labels) != 2 or not all(labels):
        raise BenchError(f"--labels needs two names separated by a comma, got {args.labels!r}")
    text = side_by_side(load_records(args.results_dir), load_records(args.against), *labels)
    write_text_atomic(args.out, text)
    print(text)
    print(f"Comparison written to {args.out}")
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    from bench.ablate import ABLATION_IMAGES, run_ablations, select_variants, write_ablations

    variants = select_variants(args.variants)
    shared = {"run.images": ABLATION_IMAGES, "run.seeds": (0, 1, 2)} | config_overrides(args)
    results = run_ablations(args.profile, shared, variants, data_dir(args.data_dir), RUNS_DIR, args.progress)
    out = write_ablations(results, args.out)
    print(f"Ablation report written to {out}")
    return 0


def cmd_published(args: argparse.Namespace) -> int:
    from bench.published import render_published, score_published, write_published

    record = score_published(data_dir(args.data_dir))
    out = write_published(record, args.out)
    print(render_published(record))
    print(f"Written to {out}")
    return 0


def check_size(size: int) -> None:
    """The paper network must be able to take a size x size image."""
    try:
        check_input_size(size, size, SkipNetConfig())
    except ValueError as exc:
        raise BenchError(str(exc)) from None


# The speed gate by the fast path's precision. bf16 on AMX or AVX-512 BF16: measured 2.8x (Intel AMX) and
# 2.3-2.6x (AMD EPYC) at 256x256. fp32 (no bf16 instructions, or an instruction-set cap below them): the
# fast path differs only by fused Adam and measured about 1.0x; the gate then only catches a fast path
# that became slower than the reference.
SPEED_GATES = {"bf16": 1.8, "fp16": 1.8, "fp32": 0.8}


def cmd_speed(args: argparse.Namespace) -> int:
    from bench.speed import measure_ratio

    if args.rounds < 1 or args.steps < 1:
        raise BenchError("--rounds and --steps must be >= 1")
    check_size(args.size)
    m = measure_ratio(args.size, rounds=args.rounds, steps=args.steps, device=args.device)
    print(
        f"{m.size}x{m.size}: reference ({m.reference_precision}) {m.reference_s * 1e3:.0f} ms/iter, "
        f"fast ({m.fast_precision}) {m.fast_s * 1e3:.0f} ms/iter: speed-up {m.ratio:.2f}x "
        f"(median of {m.rounds} alternating rounds of {m.steps_per_round} steps)"
    )
    required = SPEED_GATES[m.fast_precision] if args.gate else args.min_ratio
    if required is not None and m.ratio < required:
        print(f"FAIL speed-up {m.ratio:.2f}x is below the required {required:g}x")
        return 1
    if required is not None:
        print(f"OK speed-up {m.ratio:.2f}x >= {required:g}x")
    return 0


def cmd_speed_report(args: argparse.Namespace) -> int:
    from bench.speed import operator_profile
    from bench.speed_report import load_benchmarks, render_speed

    check_size(args.profile_size)
    data = load_benchmarks(args.json)
    profiles = {path: operator_profile(path, args.profile_size, device=args.device) for path in ("reference", "fast")}
    text = render_speed(data, profiles, args.profile_size)
    write_text_atomic(args.out, text)
    print(text)
    print(f"Speed report written to {args.out}")
    return 0


COMMANDS = {
    "run": cmd_run,
    "status": cmd_status,
    "report": cmd_report,
    "check": cmd_check,
    "spread": cmd_spread,
    "power": cmd_power,
    "estimate": cmd_estimate,
    "compare": cmd_compare,
    "ablate": cmd_ablate,
    "published": cmd_published,
    "speed": cmd_speed,
    "speed-report": cmd_speed_report,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RunStopped as exc:
        print(str(exc), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted: complete records are kept; run the same command again to continue", file=sys.stderr)
        return 130
