"""Timing of training iterations, FLOP counting and peak memory.

On CUDA, iterations are timed with CUDA events recorded on the stream: a window of ``window``
iterations costs one host synchronisation (on its closing event), so timing does not stall the GPU
at every step. On CPU, kernels run synchronously and ``time.perf_counter`` brackets each window.
The first ``warmup`` iterations (allocator growth, cuDNN autotuning, oneDNN kernel creation) are
excluded, as in timm's benchmark.py and nanoGPT's bench.py.
"""

from __future__ import annotations

import contextlib
import resource
import statistics
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class TimingSummary:
    median_ms_per_iter: float
    mean_ms_per_iter: float
    iters_per_s: float
    timed_iterations: int
    warmup_iterations: int
    total_s: float  # wall-clock of the whole loop, warm-up and evaluation included (all segments if resumed)
    clock: str  # "cuda_event" or "perf_counter"

    def to_dict(self) -> dict:
        return asdict(self)


class _Mark:
    """A point in time on the device's timeline."""

    def __init__(self, device: torch.device) -> None:
        self.event = None
        self.t = 0.0
        if device.type == "cuda":
            self.event = torch.cuda.Event(enable_timing=True)
            # On the timed device's stream: record() alone takes the current device's, which for a
            # trainer on cuda:N (N > 0) outside its steps is cuda:0, an idle GPU.
            self.event.record(torch.cuda.current_stream(device))
        else:
            self.t = time.perf_counter()

    def ms_until(self, later: _Mark) -> float:
        if self.event is not None:
            later.event.synchronize()  # the one host sync of this window
            return self.event.elapsed_time(later.event)
        return (later.t - self.t) * 1e3


class IterationTimer:
    """Call :meth:`start` before the loop, :meth:`tick` after each iteration, :meth:`summary` after.

    A loop resumed from a checkpoint carries the finished windows over (:meth:`state_dict`,
    :meth:`load_state_dict` before :meth:`start`); the resumed process warms up again, since its
    allocator and kernel caches start cold.
    """

    def __init__(self, device: torch.device | str, warmup: int = 5, window: int = 50) -> None:
        if warmup < 0 or window < 1:
            raise ValueError(f"need warmup >= 0 and window >= 1, got {warmup}, {window}")
        self.device = torch.device(device)
        self.warmup = warmup
        self.window = window
        self.window_ms_per_iter: list[float] = []
        self.window_sizes: list[int] = []
        self._iterations = 0  # over all segments of a resumed loop
        self._since_start = 0  # in this process: what the warm-up counts
        self._open: _Mark | None = None
        self._open_at = 0
        self._t0 = 0.0
        self._earlier_s = 0.0  # wall-clock of the segments before a resume

    def start(self) -> None:
        self._t0 = time.perf_counter()
        self._since_start = 0
        if self.warmup == 0:
            self._open, self._open_at = _Mark(self.device), self._iterations

    def tick(self) -> None:
        self._iterations += 1
        self._since_start += 1
        if self._open is None:
            if self._since_start == self.warmup:
                self._open, self._open_at = _Mark(self.device), self._iterations
        elif self._iterations - self._open_at == self.window:
            self._close()

    def _close(self) -> None:
        n = self._iterations - self._open_at
        end = _Mark(self.device)
        self.window_ms_per_iter.append(self._open.ms_until(end) / n)
        self.window_sizes.append(n)
        self._open, self._open_at = end, self._iterations

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Leave the work inside (writing a checkpoint) out of the timed windows."""
        timing = self._open is not None
        if timing and self._iterations > self._open_at:
            self._close()
        yield
        if timing:
            self._open, self._open_at = _Mark(self.device), self._iterations

    def state_dict(self) -> dict:
        """The finished windows and the time so far (a window still open is not carried over)."""
        return {
            "window_ms_per_iter": list(self.window_ms_per_iter),
            "window_sizes": list(self.window_sizes),
            "iterations": self._iterations,
            "elapsed_s": self._earlier_s + time.perf_counter() - self._t0,
        }

    def load_state_dict(self, state: dict) -> None:
        self.window_ms_per_iter = list(state["window_ms_per_iter"])
        self.window_sizes = list(state["window_sizes"])
        self._iterations = int(state["iterations"])
        self._earlier_s = float(state["elapsed_s"])

    def summary(self) -> TimingSummary:
        if self._open is not None and self._iterations > self._open_at:
            self._close()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        total_s = self._earlier_s + time.perf_counter() - self._t0
        if not self.window_ms_per_iter:
            raise ValueError(
                f"no iteration was timed: {self._iterations} iterations ran, {self.warmup} are warm-up"
            )
        timed = sum(self.window_sizes)
        mean = sum(m * n for m, n in zip(self.window_ms_per_iter, self.window_sizes)) / timed
        median = statistics.median(self.window_ms_per_iter)
        return TimingSummary(
            median_ms_per_iter=median,
            mean_ms_per_iter=mean,
            iters_per_s=1e3 / median,
            timed_iterations=timed,
            warmup_iterations=self._iterations - timed,
            total_s=total_s,
            clock="cuda_event" if self.device.type == "cuda" else "perf_counter",
        )


def count_flops(build_model, input_shape: tuple[int, ...]) -> int:
    """FLOPs of one forward + backward pass, counted once on the meta device (no compute, no memory).

    ``build_model`` is a zero-argument callable returning the module. Counts convolutions and matrix
    products (what ``torch.utils.flop_counter`` covers); elementwise work and BatchNorm are not FLOPs
    in that convention.
    """
    with torch.device("meta"):
        model = build_model()
        x = torch.empty(input_shape)
    counter = FlopCounterMode(display=False)
    with counter:
        model(x).sum().backward()
    return int(counter.get_total_flops())


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device) -> tuple[int, str]:
    """(bytes, what was measured): CUDA max allocated on a GPU, the process's peak RSS on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    # ru_maxrss is in KiB on Linux: the peak over the process's lifetime, not this run alone.
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "process_peak_rss"
