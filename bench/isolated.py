"""A timed stepper (the authors' code, or a path's trainer) in a process of its own.

Timed side by side in one process, the trainers share one C heap, and each one's speed depends on
what the others left in it: the authors' code ran faster after the fast path's kept-heap steps than
in a process of its own, and the ratio between them moved by half (docs/speed.md, "Each stepper in a
process of its own"). A user trains one model per process, so each stepper gets one: the parent
starts them all, then asks them in turn for a round of timed steps, so all see the same machine load
and only one runs at a time. They start and stop side by side (``wait=False``, :meth:`StepperProcess.stop`):
each start-up is seconds of imports, on a CPU with cores to spare.

The processes are started by ``spawn`` (a fresh interpreter: no state inherited from the parent, CUDA
included) and run :func:`serve`; they build their stepper with :mod:`bench.speed`'s functions.
"""

from __future__ import annotations

import multiprocessing
import traceback
from multiprocessing.connection import Connection

from bench.errors import BenchError
from dip.execution import REFERENCE_EXECUTION

# The execution fields a stepper reports (the speed report's columns), and how the authors' code runs
# (bench.authors): as the reference path does, fp32, contiguous, eager, plain Adam, none of the switches.
REPORTED_FIELDS = ("precision", "channels_last", "fused_adam", "compile", "winograd", "matmul_1x1", "keep_heap")
AUTHORS_EXECUTION = {k: REFERENCE_EXECUTION[k] for k in REPORTED_FIELDS}


def serve(conn: Connection, variant: str, size: int, device: str) -> None:
    """The child's loop: build the stepper, say how it runs, then time rounds until told to stop."""
    from bench.speed import make_anchor, make_trainer, time_steps

    try:
        if variant == "authors":
            stepper, execution = make_anchor(size, device), AUTHORS_EXECUTION
        else:
            stepper = make_trainer(variant, size, device)
            execution = {k: getattr(stepper.config, k) for k in REPORTED_FIELDS}
        conn.send(("ready", {**execution, "device": str(stepper.device)}))
        while (request := conn.recv()) != "stop":
            conn.send(("ok", time_steps(stepper, request)))
    except Exception as error:  # noqa: BLE001 (any failure goes back to the parent as one line)
        conn.send(("error", f"{type(error).__name__}: {error}\n{traceback.format_exc(limit=3)}"))
    finally:
        conn.close()


class StepperProcess:
    """One stepper of :mod:`bench.speed` in its own process: :meth:`time_steps` like
    :func:`bench.speed.time_steps`, :meth:`step` for a timer that measures from outside (pytest-benchmark;
    the pipe's round trip, tens of microseconds, is inside its time). ``execution``: how it runs
    (precision, channels_last, fused_adam, compile, winograd, matmul_1x1, keep_heap) and its device.

    With ``wait=False`` the constructor returns once the process is started, so that several build their
    steppers side by side; the first use of ``execution`` or :meth:`time_steps` then waits for it (and
    raises its failure)."""

    def __init__(self, variant: str, size: int, device: str = "auto", wait: bool = True) -> None:
        self.variant = variant
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=serve, args=(child, variant, size, device), daemon=True,
                                         name=f"dip-bench speed: {variant} {size}")
        self._process.start()
        child.close()
        self._execution: dict | None = None
        self._stopping = False
        if wait:
            self.execution  # noqa: B018 (waits for the child's "ready")

    @property
    def execution(self) -> dict:
        if self._execution is None:
            self._execution = self._reply()
        return self._execution

    def _reply(self):
        try:
            kind, value = self._conn.recv()
        except EOFError:
            self._process.join(5)
            raise BenchError(f"the {self.variant} stepper's process ended without a reply "
                             f"(exit code {self._process.exitcode})") from None
        if kind == "error":
            first, _, rest = value.partition("\n")
            raise BenchError(f"the {self.variant} stepper failed in its process: {first}") from RuntimeError(rest)
        return value

    def time_steps(self, steps: int) -> float:
        """Seconds per step over ``steps`` consecutive steps, timed in the child."""
        self.execution  # noqa: B018 (its "ready" comes first on the pipe)
        self._conn.send(steps)
        return self._reply()

    def step(self) -> None:
        self.time_steps(1)

    def stop(self) -> None:
        """Ask the child to end, without waiting for it (:meth:`close` waits)."""
        if self._process.is_alive() and not self._stopping:
            self._stopping = True
            try:
                self._conn.send("stop")
            except (BrokenPipeError, OSError):
                pass

    def close(self) -> None:
        if self._process.is_alive():
            self.stop()
            self._process.join(30)
            if self._process.is_alive():
                self._process.kill()
        self._conn.close()

    def __enter__(self) -> StepperProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
