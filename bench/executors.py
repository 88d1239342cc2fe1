"""Where the cells run: ``inline`` (this process, one after another), ``local`` (parallel subprocesses
through submitit's LocalExecutor: one per visible GPU, or ``--jobs N``) or ``slurm`` (a submitit job
array, one task per cell).

Every cell is one job, and a job is :func:`bench.runner.run` on a one-cell configuration: it takes the
cell's lock, resumes from the cell's checkpoint, and writes the record atomically into the shared
results directory, as an inline run does. The results therefore do not depend on the executor, and a
re-submission skips the cells that already have a complete record. Each job's logs and submitit's
files go to ``<results>/jobs/``; ``jobs/submitted.json`` lists which job ran which cell (for
``python -m bench status``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from tqdm import tqdm

from bench.config import RunConfig
from bench.errors import BenchError, RunStopped
from bench.records import FAILED, read_record, write_json_atomic
from bench.runner import Cell, label, run
from bench.stop import StopRequest

EXECUTORS = ("inline", "local", "slurm")
JOBS_DIR = "jobs"
MANIFEST = "submitted.json"
DEFAULT_SLURM_TIME_MIN = 24 * 60  # a paper-profile cell takes minutes to hours; the job requeues on timeout
LOCAL_TIMEOUT_MIN = 7 * 24 * 60  # submitit's LocalExecutor kills a job after 2 minutes unless told otherwise


@dataclass(frozen=True)
class ExecutorOptions:
    """How the cells of a run are executed (none of it changes a result, so none of it is in a record)."""

    executor: str = "inline"
    jobs: int | None = None  # local: parallel jobs (default: one per visible GPU, else 1)
    slurm_partition: str | None = None
    slurm_time: int | None = None  # minutes per job (sbatch --time); None: DEFAULT_SLURM_TIME_MIN
    gpus_per_job: int = 1
    slurm_params: tuple[str, ...] = ()  # KEY=VALUE, passed to sbatch as --KEY=VALUE

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise BenchError(f"unknown executor {self.executor!r}; choose from {', '.join(EXECUTORS)}")
        if self.jobs is not None and (self.jobs < 1 or self.executor != "local"):
            raise BenchError("--jobs takes a positive number, with --executor local")
        slurm_only = self.slurm_partition is not None or self.slurm_params or self.slurm_time is not None
        if slurm_only and self.executor != "slurm":
            raise BenchError("--slurm-partition, --slurm-time and --slurm-param need --executor slurm")
        if (self.slurm_time is not None and self.slurm_time <= 0) or self.gpus_per_job < 0:
            raise BenchError("--slurm-time must be positive and --gpus-per-job >= 0")
        bad = [p for p in self.slurm_params if "=" not in p or not p.split("=", 1)[0]]
        if bad:
            raise BenchError(f"--slurm-param expects KEY=VALUE (an sbatch option without its dashes), got {bad[0]!r}")

    def sbatch_parameters(self) -> dict:
        """What submitit's SlurmExecutor gets: partition, time, GPUs, and the pass-through options."""
        params: dict = {"time": self.slurm_time or DEFAULT_SLURM_TIME_MIN, "gpus_per_node": self.gpus_per_job, "nodes": 1, "ntasks_per_node": 1}
        if self.slurm_partition:
            params["partition"] = self.slurm_partition
        extra = dict(p.split("=", 1) for p in self.slurm_params)
        if extra:
            params["additional_parameters"] = extra
        return params


def _submitit():
    try:
        import submitit
    except ImportError:
        raise BenchError("--executor local/slurm needs submitit: pip install submitit") from None
    return submitit


def one_cell_config(config: RunConfig, cell: Cell) -> RunConfig:
    """``config`` narrowed to one cell: the same resolved configuration, so the same record."""
    if "file" in cell.config:
        return dataclasses.replace(config, images=(), files=(cell.config["file"],), seeds=(cell.seed,))
    return dataclasses.replace(config, images=(cell.info.key,), files=(), seeds=(cell.seed,))


class CellJob:
    """One cell as a submitit job (pickled to the worker). A cell that another process holds is left
    to it. On a Slurm timeout or preemption submitit calls :meth:`checkpoint` and requeues the job,
    which then resumes from the cell's own checkpoint file."""

    def __init__(self, config: RunConfig, data_dir: Path, results_dir: Path) -> None:
        self.config, self.data_dir, self.results_dir = config, Path(data_dir), Path(results_dir)

    def __call__(self) -> str:
        try:
            outcome = run(self.config, self.data_dir, self.results_dir, progress=False, wait_for_others=False)
        except BenchError as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)  # the line `bench status` shows as the reason
            raise
        except RunStopped as exc:
            print(str(exc), file=sys.stderr, flush=True)
            raise
        return "failed" if outcome.failures else "complete" if outcome.records else "left to another process"

    def checkpoint(self, *args, **kwargs):
        return _submitit().helpers.DelayedSubmission(CellJob(self.config, self.data_dir, self.results_dir))


def record_submission(results_dir: Path, executor: str, entries: list[dict], planned: list[Cell] = ()) -> None:
    """Add ``entries`` (cell, image, seed, job id, log paths) and the ``planned`` cells to
    ``jobs/submitted.json``. Only the submitting process writes it."""
    path = results_dir / JOBS_DIR / MANIFEST
    manifest = json.loads(path.read_text()) if path.exists() else {"planned": [], "jobs": []}
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    manifest["jobs"] += [{**e, "executor": executor, "submitted": stamp} for e in entries]
    manifest["planned"] = sorted(set(manifest["planned"]) | {c.path.stem for c in planned})
    write_json_atomic(path, manifest)


def job_entry(cell: Cell, job) -> dict:
    return {"cell": cell.path.stem, "image": cell.info.key, "name": cell.info.name, "seed": cell.seed,
            "job_id": str(job.job_id), "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr)}


def local_slots(options: ExecutorOptions, config: RunConfig) -> list[tuple[int, ...]]:
    """The GPUs of each parallel slot: one GPU each where CUDA is used, no GPU on a CPU run."""
    uses_cuda = config.device.startswith("cuda") or (config.device == "auto" and torch.cuda.is_available())
    if uses_cuda:
        if config.device.startswith("cuda:"):
            raise BenchError("with --executor local each job gets its own GPU; use --device cuda or auto, not "
                             f"{config.device} (choose GPUs with CUDA_VISIBLE_DEVICES)")
        count = torch.cuda.device_count()
        return [(k,) for k in range(options.jobs or count)][:count] if count else []
    return [()] * (options.jobs or 1)


def run_local(cells: list[Cell], config: RunConfig, options: ExecutorOptions, data_dir: Path, results_dir: Path,
              progress: bool = True) -> list[str]:
    """Run ``cells`` as parallel local jobs; return one line per job that ended without finishing its cell.

    Each job inherits this process's environment, so a CPU job uses the same number of threads as an
    inline run would (the result depends on it). A SIGINT/SIGTERM here is passed on to the running
    jobs (each saves its checkpoint) and no further job starts.
    """
    submitit = _submitit()
    folder = results_dir / JOBS_DIR
    slots = local_slots(options, config)
    executors = []
    for gpus in slots:
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=LOCAL_TIMEOUT_MIN, gpus_per_node=len(gpus), visible_gpus=gpus)
        executors.append(executor)
    threads = torch.get_num_threads()
    if slots and not slots[0] and len(slots) * threads > (os.cpu_count() or 1):
        tqdm.write(f"note: {len(slots)} jobs x {threads} threads each on {os.cpu_count()} CPUs: oversubscribed and slow; "
                   f"set OMP_NUM_THREADS (results depend on the thread count: compare runs made with the same)")
    pending, running, problems, forwarded = deque(cells), {}, [], False
    with StopRequest() as stop, tqdm(total=len(cells), desc=f"cells ({len(slots)} local jobs)", unit="cell",
                                     disable=not progress or None) as bar:
        while pending or running:
            for slot, executor in enumerate(executors):
                if slot not in running and pending and not stop():
                    cell = pending.popleft()
                    job = executor.submit(CellJob(one_cell_config(config, cell), data_dir, results_dir))
                    record_submission(results_dir, "local", [job_entry(cell, job)])
                    running[slot] = (job, cell)
            if stop() and not forwarded:
                forwarded = True
                pending.clear()
                for job, _ in running.values():
                    os.kill(int(job.job_id), signal.SIGTERM)  # the job's controller forwards it to the job
            time.sleep(0.2)
            for slot, (job, cell) in list(running.items()):
                if job.done():
                    del running[slot]
                    bar.update(1)
                    problem = job_problem(job, cell)
                    if problem:
                        problems.append(problem)
                    tqdm.write(problem or f"{label(cell)}: {outcome_line(cell)} (job {job.job_id})")
    if stop():
        raise RunStopped(f"stopped by {stop.name}: running jobs saved their checkpoints, no new job started; "
                         "run the same command again to resume", stop.exit_code)
    return problems


def outcome_line(cell: Cell) -> str:
    if (record := read_record(cell.path)) is not None:
        return f"PSNR {record['psnr']:.2f} dB, {record['timing']['median_ms_per_iter']:.1f} ms/iter -> {cell.path}"
    if (failed := read_record(cell.path, FAILED)) is not None:
        return f"FAILED, {failed['reason']} -> {cell.path}"
    return "left to another process"


def job_problem(job, cell: Cell) -> str | None:
    """A line for a job that raised or was killed (divergence is not a problem here: it has its record)."""
    try:
        error = job.exception()
    except Exception:  # no result file: the job was killed
        error = "killed"
    if error is None:
        return None
    return f"{label(cell)}: job {job.job_id} failed: {last_error_line(Path(job.paths.stderr))}; log {job.paths.stderr}"


def last_error_line(log: Path) -> str:
    """The reason a job gave in its log: our one-line ``error:``/``stopped by`` message, else the last line
    of a traceback (``SomethingError: ...``), else the last line."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    ours = [line for line in lines if line.startswith(("error: ", "stopped by ", "slurmstepd: error:"))]
    if ours:
        return ours[-1]
    raised = [line for line in lines if ":" in line and line.split(":", 1)[0].split(".")[-1].endswith(("Error", "Exception", "Interrupt"))]
    return raised[-1] if raised else (lines[-1] if lines else "empty log")


def planning_device(config: RunConfig, options: ExecutorOptions) -> torch.device:
    """The device Slurm jobs will train on, as far as the submitting (login) node can tell."""
    if config.device.startswith("cuda:"):
        raise BenchError(f"with --executor slurm each job gets its own GPU; use --device cuda or auto, not {config.device}")
    if config.device == "cpu" or options.gpus_per_job == 0:
        return torch.device("cpu")
    return torch.device("cuda")


def submit_slurm(cells: list[Cell], config: RunConfig, options: ExecutorOptions, data_dir: Path, results_dir: Path) -> list[dict]:
    """Submit ``cells`` as one Slurm job array (one task per cell) and return their manifest entries."""
    submitit = _submitit()
    try:
        executor = submitit.SlurmExecutor(folder=results_dir / JOBS_DIR)
    except RuntimeError as exc:  # no srun on PATH
        raise BenchError(f"--executor slurm: {exc}") from None
    executor.update_parameters(job_name=f"dip-bench-{config.profile}", **options.sbatch_parameters())
    jobs_and_cells = []
    try:
        with executor.batch():
            for cell in cells:
                jobs_and_cells.append((executor.submit(CellJob(one_cell_config(config, cell), data_dir, results_dir)), cell))
    except Exception as exc:  # sbatch refused (bad partition, bad option): its message, in one line
        raise BenchError(f"sbatch failed: {str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__}") from None
    entries = [job_entry(cell, job) for job, cell in jobs_and_cells]
    record_submission(results_dir, "slurm", entries)
    return entries
