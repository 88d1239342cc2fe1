"""``--executor local``: the cells as parallel subprocesses through submitit's LocalExecutor, one per
visible GPU or ``--jobs N``; this process waits for them and passes SIGINT/SIGTERM on."""

from __future__ import annotations

import os
import signal
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

from bench.config import RunConfig
from bench.errors import BenchError, RunStopped
from bench.executors.jobs import (
    CellJob,
    _submitit,
    job_entry,
    last_error_line,
    one_cell_config,
    record_submission,
)
from bench.executors.options import ExecutorOptions
from bench.plan import Cell, plan_run
from bench.records import FAILED, read_record
from bench.rundir import RunDir
from bench.runner import RunOutcome, collect
from bench.stop import StopRequest

LOCAL_TIMEOUT_MIN = 7 * 24 * 60  # submitit's LocalExecutor kills a job after 2 minutes unless told otherwise


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


def visible_entries(parent: str | None) -> list[str] | None:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` (``parent``) lists them: indices,
    ``GPU-...`` UUIDs or ``MIG-...`` ids, in torch's order; None where the variable is unset (every GPU,
    by its index). "" lists none."""
    if parent is None:
        return None
    return [entry.strip() for entry in parent.split(",") if entry.strip()]


def job_cuda_devices(slots: list[tuple[int, ...]], parent: str | None) -> list[str]:
    """Each slot's ``CUDA_VISIBLE_DEVICES``. CUDA reads a job's list in physical terms, while the slots
    hold this process's torch indices: index k is the k-th entry of the parent's list (``parent``), so
    under a parent "2,3" the jobs get "2" and "3", not physical GPUs 0 and 1."""
    entries = visible_entries(parent)
    if entries is None:
        return [",".join(str(k) for k in gpus) for gpus in slots]
    needed = max((k + 1 for gpus in slots for k in gpus), default=0)
    if needed > len(entries):
        raise BenchError(f"CUDA_VISIBLE_DEVICES={parent!r} lists {len(entries)} GPUs, fewer than the {needed} the "
                         "local jobs use; list one entry (an index or a UUID) per GPU to use")
    return [",".join(entries[k] for k in gpus) for gpus in slots]


class JobOnDevices:
    """A job that sets its own ``CUDA_VISIBLE_DEVICES`` before it runs. submitit's LocalExecutor takes
    integer GPU indices only (no UUIDs), so it is given none and hides every GPU (""); the job then
    sets ``cuda_devices`` before anything in it uses CUDA."""

    def __init__(self, job: Callable[[], str], cuda_devices: str) -> None:
        self.job, self.cuda_devices = job, cuda_devices

    def __call__(self) -> str:
        os.environ["CUDA_VISIBLE_DEVICES"] = self.cuda_devices
        # CUDA reads the variable once, when it initialises: had anything initialised it before this
        # line, the job would see submitit's "" (no GPU) and an "auto" device would quietly be the CPU.
        if self.cuda_devices and not torch.cuda.is_available():
            raise BenchError(f"the job sees no GPU with CUDA_VISIBLE_DEVICES={self.cuda_devices} (CUDA initialised "
                             "before the job set it, or the GPU is gone)")
        return self.job()

    def checkpoint(self, *args, **kwargs) -> object:
        """On a timeout submitit requeues what this returns: the same job on the same GPUs."""
        return _submitit().helpers.DelayedSubmission(self)


def run_local(cells: list[Cell], config: RunConfig, options: ExecutorOptions, data_dir: Path, results_dir: Path,
              progress: bool = True) -> list[str]:
    """Run ``cells`` as parallel local jobs; return one line per job that ended without finishing its cell.

    Each job inherits this process's environment, so a CPU job uses the same number of threads as an
    inline run would (the result depends on it); only its CUDA_VISIBLE_DEVICES is its own (job_cuda_devices).
    A SIGINT/SIGTERM here is passed on to the running jobs (each saves its checkpoint) and no further job
    starts.
    """
    submitit = _submitit()
    folder = RunDir(results_dir).jobs
    slots = local_slots(options, config)
    cuda_devices = job_cuda_devices(slots, os.environ.get("CUDA_VISIBLE_DEVICES"))
    executors = []
    for _ in slots:
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=LOCAL_TIMEOUT_MIN)  # no GPUs: each job chooses its own (JobOnDevices)
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
                    cell_job = CellJob(one_cell_config(config, cell), data_dir, results_dir)
                    job = executor.submit(JobOnDevices(cell_job, cuda_devices[slot]))
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
                    tqdm.write(problem or f"{cell.label}: {outcome_line(cell)} (job {job.job_id})")
    if stop():
        raise RunStopped(f"stopped by {stop.name}: running jobs saved their checkpoints, no new job started; "
                         "run the same command again to resume", stop.exit_code)
    return problems


def outcome_line(cell: Cell) -> str:
    if (record := read_record(cell.path)) is not None:
        return f"PSNR {record.psnr:.2f} dB, {record.ms_per_iter:.1f} ms/iter -> {cell.path}"
    if (failed := read_record(cell.path, FAILED)) is not None:
        return f"FAILED, {failed.reason} -> {cell.path}"
    return "left to another process"


def job_problem(job, cell: Cell) -> str | None:
    """A line for a job that raised or was killed (divergence is not a problem here: it has its record)."""
    try:
        error = job.exception()
    except Exception:  # no result file: the job was killed
        error = "killed"
    if error is None:
        return None
    return f"{cell.label}: job {job.job_id} failed: {last_error_line(Path(job.paths.stderr))}; log {job.paths.stderr}"


def execute_local(config: RunConfig, options: ExecutorOptions, data_dir: Path, results_dir: Path, progress: bool) -> tuple[RunOutcome, list[str]]:
    """Plan the run here, record the plan for `bench status`, run the cells still to do as local jobs,
    and collect every cell's record; also the lines of jobs that ended without finishing their cell."""
    cells, todo = plan_run(config, data_dir, results_dir)
    record_submission(results_dir, "local", [], planned=cells)
    problems = run_local(todo, config, options, data_dir, results_dir, progress=progress)
    return collect(cells), problems
