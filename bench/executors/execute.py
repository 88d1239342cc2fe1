"""One entry point for every executor: run or submit the cells of a configuration."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bench.config import RunConfig
from bench.errors import BenchError
from bench.executors.options import ExecutorOptions
from bench.plan import Cell
from bench.progress import LOG_EVERY_S
from bench.runner import RunOutcome, run


@dataclass(frozen=True)
class Finished:
    """The cells ran here (inline) or under this process's watch (local)."""

    outcome: RunOutcome
    problems: list[str] = field(default_factory=list)  # one line per job that ended without finishing its cell


@dataclass(frozen=True)
class Submitted:
    """The cells were handed to a scheduler; their records will appear in the results directory."""

    cells: list[Cell]  # every cell of the run
    entries: list[dict]  # the jobs submitted now (empty: every cell already had a complete record)


def execute(config: RunConfig, options: ExecutorOptions, data_dir: Path, results_dir: Path, progress: bool = True,
            log_every: float = LOG_EVERY_S) -> Finished | Submitted:
    """Run or submit every cell of ``config`` that has no complete record, as ``options`` says.
    ``log_every``: seconds between status lines when no bars are shown (inline executor)."""
    if config.cells_per_gpu > 1 and options.executor != "inline":
        raise BenchError(f"--cells-per-gpu batches the cells of one process; --executor {options.executor} runs "
                         f"one cell per job: use --executor inline (one process per GPU)")
    if options.executor == "slurm":
        from bench.executors.slurm import execute_slurm

        return Submitted(*execute_slurm(config, options, data_dir, results_dir))
    if options.executor == "local":
        from bench.executors.local import execute_local

        return Finished(*execute_local(config, options, data_dir, results_dir, progress))
    return Finished(run(config, data_dir, results_dir, progress=progress, log_every=log_every))
