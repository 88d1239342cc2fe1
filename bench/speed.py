"""Speed of one training iteration, reference path vs fast path, and the authors' code as the anchor,
measured in one run: alternating rounds, each stepper in a process of its own (bench.isolated).

Used by the pytest-benchmark suite (``make speed``), by the ratio gate that CI runs
(``python -m bench speed --gate``: 1.8x where the fast path runs bf16, 0.8x where fp32), and for the operator profile in ``reports/speed.md``.
A ratio taken within one run is robust to a shared, noisy machine where absolute times are not.
"""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
import time
from functools import partial

import numpy as np
import torch

from bench.authors import AuthorsStep
from bench.config import build_config
from bench.execution import cell_recipe, resolve_device
from dip.batched import BatchedTrainer
from dip.nets import build_network
from dip.recipe import RestoreConfig
from dip.seeding import derived_seed
from dip.trainer import Trainer

# Variants timed by the benchmark suite: the two paths, and the fast path with opt-in switches.
VARIANTS = {
    "reference": {"run.path": "reference"},
    "fast": {"run.path": "fast"},
    "fast+compile": {"run.path": "fast", "recipe.compile": True},
}


def path_recipe(path: str, device: torch.device, *, cells_per_gpu: int = 1, cuda_graphs: bool = False) -> RestoreConfig:
    """The paper recipe as the given variant of :data:`VARIANTS` would run it on ``device`` (with
    ``cells_per_gpu`` > 1: as the fast path resolves it for batched cells, contiguous)."""
    overrides = {"run.cells_per_gpu": cells_per_gpu, "recipe.cuda_graphs": cuda_graphs}
    return cell_recipe(build_config("paper", VARIANTS[path] | overrides), device, out_channels=1)


def speed_input(size: int) -> tuple[np.ndarray, np.ndarray]:
    """The fixed random image and bernoulli mask, (size, size) each, that every timed step trains on."""
    rng = np.random.default_rng(derived_seed(0, f"speed/{size}"))
    image = rng.random((size, size), dtype=np.float32)
    mask = (rng.random((size, size)) < 0.5).astype(np.float32)
    return image, mask


def make_trainer(path: str, size: int, device: torch.device | str = "auto", *, seed: int = 0,
                 cells_per_gpu: int = 1, cuda_graphs: bool = False) -> Trainer:
    """A Trainer of the paper network on :func:`speed_input`, with :func:`path_recipe`'s recipe."""
    device = resolve_device(str(device))
    recipe = path_recipe(path, device, cells_per_gpu=cells_per_gpu, cuda_graphs=cuda_graphs)
    return Trainer(*speed_input(size), recipe, partial(build_network, recipe.net), seed=seed, device=device)


def make_anchor(size: int, device: torch.device | str = "auto") -> AuthorsStep:
    """The authors' network and step (bench.authors) on :func:`speed_input`."""
    return AuthorsStep(*speed_input(size), seed=0, device=resolve_device(str(device)))


def train_step(trainer: Trainer | BatchedTrainer) -> None:
    """One full iteration (perturbed input, forward, loss, backward, Adam) of one cell or of a batched
    model, synchronised at the end."""
    trainer.forward_backward()
    trainer.optimizer_step()
    if trainer.device.type == "cuda":
        torch.cuda.synchronize(trainer.device)


def anchor_step(anchor: AuthorsStep) -> None:
    """One iteration of the authors' loop (it reads the loss on the host, so it ends synchronised)."""
    anchor.step()


def time_steps(trainer: Trainer | BatchedTrainer | AuthorsStep, steps: int) -> float:
    """Seconds per step over ``steps`` consecutive steps (one clock read each side)."""
    step = anchor_step if isinstance(trainer, AuthorsStep) else train_step
    if trainer.device.type == "cuda":
        torch.cuda.synchronize(trainer.device)
    start = time.perf_counter()
    for _ in range(steps):
        step(trainer)
    return (time.perf_counter() - start) / steps


@dataclasses.dataclass(frozen=True)
class RatioMeasurement:
    size: int
    reference_s: float  # median seconds per step
    fast_s: float
    rounds: int
    steps_per_round: int
    reference_precision: str
    fast_precision: str
    authors_s: float | None = None  # the authors' code (bench.authors), when it was timed too
    fast_winograd: bool = False  # the fast path's 3x3 convolutions by Winograd (dip.winograd)
    fast_matmul_1x1: bool = False  # the fast path's 1x1 convolutions as matmuls (dip.conv)
    fast_keep_heap: bool = False  # the fast path's malloc keeping freed memory (dip.heap)

    @property
    def ratio(self) -> float:
        return self.reference_s / self.fast_s

    @property
    def fast_vs_authors(self) -> float | None:
        return None if self.authors_s is None else self.authors_s / self.fast_s


def measure_ratio(size: int, rounds: int = 3, steps: int = 2, warmup: int = 2, device: str = "auto",
                  authors: bool = False) -> RatioMeasurement:
    """Reference and fast path (and with ``authors`` the authors' code) timed in alternating rounds, so
    all see the same machine load, each in a process of its own (bench.isolated: no shared heap)."""
    from bench.isolated import StepperProcess

    variants = ("reference", "fast") + (("authors",) if authors else ())
    with contextlib.ExitStack() as stack:
        # started side by side (each start-up is seconds of imports); the warm-up waits for each in turn
        steppers = {v: stack.enter_context(StepperProcess(v, size, device, wait=False)) for v in variants}
        for stepper in steppers.values():
            stepper.time_steps(warmup)
        samples: dict[str, list[float]] = {v: [] for v in steppers}
        for _ in range(rounds):
            for variant, stepper in steppers.items():
                samples[variant].append(stepper.time_steps(steps))
        for stepper in steppers.values():
            stepper.stop()  # all end side by side; the stack's close() then waits for each
    fast = steppers["fast"].execution
    return RatioMeasurement(
        size=size,
        reference_s=statistics.median(samples["reference"]),
        fast_s=statistics.median(samples["fast"]),
        rounds=rounds,
        steps_per_round=steps,
        reference_precision=steppers["reference"].execution["precision"],
        fast_precision=fast["precision"],
        authors_s=statistics.median(samples["authors"]) if authors else None,
        fast_winograd=fast["winograd"],
        fast_matmul_1x1=fast["matmul_1x1"],
        fast_keep_heap=fast["keep_heap"],
    )


@dataclasses.dataclass(frozen=True)
class BatchedMeasurement:
    size: int
    cells: int
    alone_s: float  # median seconds per cell-iteration, the cells' fast-path trainers stepped one after another
    batched_s: float  # median seconds per cell-iteration, one batched step of all the cells
    rounds: int

    @property
    def ratio(self) -> float:
        return self.alone_s / self.batched_s


def measure_batched(size: int, cells: int, rounds: int = 3, steps: int = 2, warmup: int = 2,
                    device: str = "auto", cuda_graphs: bool = False) -> BatchedMeasurement:
    """``cells`` fast-path cells stepped alone, one after another, against one batched model of them
    (--cells-per-gpu), in alternating rounds; both per cell-iteration, both with or both without
    ``cuda_graphs``. (The warm-up should outlast the graphs' eager warm-up steps.)"""
    alone = [make_trainer("fast", size, device, seed=k, cuda_graphs=cuda_graphs) for k in range(cells)]
    batch = BatchedTrainer([make_trainer("fast", size, device, seed=k, cells_per_gpu=cells, cuda_graphs=cuda_graphs)
                            for k in range(cells)])

    def time_alone(n: int) -> float:
        return sum(time_steps(trainer, n) for trainer in alone) / cells

    def time_batched(n: int) -> float:
        return time_steps(batch, n) / cells

    time_alone(warmup), time_batched(warmup)
    samples = [(time_alone(steps), time_batched(steps)) for _ in range(rounds)]
    return BatchedMeasurement(size, cells, statistics.median(a for a, _ in samples),
                              statistics.median(b for _, b in samples), rounds)


def operator_profile(path: str, size: int, steps: int = 3, top: int = 12, device: str = "auto") -> list[dict]:
    """The operators that take the most self time over ``steps`` profiled steps (after one warm-up)."""
    from torch.profiler import ProfilerActivity, profile

    trainer = make_trainer(path, size, device)
    time_steps(trainer, 1)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if trainer.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            train_step(trainer)
    on_cuda = trainer.device.type == "cuda"
    events = [e for e in prof.key_averages() if e.key != "ProfilerStep*"]
    time_of = (lambda e: e.self_device_time_total) if on_cuda else (lambda e: e.self_cpu_time_total)
    total = sum(time_of(e) for e in events) or 1
    rows = []
    for event in sorted(events, key=time_of, reverse=True)[:top]:
        rows.append(
            {
                "operator": event.key,
                "ms_per_step": time_of(event) / 1e3 / steps,
                "share": time_of(event) / total,
                "calls_per_step": event.count / steps,
            }
        )
    return rows
