"""What a run shows while it trains: a bar over all cells, a bar per cell with its loss and PSNR, and
one line per event (a cell done, skipped, resumed or failed) that stays above the bars."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from tqdm import tqdm


class Progress:
    """The bars of one run; with ``enabled`` False only the event lines are printed."""

    def __init__(self, total_iterations: int, enabled: bool = True) -> None:
        self.enabled = enabled
        self.overall = tqdm(total=total_iterations, desc="all cells", unit="it", disable=not enabled or None)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.overall.close()

    @staticmethod
    def note(line: str) -> None:
        """An event line, printed above the bars."""
        tqdm.write(line)

    def skip(self, iterations: int) -> None:
        """Iterations that need no training here (a cell finished by another process, a resumed start)."""
        self.overall.update(iterations)

    @contextlib.contextmanager
    def cell(self, label: str, total: int, start: int = 0) -> Iterator[Callable]:
        """A bar for one cell; yields the training callback ``(iteration, curve point or None)``."""
        bar = tqdm(total=total, initial=start, desc=label, unit="it", leave=False, disable=not self.enabled or None)

        def callback(i: int, point) -> None:
            bar.update(1)
            self.overall.update(1)
            if point is not None:
                bar.set_postfix(loss=f"{point.loss:.2e}", psnr=f"{point.psnr:.2f}", refresh=False)

        with bar:
            yield callback
