"""SIGINT and SIGTERM during a run: finish the current step, write a checkpoint, stop with a message."""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """While active (a context manager), the first SIGINT or SIGTERM only records a request to stop,
    which the training loop polls after every step; a second one interrupts at once.

    Calling the object says whether a stop was requested. Outside the main thread (where Python
    cannot install handlers) signals keep their usual effect.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def __call__(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else "no signal"

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or 0)  # the shell's convention: 130 for SIGINT, 143 for SIGTERM

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: stopping after the current step (send it again to stop at once)",
              file=sys.stderr, flush=True)
