"""``python -m bench gpu-session --out DIR --budget SECONDS`` (``make gpu-session``): the one command for
a short GPU window, on a machine that may have no network.

It runs against the torch already installed and the images already in the data directory (checked
before anything runs: bench.offline), then, in order, each part writing its result as soon as it
finishes, so that a kill at any moment keeps what finished:

1. gpu-check's parts (bench.gpu_check): CUDA against the CPU baseline, CUDA graphs and batched cells
   against eager, the speed of both paths and the authors' code with the fraction of peak;
2. the paper table, seed 0, all 11 images, in the fastest mode those parts showed to be correct
   (:func:`table_mode`), until the budget: a deadline inside the run (bench.budget) stops training after
   a step and every cell in training writes its checkpoint;
3. a report of the complete records with a *Coverage of Table 1* section (partial: the budget decides
   how far the table got).

Everything it produced (records, report and plots, gpu-check.json, gpu-session.json, the log of its own
output) also goes into ``DIR/gpu-session.tar.gz``, at most 16 MB, rewritten after each part and every
30 s while the table trains (bench.session_archive: never a checkpoint or a panel). ``--rehearse`` runs the same flow on the CPU
with a tiny configuration (:data:`REHEARSAL`): every step but CUDA itself, in well under a minute.
"""

from __future__ import annotations

import contextlib
import io
import math
import statistics
import sys
import threading
import time
import traceback
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from bench.analysis.report import write_report
from bench.analysis.tables import coverage_section
from bench.budget import DeadlineStop, run_until
from bench.config import RunConfig, build_config
from bench.coverage import cell_row, coverage
from bench.data import load_images
from bench.errors import BenchError, RunStopped
from bench.gpu_check import (
    CHECK_RECORD,
    GPU_PLAN,
    PARTS,
    CheckPlan,
    check_record,
    new_state,
    part_line,
    require_cuda,
    run_part,
    skipped,
)
from bench.offline import require_local_images
from bench.progress import human_duration
from bench.provenance import provenance, utc_timestamp
from bench.records import FAILED, Record, read_record, write_json_atomic, write_text_atomic
from bench.rundir import RunDir, cell_stem
from bench.session_archive import MANIFEST_NAME, ArchiveSummary, Member, write_archive

# What a session writes into its --out directory
SESSION_RECORD = "gpu-session.json"
LOG_NAME = "gpu-session.log"
ARCHIVE_NAME = "gpu-session.tar.gz"
CHECK_DIR = "check"  # the gpu-check parts' runs
TABLE_DIR = "table"  # the paper table's results directory (resumable with `python -m bench run`)
OUTPUTS = (SESSION_RECORD, CHECK_RECORD, LOG_NAME, ARCHIVE_NAME, CHECK_DIR, TABLE_DIR)
ARCHIVE_ROOT = "gpu-session"  # the folder the archive unpacks into
LOG_TAIL_BYTES = 4_000_000  # a longer log goes into the archive as its end, where a failure shows


@dataclass(frozen=True)
class SessionOptions:
    """What the command line asked for."""

    out: Path
    budget_s: float  # wall seconds from the session's start, the report and the archive included
    rehearse: bool
    data_dir: Path


@dataclass(frozen=True)
class SessionPlan:
    """What a session runs: on a GPU (:data:`GPU_SESSION`) or the CPU rehearsal (:data:`REHEARSAL`)."""

    check: CheckPlan
    table_overrides: tuple[tuple[str, object], ...]  # (dest, value) on top of the paper profile
    reserve_s: float  # kept from training for the stop (checkpoints), the report and the archive
    log_every: float  # seconds between a training cell's status lines (0: none)
    archive_every_s: float  # while the table trains, the archive is rewritten this often
    # The rehearsal's table gets this many cells' worth of time at the pace the eager part measured, so
    # that its deadline falls inside a cell (a stop and a checkpoint) after one has finished. None: the
    # table gets all the time that is left.
    table_cells_of_time: float | None = None
    memory_fraction: float = 0.6  # of the GPU's memory a batch of table cells may be estimated to take
    # CPU threads for torch (None: its default). The rehearsal takes one: on a shared CPU two OpenMP threads
    # spin waiting for each other and a 64x64 step measured 6 s instead of 0.09 s; it tests the flow, not speed.
    cpu_threads: int | None = None


GPU_SESSION = SessionPlan(check=GPU_PLAN, table_overrides=(("run.seeds", (0,)), ("run.device", "cuda")),
                          reserve_s=45.0, log_every=60.0, archive_every_s=30.0)

# 64x64 crops, a few iterations, 2 smoke images and 3 table images: seconds per part on a 2-core CPU
REHEARSAL_IMAGES = ("house", "cman", "peppers")
REHEARSAL = SessionPlan(
    check=CheckPlan(device="cpu", cuda_graphs=False, own_baseline=True,
                    smoke_overrides=(("run.images", REHEARSAL_IMAGES[:2]), ("recipe.iterations", 8),
                                     ("recipe.eval_every", 4)),
                    speed_size=64, speed_rounds=1, speed_steps=1,
                    batched_speed_cells=2, batched_speed_rounds=1, batched_speed_steps=1),
    table_overrides=(("run.seeds", (0,)), ("run.device", "cpu"), ("run.images", REHEARSAL_IMAGES), ("run.crop", 64),
                     ("recipe.iterations", 24), ("recipe.eval_every", 4), ("run.checkpoint_every", 8)),
    reserve_s=5.0, log_every=0.0, archive_every_s=1.0, table_cells_of_time=1.5, cpu_threads=1,
)


@dataclass(frozen=True)
class TableMode:
    cells_per_gpu: int
    cuda_graphs: bool
    why: str


def passed(results: dict[str, dict], key: str) -> bool:
    return results.get(key, {}).get("ok") is True


def table_mode(results: dict[str, dict], batch_cells: int) -> TableMode:
    """The fastest way to train the table that the check parts showed to be correct.

    Batching comes first: on a GPU one cell's step is launch-bound (about 350 kernels), and a batch of K
    cells launches them once for all K, where CUDA graphs make only one cell's launches cheaper. A batch
    is used only where the batched timing measured it faster than the cells alone (on a CPU it is not).
    """
    speed_up = results.get("batched_speed", {}).get("speed_up")
    pays = batch_cells > 1 and speed_up is not None and speed_up > 1.0
    measured = f"batching measured {speed_up:.2f}x" if speed_up is not None else "batching was not timed"
    if pays and passed(results, "batched_graphs_vs_single"):
        return TableMode(batch_cells, True, f"batched cells as CUDA graphs matched eager single cells; {measured}")
    if pays and passed(results, "batched_vs_single"):
        return TableMode(batch_cells, False, f"batched cells matched eager single cells; {measured}")
    batching = f"no batching ({measured if not pays else 'its comparison with single cells did not pass'})"
    if passed(results, "graphs_vs_eager"):
        return TableMode(1, True, f"CUDA graphs matched eager; {batching}")
    return TableMode(1, False, f"eager single cells: CUDA graphs did not pass or were not run; {batching}")


def largest_size_group(config: RunConfig) -> int:
    """The most cells of the run that share one image size: one batch per size."""
    images = load_images()
    sizes = Counter((config.crop, config.crop) if config.crop else (images[k].height, images[k].width)
                    for k in config.images)
    return max(sizes.values()) * len(config.seeds)


def memory_cap(batched_records: list[Record], largest_pixels: int, device: torch.device, fraction: float) -> int | None:
    """How many cells of ``largest_pixels`` one batch may hold on ``device``, scaled from the batched
    smoke run's peak memory per cell and pixel (an overestimate: at 64x64 the weights and Adam's state,
    which do not grow with the image, are much of it). None without a measurement or off a GPU."""
    peaks = [(r.peak_memory_bytes, len(r.batch or [r]), r.size) for r in batched_records if r.peak_memory_bytes]
    if device.type != "cuda" or not peaks:
        return None
    per_pixel = max(peak / cells / (size[0] * size[1]) for peak, cells, size in peaks)
    total = torch.cuda.get_device_properties(device).total_memory
    return max(1, math.floor(fraction * total / (per_pixel * largest_pixels)))


def cell_seconds(eager: list[Record], eager_seconds: float, iterations: int) -> float:
    """Seconds one cell of ``iterations`` takes at the eager run's pace: its median step, plus what each of
    its cells spent outside the steps (start-up, the interpolation floors, the panel)."""
    step_s = statistics.median(r.ms_per_iter for r in eager) / 1e3
    outside_s = max(eager_seconds / len(eager) - eager[0].config.recipe.iterations * step_s, 0.0)
    return iterations * step_s + outside_s


def resume_command(overrides: dict, results_dir: Path) -> str:
    """The `python -m bench run` that continues the table from its checkpoints (the same configuration)."""
    flags = []
    for dest, value in overrides.items():
        flag = "--" + dest.split(".", 1)[1].replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else f"--no-{flag[2:]}")
        elif isinstance(value, tuple):
            flags.append(f"{flag} {','.join(map(str, value))}")
        else:
            flags.append(f"{flag} {value}")
    return f"python -m bench run --profile paper {' '.join(flags)} --results-dir {results_dir}"


def table_coverage(results_dir: Path, records: list[Record], config: RunConfig) -> list[dict]:
    """The Coverage of Table 1 rows of the table's run; also when no cell finished (bench.coverage
    times the unfinished cells by the run's records, and then there are none to time them by)."""
    if records:
        return coverage(results_dir, records)
    run_dir = RunDir(results_dir)
    return [asdict(cell_row(run_dir, cell_stem(info.key, seed), info.name, seed, (info.height, info.width),
                            config.recipe.iterations, {}))
            for info in load_images().values() for seed in config.seeds]


def records_on_disk(results_dir: Path) -> tuple[list[Record], list[Record]]:
    """The complete and the failed records in ``results_dir``, whatever wrote them."""
    paths = RunDir(results_dir).record_paths()
    return ([r for p in paths if (r := read_record(p))], [r for p in paths if (r := read_record(p, FAILED))])


def write_table_report(results_dir: Path, records: list[Record], failures: list[Record], rows: list[dict]) -> Path:
    """The table's report with its coverage: the usual report of the complete records (no panel links:
    the panels stay behind), or the coverage alone when none finished."""
    out = RunDir(results_dir).report
    if records:
        return write_report(records, out, failures=failures, coverage=rows)
    failed = [f"- {f['name']} seed {f['seed']}: **failed**, {f['reason']}" for f in failures]
    text = "\n\n".join(["# Paper table, seed 0: no cell finished within the time budget", *coverage_section(rows),
                        *failed]) + "\n"
    write_text_atomic(out, text)
    return out


class Tee(io.TextIOBase):
    """A text stream that writes to its terminal (or pipe) and to the session's log."""

    def __init__(self, stream, log) -> None:
        self.stream, self.log = stream, log

    def write(self, text: str) -> int:
        self.stream.write(text)
        self.log.write(text)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()
        self.log.flush()

    def isatty(self) -> bool:  # tqdm and the status lines decide by the terminal, not the log
        return self.stream.isatty()

    @property
    def encoding(self) -> str | None:
        return getattr(self.stream, "encoding", None)

    def fileno(self) -> int:  # what writes to the descriptor itself (a subprocess) bypasses the log
        return self.stream.fileno()


@contextlib.contextmanager
def tee_output(path: Path):
    """While active, everything printed also goes to ``path`` (a one-line error too, before it is raised)."""
    with open(path, "a", encoding="utf-8", buffering=1) as log:
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = Tee(saved[0], log), Tee(saved[1], log)
        try:
            yield
        except BenchError as exc:
            log.write(f"error: {exc}\n")
            raise
        finally:
            sys.stdout, sys.stderr = saved


def require_fresh(out: Path) -> None:
    """A session starts from nothing: an earlier session's records would be mixed in, or its archive lost."""
    found = [name for name in OUTPUTS if (out / name).exists()]
    if found:
        raise BenchError(f"{out} already holds a session's output ({', '.join(found)}): carry it away and delete it, "
                         "or choose another --out")


class GpuSession:
    """One session as it goes: the parts' results, the session record, the archive rewritten after each part."""

    def __init__(self, options: SessionOptions, plan: SessionPlan, device: torch.device) -> None:
        self.options, self.plan, self.device = options, plan, device
        self.start = time.monotonic()
        self.end = self.start + options.budget_s
        self.out = options.out
        self.check = new_state(plan.check, device, options.data_dir, self.out / CHECK_DIR)
        self.results: dict[str, dict] = {}
        self.seconds: dict[str, float] = {}
        self.steps = len(PARTS) + 2  # the check parts, the table, the report
        self.record: dict = {"rehearsal": options.rehearse, "budget_s": options.budget_s, "reserve_s": plan.reserve_s,
                             "started": utc_timestamp(), "parts": [], "table": None, "complete": False}

    # --- bookkeeping ---

    def left(self) -> float:
        return self.end - time.monotonic()

    def say(self, step: int, line: str, seconds: float) -> None:
        used = time.monotonic() - self.start
        print(f"[{step}/{self.steps}] {line} ({human_duration(seconds)}; {human_duration(used)} used, "
              f"{human_duration(max(self.left(), 0.0))} left)", flush=True)

    def save(self) -> ArchiveSummary:
        """gpu-check.json, gpu-session.json and the archive that holds them, as they stand now."""
        write_json_atomic(self.out / CHECK_RECORD, check_record(self.results, self.device))
        write_json_atomic(self.out / SESSION_RECORD, {**self.record, "provenance": provenance(self.device)})
        return self.write_archive()

    def write_archive(self) -> ArchiveSummary:
        return write_archive(self.out / ARCHIVE_NAME, self.archive_members(),
                             manifest_name=f"{ARCHIVE_ROOT}/{MANIFEST_NAME}")

    @contextlib.contextmanager
    def archive_refreshed(self, every_s: float):
        """While the table trains, rewrite the archive every ``every_s`` seconds from another thread, so that
        a kill leaves one with the cells finished so far (each record is on disk as its cell ends)."""
        done = threading.Event()

        def refresh() -> None:
            while not done.wait(every_s):
                with contextlib.suppress(BenchError, OSError):  # a failed refresh leaves the previous archive
                    self.write_archive()

        thread = threading.Thread(target=refresh, name="archive refresh", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    def archive_members(self) -> list[Member]:
        """What goes into the archive, most important first: the session's and the check's records, the
        table's report, its records, the check parts' records, the report's plots, then the log."""
        table = RunDir(self.out / TABLE_DIR)
        figures = table.report.parent / table.report.stem
        paths = [self.out / SESSION_RECORD, self.out / CHECK_RECORD, table.report, *table.record_paths()]
        paths += [p for run in sorted((self.out / CHECK_DIR).glob("*")) for p in RunDir(run).record_paths()]
        paths += sorted(figures.glob("*.png"))
        members = [Member(f"{ARCHIVE_ROOT}/{p.relative_to(self.out).as_posix()}", p.read_bytes())
                   for p in paths if p.is_file()]
        log = self.out / LOG_NAME
        if log.is_file():
            members.append(Member(f"{ARCHIVE_ROOT}/{LOG_NAME}", log.read_bytes()[-LOG_TAIL_BYTES:]))
        return members

    # --- the steps ---

    def run_check_parts(self) -> None:
        for step, part in enumerate(PARTS, 1):
            began = time.monotonic()
            if self.left() <= self.plan.reserve_s:
                result = skipped("the time budget was spent before this part")
            else:
                result = run_part(part, self.check)
            self.seconds[part.key] = time.monotonic() - began
            self.results[part.key] = result
            self.record["parts"].append({"key": part.key, "title": part.title, "ok": result.get("ok"),
                                         "seconds": round(self.seconds[part.key], 2), "line": part_line(part, result)})
            self.say(step, part_line(part, result), self.seconds[part.key])
            self.save()

    def table_deadline(self, config: RunConfig) -> float:
        """When the table stops: the budget less the reserve; in the rehearsal, also after
        ``table_cells_of_time`` cells at the pace of the eager part."""
        deadline = self.end - self.plan.reserve_s
        eager = self.check.eager
        if self.plan.table_cells_of_time is not None and eager:
            cell_s = cell_seconds(eager, self.seconds["cuda_vs_cpu"], config.recipe.iterations)
            deadline = min(deadline, time.monotonic() + self.plan.table_cells_of_time * cell_s)
        return deadline

    def table_config(self) -> tuple[RunConfig, TableMode, dict]:
        base = build_config("paper", dict(self.plan.table_overrides))
        batch = largest_size_group(base)
        largest = max((info.height * info.width for k, info in load_images().items() if k in base.images), default=0)
        pixels = base.crop ** 2 if base.crop else largest
        batched = [r for p in RunDir(self.out / CHECK_DIR / "batched").record_paths() if (r := read_record(p))]
        cap = memory_cap(batched, pixels, self.device, self.plan.memory_fraction)
        mode = table_mode(self.results, batch if cap is None else min(batch, cap))
        overrides = {**dict(self.plan.table_overrides), "run.cells_per_gpu": mode.cells_per_gpu,
                     "recipe.cuda_graphs": mode.cuda_graphs}
        return build_config("paper", overrides), mode, overrides

    def run_table(self) -> int | None:
        """Train the table until its deadline, then write its report. Returns the exit status of a stop
        signal (None: no signal)."""
        step, began = len(PARTS) + 1, time.monotonic()
        config, mode, overrides = self.table_config()
        results_dir = self.out / TABLE_DIR
        table = {"mode": asdict(mode), "cells": len(config.images) * len(config.seeds),
                 "resume": resume_command(overrides, results_dir)}
        self.record["table"] = table
        deadline = self.table_deadline(config)
        if deadline <= time.monotonic():
            table["skipped"] = "the time budget was spent before the table"
            self.say(step, f"SKIP paper table: {table['skipped']}", 0.0)
            self.save()
            self.report(config, [], [], step + 1)  # the coverage still says what is missing
            return None
        print(f"paper table: {table['cells']} cells, {mode.why}: --cells-per-gpu {mode.cells_per_gpu}"
              f"{' --cuda-graphs' if mode.cuda_graphs else ''}; "
              f"stops after {human_duration(deadline - time.monotonic())}", flush=True)
        stop = DeadlineStop(deadline)
        try:
            with self.archive_refreshed(self.plan.archive_every_s):
                outcome = run_until(config, self.options.data_dir, results_dir, stop, log_every=self.plan.log_every)
            records, failures, stopped, error = outcome.outcome.records, outcome.outcome.failures, outcome.stopped, None
        except Exception as exc:  # a crash in training (out of memory, a CUDA error): report the cells it finished
            if not isinstance(exc, BenchError):
                traceback.print_exc()
            error = f"{type(exc).__name__}: {exc}".splitlines()[0] if not isinstance(exc, BenchError) else str(exc)
            (records, failures), stopped = records_on_disk(results_dir), None
        table.update(done=len(records), failed=len(failures), stopped=stopped, error=error,
                     stopped_by=None if stopped is None else stop.name, seconds=round(time.monotonic() - began, 2))
        state = f"stopped by {stop.name}" if stopped else (f"crashed: {error}" if error else "every cell finished")
        self.say(step, f"{'FAIL' if failures or error else 'OK'} paper table: {len(records)} of {table['cells']} cells "
                       f"done, {len(failures)} failed; {state}", time.monotonic() - began)
        self.save()
        self.report(config, records, failures, step + 1)
        return stop.exit_code if stop.signum is not None else None

    def report(self, config: RunConfig, records: list[dict], failures: list[dict], step: int) -> None:
        began = time.monotonic()
        results_dir = self.out / TABLE_DIR
        rows = table_coverage(results_dir, records, config)
        path = write_table_report(results_dir, records, failures, rows)
        done = sum(r["state"] == "done" for r in rows)
        self.record["table"]["report"] = path.relative_to(self.out).as_posix()
        self.record["table"]["coverage"] = dict(Counter(r["state"] for r in rows))
        self.say(step, f"report {path}: {done} of {len(rows)} Table 1 cells done", time.monotonic() - began)
        self.save()

    def finish(self) -> int:
        """Mark the session complete, write the archive a last time; the exit status (1: a part or a cell failed)."""
        self.record["complete"] = True
        archive = self.save()
        left_out = f"; left out to stay under the limit: {', '.join(archive.left_out)}" if archive.left_out else ""
        print(f"archive {archive.path}: {len(archive.members)} files, {archive.size_bytes / 1e3:.0f} kB{left_out}; "
              "carry it back and commit it", flush=True)
        table = self.record["table"] or {}
        failed = any(r.get("ok") is False for r in self.results.values()) or table.get("failed") or table.get("error")
        return 1 if failed else 0


def gpu_session(options: SessionOptions) -> int:
    """Run a session (see the module's docstring); the exit status: 0, 1 if a part or a cell failed, the
    signal's if one stopped it."""
    plan = REHEARSAL if options.rehearse else GPU_SESSION
    if options.budget_s <= plan.reserve_s:
        raise BenchError(f"--budget {options.budget_s:g} leaves nothing after the {plan.reserve_s:g} s kept for "
                         "stopping, the report and the archive")
    device = torch.device("cpu") if options.rehearse else require_cuda(
        "gpu-session", hint="--rehearse runs the same flow on the CPU")
    images = build_config("smoke", dict(plan.check.smoke_overrides)).images
    images += build_config("paper", dict(plan.table_overrides)).images
    require_local_images(tuple(dict.fromkeys(images)), options.data_dir)
    require_fresh(options.out)
    options.out.mkdir(parents=True, exist_ok=True)
    if plan.cpu_threads is not None:
        torch.set_num_threads(plan.cpu_threads)
    with tee_output(options.out / LOG_NAME):
        session = GpuSession(options, plan, device)
        print(f"gpu-session{' (rehearsal on the CPU)' if options.rehearse else ''}: budget "
              f"{human_duration(options.budget_s)}, output in {options.out}", flush=True)
        try:
            session.run_check_parts()
            signal_status = session.run_table()
            status = session.finish()
        except (RunStopped, KeyboardInterrupt):
            session.record["stopped"] = "by a signal"
            with contextlib.suppress(Exception):
                session.save()
            raise
        if signal_status is not None:
            raise RunStopped(f"stopped by a signal: the complete records, the report and {ARCHIVE_NAME} are in "
                             f"{options.out}", signal_status)
        return status
