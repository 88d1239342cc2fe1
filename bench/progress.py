"""What a run shows while it trains: a bar over all cells, a bar per cell with its loss and PSNR, and
one line per event (a cell done, skipped, resumed or failed) that stays above the bars.

Without a terminal (output to a file: nohup, Slurm, CI) tqdm shows no bars, and a cell of the paper
profile is an hour or more on a CPU. Then each cell prints a status line every ``log_every`` seconds
instead: iteration, latest PSNR, ms/iter over the last interval (its median iteration: time paused
with SIGSTOP does not count) and the time left.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
from collections.abc import Callable, Iterator

from tqdm import tqdm

# Seconds between status lines when no bars are shown (--log-every).
LOG_EVERY_S = 300.0


def human_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class StatusLines:
    """One line every ``every_s`` seconds of a cell's training; ``every_s`` 0 prints none.

    A line's ms/iter is the median of the iterations' own durations since the last line, not the wall
    time over their count: a run paused with SIGSTOP (and resumed with SIGCONT) has one iteration that
    spans the pause, and the median leaves it out, so the speed and the time left are the running ones.
    """

    def __init__(self, label: str, total: int, start: int, every_s: float, clock: Callable[[], float]) -> None:
        self.label, self.total, self.every_s, self.clock = label, total, every_s, clock
        self.last_line_t = self.last_t = clock()
        self.last_done = start
        self.durations: list[float] = []  # seconds per iteration, of each iteration since the last line
        self.psnr: str = "n/a"

    def update(self, done: int, point) -> str | None:
        """After ``done`` iterations (``point``: the curve point just taken, if any): the line due, or None."""
        if point is not None and point.psnr is not None:
            self.psnr = f"{point.psnr:.2f} dB at iteration {point.iteration}"
        now = self.clock()
        if done > self.last_done:
            self.durations += [(now - self.last_t) / (done - self.last_done)] * (done - self.last_done)
            self.last_t, self.last_done = now, done
        if self.every_s <= 0 or now - self.last_line_t < self.every_s or not self.durations:
            return None
        ms_per_iter = statistics.median(self.durations) * 1e3
        left = ms_per_iter * (self.total - done) / 1e3
        self.last_line_t, self.durations = now, []
        return (f"{self.label}: iteration {done}/{self.total}, PSNR {self.psnr}, {ms_per_iter:.0f} ms/iter, "
                f"about {human_duration(left)} left in this cell")


class Progress:
    """The bars of one run; with ``enabled`` False or no terminal, status lines every ``log_every`` s."""

    def __init__(self, total_iterations: int, enabled: bool = True, log_every: float = LOG_EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.enabled = enabled
        self.log_every = log_every
        self.clock = clock
        self.overall = tqdm(total=total_iterations, desc="all cells", unit="it", disable=not enabled or None)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.overall.close()

    @staticmethod
    def note(line: str) -> None:
        """An event line, printed above the bars (flushed: a log file shows it at once)."""
        tqdm.write(line)
        sys.stdout.flush()

    def skip(self, iterations: int) -> None:
        """Iterations that need no training here (a cell finished by another process, a resumed start)."""
        self.overall.update(iterations)

    @contextlib.contextmanager
    def cell(self, label: str, total: int, start: int = 0) -> Iterator[Callable]:
        """A bar for one cell; yields the training callback ``(iteration, curve point or None)``."""
        bar = tqdm(total=total, initial=start, desc=label, unit="it", leave=False, disable=not self.enabled or None)
        # tqdm disables a bar (disable=None) when its stream is not a terminal: then print status lines.
        status = StatusLines(label, total, start, 0.0 if not bar.disable else self.log_every, self.clock)

        def callback(i: int, point) -> None:
            bar.update(1)
            self.overall.update(1)
            if point is not None:
                bar.set_postfix(loss=f"{point.loss:.2e}", psnr=f"{point.psnr:.2f}", refresh=False)
            line = status.update(i + 1, point)
            if line is not None:
                self.note(line)

        with bar:
            yield callback
