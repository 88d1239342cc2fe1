"""``python -m bench status RUN``: where each cell of a results directory stands.

States, read from the files alone (no scheduler query, so it works on a login node and after the
jobs are gone): **done** (a complete record), **failed** (a failed record's reason, or the error line
of its job's log), **running** (another process holds the cell's lock), **stopped** (a checkpoint to
resume from and nothing running), **pending** (submitted, no sign of a start) and **missing** (a cell
of the submission with nothing at all).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from bench.checkpoints import checkpoint_iteration
from bench.executors.jobs import last_error_line
from bench.records import COMPLETE, FAILED, read_record
from bench.rundir import RunDir, is_locked

STATES = ("done", "failed", "running", "stopped", "pending", "missing")


@dataclass(frozen=True)
class CellStatus:
    cell: str  # record stem, e.g. "house_seed0"
    state: str  # one of STATES
    detail: str


def job_ended(job: dict) -> bool:
    """A local job whose process is gone (a Slurm job's end is only known from its log)."""
    if job.get("executor") != "local":
        return False
    try:
        os.kill(int(job["job_id"]), 0)
    except (ProcessLookupError, ValueError):
        return True
    except PermissionError:
        return False
    return False


def cell_status(run_dir: RunDir, stem: str, job: dict | None) -> CellStatus:
    record_path = run_dir.record(stem)
    if (record := read_record(record_path, COMPLETE)) is not None:
        return CellStatus(stem, "done", f"PSNR {record.psnr:.2f} dB")
    if (failed := read_record(record_path, FAILED)) is not None:
        return CellStatus(stem, "failed", failed.reason)
    job_note = f" (job {job['job_id']})" if job else ""
    if is_locked(run_dir.lock(stem)):
        return CellStatus(stem, "running", f"training{job_note}")
    checkpoint = run_dir.checkpoint(stem)
    resumable = ""
    if checkpoint.exists():
        iteration = checkpoint_iteration(checkpoint)
        resumable = f"checkpoint at iteration {iteration}" if iteration is not None else "unreadable checkpoint"
    log = Path(job["stderr"]) if job else None
    if log is not None and log.exists():
        reason = last_error_line(log)
        if reason.startswith("stopped by ") and resumable:  # a signal, not a fault: it resumes
            return CellStatus(stem, "stopped", f"{resumable} ({reason.split(';')[0]}); run or submit the same command again to resume")
        if reason.startswith(("error: ", "slurmstepd: error:")) or "Error" in reason or job_ended(job):
            where = f"; {resumable}" if resumable else ""
            return CellStatus(stem, "failed", f"{reason} (log {log}){where}")
    if resumable:
        return CellStatus(stem, "stopped", f"{resumable}; run or submit the same command again to resume")
    if job:
        return CellStatus(stem, "pending", f"submitted{job_note} {job['submitted']}, not started")
    return CellStatus(stem, "missing", "no record or checkpoint, nothing running (not started, or stopped before "
                                       "its first checkpoint)")


def run_status(results_dir: Path) -> list[CellStatus]:
    run_dir = RunDir(results_dir)
    jobs = {job["cell"]: job for job in run_dir.read_manifest()["jobs"]}  # the last job submitted for each cell
    return [cell_status(run_dir, stem, jobs.get(stem)) for stem in run_dir.known_stems()]
