"""Running a plan in this process: each cell trained by whoever holds its lock, every record collected.

A cell locked by another process (a second run into the same directory) is left to it and, unless
told otherwise, waited for at the end. A cell whose training diverges beyond repair gets a failed
record and the run goes on. SIGINT/SIGTERM stop the run after the current step with a checkpoint.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

from bench.config import RunConfig
from bench.errors import RunStopped
from bench.execution import resolve_device
from bench.plan import Cell, failed_record, is_done, plan_run
from bench.progress import LOG_EVERY_S, Progress
from bench.records import Record, read_record
from bench.rundir import try_lock
from bench.stop import StopRequest
from bench.train import Session, train_and_write, train_batch_and_write


@dataclass(frozen=True)
class RunOutcome:
    records: list[Record]  # the complete records of the run's cells, in cell order
    failures: list[Record]  # the failed records of its cells (training diverged beyond repair)


def collect(cells: list[Cell]) -> RunOutcome:
    """The complete and the failed records of ``cells`` now on disk, whoever wrote them."""
    failures = [r for c in cells if (r := failed_record(c)) is not None]
    return RunOutcome([r for c in cells if (r := read_record(c.path)) is not None], failures)


def run(config: RunConfig, data_dir: Path, results_dir: Path, *, progress: bool = True, reuse_from: Path | None = None,
        wait_for_others: bool = True, log_every: float = LOG_EVERY_S) -> RunOutcome:
    """Run every cell of ``config`` that has no complete record yet; return the run's records.

    ``reuse_from``: another results directory whose records of identical cells are copied, not re-run.
    A cell locked by another process (a second run into the same directory) is left to it and, with
    ``wait_for_others``, waited for at the end. A cell whose training diverges beyond repair gets a
    failed record and the run goes on. SIGINT/SIGTERM stop the run after the current step with a
    checkpoint (raises RunStopped). Without bars (``progress`` False or no terminal) each cell prints a
    status line every ``log_every`` seconds.
    """
    device = resolve_device(config.device)
    cells, todo = plan_run(config, data_dir, results_dir, reuse_from=reuse_from, device=device)
    iterations = cells[0].recipe.iterations
    with StopRequest() as stop, Progress(len(todo) * iterations, progress, log_every) as bars:
        session = Session(config, device, bars, stop)
        if config.cells_per_gpu > 1:
            if device.type == "cpu":
                bars.note("note: on a CPU, batched cells train slower than cells one at a time (grouped "
                          "convolutions; docs/speed.md, 'Many cells per GPU'): --cells-per-gpu is meant for GPUs")
            busy = train_batches(todo, session, config.cells_per_gpu)
        else:
            busy = [cell for cell in todo if not train_if_free(cell, session)]
        for cell in busy:
            wait_and_train(cell, session, patience=None if wait_for_others else LOCK_PATIENCE_S)
    return collect(cells)


# How long a job waits for a cell someone else holds before leaving it to them: long enough that a
# momentary holder (`bench status` testing the lock) does not make a job skip its cell.
LOCK_PATIENCE_S = 5.0


def train_if_free(cell: Cell, session: Session, *, settled_ok: bool = False) -> bool:
    """Train ``cell`` unless another process holds its lock (then False). Once the lock is held, a
    record of this configuration written meanwhile by another process counts (a failed one too when
    ``settled_ok``: that process already gave the cell its try)."""
    with try_lock(cell.run_dir.lock(cell.stem)) as held:
        if not held:
            return False
        if is_done(cell) or (settled_ok and failed_record(cell) is not None):
            session.progress.skip(cell.recipe.iterations)
        elif session.config.cells_per_gpu > 1:
            train_batch_and_write([cell], session)  # the batched model, as the run's other cells
        else:
            train_and_write(cell, session)
        return True


def batches(cells: list[Cell], size: int) -> list[list[Cell]]:
    """``cells`` in groups of at most ``size`` that can train as one batched model (one image size, one
    recipe), in the order of their first cell."""
    groups: dict[tuple, list[Cell]] = {}
    for cell in cells:
        groups.setdefault((cell.image.shape, cell.recipe), []).append(cell)
    return [group[i:i + size] for group in groups.values() for i in range(0, len(group), size)]


def train_batches(cells: list[Cell], session: Session, size: int) -> list[Cell]:
    """Train ``cells`` ``size`` at a time as batched models; return those another process holds."""
    busy = []
    for batch in batches(cells, size):
        with contextlib.ExitStack() as locks:
            mine = []
            for cell in batch:
                if not locks.enter_context(try_lock(cell.run_dir.lock(cell.stem))):
                    busy.append(cell)
                elif is_done(cell):  # written by another process meanwhile
                    session.progress.skip(cell.recipe.iterations)
                else:
                    mine.append(cell)
            if mine:
                train_batch_and_write(mine, session)
    return busy


def wait_and_train(cell: Cell, session: Session, patience: float | None = None) -> None:
    """Wait for another process to release ``cell``, then train it unless that process settled it;
    after ``patience`` seconds (None: no limit) leave the cell to that process."""
    deadline = None if patience is None else time.monotonic() + patience
    if patience is None:
        session.progress.note(f"{cell.label}: another process is training it; waiting for it to finish")
    while not train_if_free(cell, session, settled_ok=True):
        if deadline is not None and time.monotonic() > deadline:
            session.progress.note(f"{cell.label}: another process is training it; leaving it to that process")
            return
        if session.stop():
            raise RunStopped(f"stopped by {session.stop.name} while waiting for {cell.label} (trained by another "
                             f"process); complete records are kept; run the same command again to continue",
                             session.stop.exit_code)
        time.sleep(0.5)
