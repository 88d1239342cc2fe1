"""A run with a deadline: it trains as far as the time allows, then stops as a stop signal would (the
current step finishes and every cell in training writes its checkpoint), and keeps what is complete.

:class:`DeadlineStop` is the run's stop request (bench.stop) with a clock added: the training loop polls
it after every step, so the deadline costs no synchronisation. :func:`run_until` runs a plan's cells
smallest image first (the most cells finish within the time) and returns instead of raising when the
deadline stops it. The cells are trained by bench.runner's own functions, so the records, checkpoints
and locks are exactly a normal run's, and ``python -m bench run`` into the same directory resumes them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.config import RunConfig
from bench.errors import RunStopped
from bench.execution import resolve_device
from bench.plan import plan_run
from bench.progress import Progress
from bench.runner import RunOutcome, collect, train_batches, train_if_free
from bench.stop import StopRequest
from bench.train import Session


class DeadlineStop(StopRequest):
    """A stop request that also fires once ``clock()`` reaches ``deadline``. A SIGINT or SIGTERM still
    stops the run as usual (and keeps its exit status); the deadline's exit status is 0."""

    def __init__(self, deadline: float, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.deadline, self.clock = deadline, clock

    def __call__(self) -> bool:
        return super().__call__() or self.expired

    @property
    def expired(self) -> bool:
        return self.clock() >= self.deadline

    @property
    def name(self) -> str:
        return super().name if self.signum is not None else "the time budget"

    @property
    def exit_code(self) -> int:
        return super().exit_code if self.signum is not None else 0


@dataclass(frozen=True)
class DeadlineOutcome:
    outcome: RunOutcome  # the complete and failed records of every cell of the run
    stopped: str | None  # where the stop left the run (its one line), or None if every cell finished


def run_until(config: RunConfig, data_dir: Path, results_dir: Path, stop: DeadlineStop, *,
              log_every: float) -> DeadlineOutcome:
    """Train the cells of ``config`` that have no complete record, smallest image first (by batches of
    ``config.cells_per_gpu``), until ``stop`` fires. Without bars: a status line per cell every
    ``log_every`` seconds. A stop by signal is reported like the deadline's; the caller tells them apart
    by ``stop.signum``."""
    device = resolve_device(config.device)
    cells, todo = plan_run(config, data_dir, results_dir, device=device)
    todo = sorted(todo, key=lambda cell: cell.image.size)  # stable: Table 1's order within a size
    iterations = cells[0].recipe.iterations
    with stop, Progress(len(todo) * iterations, enabled=False, log_every=log_every) as bars:
        session = Session(config, device, bars, stop)
        try:
            if config.cells_per_gpu > 1:
                train_batches(todo, session, config.cells_per_gpu)
            else:
                for cell in todo:
                    train_if_free(cell, session)
        except RunStopped as exc:
            return DeadlineOutcome(collect(cells), str(exc))
    return DeadlineOutcome(collect(cells), None)
