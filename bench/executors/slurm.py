"""``--executor slurm``: every cell without a complete record becomes one task of a submitit job array;
the submission returns at once (``python -m bench status`` follows the jobs)."""

from __future__ import annotations

from pathlib import Path

import torch

from bench.config import RunConfig
from bench.errors import BenchError
from bench.executors.jobs import (
    CellJob,
    _submitit,
    job_entry,
    one_cell_config,
    record_submission,
)
from bench.executors.options import ExecutorOptions
from bench.plan import Cell, is_done_on_any_node, plan_run
from bench.rundir import RunDir


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
        executor = submitit.SlurmExecutor(folder=RunDir(results_dir).jobs)
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


def execute_slurm(config: RunConfig, options: ExecutorOptions, data_dir: Path, results_dir: Path) -> tuple[list[Cell], list[dict]]:
    """Check every cell here, then submit those without a complete record as one job array; do not
    wait. Returns all cells of the run and the submitted jobs' manifest entries (none: nothing to do)."""
    cells, todo = plan_run(config, data_dir, results_dir, device=planning_device(config, options), done=is_done_on_any_node)
    if not todo:
        return cells, []
    entries = submit_slurm(todo, config, options, data_dir, results_dir)
    record_submission(results_dir, "slurm", [], planned=cells)
    return cells, entries
