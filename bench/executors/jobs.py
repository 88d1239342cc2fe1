"""What every executor's jobs share: a cell as a submitit job, and the manifest of what was submitted.

A job is :func:`bench.runner.run` on a one-cell configuration: it takes the cell's lock, resumes from
the cell's checkpoint and writes the record atomically into the shared results directory, as an
inline run does, so results do not depend on the executor.
"""

from __future__ import annotations

import dataclasses
import sys
from datetime import datetime, timezone
from pathlib import Path

from bench.config import RunConfig
from bench.errors import BenchError, RunStopped
from bench.plan import Cell
from bench.records import write_json_atomic
from bench.rundir import RunDir
from bench.runner import run


def _submitit():
    try:
        import submitit
    except ImportError:
        raise BenchError("--executor local/slurm needs submitit: pip install submitit") from None
    return submitit


def one_cell_config(config: RunConfig, cell: Cell) -> RunConfig:
    """``config`` narrowed to one cell: the same resolved configuration, so the same record."""
    if cell.config.file is not None:
        return dataclasses.replace(config, images=(), files=(cell.config.file,), seeds=(cell.seed,))
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
    run_dir = RunDir(results_dir)
    manifest = run_dir.read_manifest()
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    manifest["jobs"] += [{**e, "executor": executor, "submitted": stamp} for e in entries]
    manifest["planned"] = sorted(set(manifest["planned"]) | {c.stem for c in planned})
    write_json_atomic(run_dir.manifest, manifest)


def job_entry(cell: Cell, job) -> dict:
    return {"cell": cell.stem, "image": cell.info.key, "name": cell.info.name, "seed": cell.seed,
            "job_id": str(job.job_id), "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr)}


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
