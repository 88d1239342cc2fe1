"""The whole training step replayed as CUDA graphs (``cuda_graphs``): of one cell
(:class:`dip.trainer.Trainer`) or of K cells as one batched model (:class:`dip.batched.BatchedTrainer`).

A paper-network step is a few hundred small kernels; launched one by one from Python the GPU waits
on the host. Captured once and replayed, a step costs two graph launches. The step is captured as
two graphs because the restoration loop acts between them at its looks (the backtracking check,
the restore after a non-finite loss): graph A is the input draw (from each cell's own generator,
registered with the graph so that each replay draws fresh noise), forward, loss, backward and the
non-finite guard; graph B is Adam's step (capturable, so its step count and bias corrections stay on
the device). Everything the loop does to the state between replays acts in place on the captured
tensors: the parameter and optimiser-state restores of backtracking copy into them.

The first ``warmup`` steps run eagerly on a side stream (cuDNN autotuning, lazy workspaces), then
the graphs are captured. Capturing and replaying are behind a ``capture`` function, so that the
bookkeeping here (the warm-up, the step counters, the loss handed to the loop) is tested on a CPU
with an eager stand-in (tests/test_graphs.py); the capture itself runs only on a GPU
(``make gpu-check`` compares it with eager).

What is replayed is a :class:`Stepper`: the Trainer and the BatchedTrainer both are one.
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from collections.abc import Callable, Iterator
from typing import Protocol

import torch

# (body of graph A, body of graph B) -> (replay A, replay B)
Body = Callable[[], None]
Capture = Callable[[Body, Body], tuple[Body, Body]]

# Eager steps before the capture (PyTorch's examples warm up for 3 iterations on a side stream)
WARMUP_STEPS = 3


class Stepper(Protocol):
    """What :class:`WholeStepGraphs` replays: one step split where the loop acts, eager or as graph bodies."""

    device: torch.device
    optimizer: torch.optim.Optimizer | object  # anything with zero_grad(set_to_none=True)

    def eager_forward_backward(self) -> tuple[torch.Tensor, torch.Tensor]: ...

    def eager_optimizer_step(self) -> None: ...

    def graph_forward_backward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Input draw, forward, loss, backward, guard: device work only (graph A's body)."""

    def count_step(self) -> None:
        """The host-side step counters of a replayed step (a graph replays no Python)."""

    def generators(self) -> list[torch.Generator]: ...


def cuda_capture(device: torch.device, generators: list[torch.Generator]) -> Capture:
    """Capture the two bodies on ``device`` as CUDA graphs sharing one memory pool; ``generators`` (the
    noise) are registered with graph A, so each replay advances them instead of repeating the captured draw."""

    def capture(body_a: Body, body_b: Body) -> tuple[Body, Body]:
        # torch.cuda.graph synchronises and empties the cache of the current device, and its default
        # capture stream is one per process, made on whichever device was current at the first capture:
        # make ``device`` current and capture on a stream of its own.
        with torch.cuda.device(device):
            stream = torch.cuda.Stream(device)
            graph_a, graph_b = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
            for generator in generators:
                graph_a.register_generator_state(generator)
            torch.cuda.synchronize(device)
            with torch.cuda.graph(graph_a, stream=stream):
                body_a()
            with torch.cuda.graph(graph_b, pool=graph_a.pool(), stream=stream):
                body_b()
        return graph_a.replay, graph_b.replay

    return capture


@contextlib.contextmanager
def side_stream(device: torch.device) -> Iterator[None]:
    """Run the block on a fresh CUDA stream ordered after and before the current one (no-op elsewhere)."""
    if device.type != "cuda":
        yield
        return
    current = torch.cuda.current_stream(device)
    stream = torch.cuda.Stream(device)
    stream.wait_stream(current)
    with torch.cuda.stream(stream):
        yield
    current.wait_stream(stream)


class WholeStepGraphs:
    """A Stepper's ``forward_backward`` and ``optimizer_step``: eager for ``warmup`` steps, then replays."""

    def __init__(self, stepper: Stepper, capture: Capture | None = None, warmup: int = WARMUP_STEPS) -> None:
        # Weak: the stepper holds these graphs, and a strong reference back would keep a finished trainer
        # (its tensors and the graphs' memory pool) alive until a garbage collection, past the next cell's
        # peak-memory reset.
        self._stepper = weakref.ref(stepper)
        self.warmup = warmup
        self.capture = capture or cuda_capture(stepper.device, stepper.generators())
        self.eager_steps = 0
        self.replay_a: Callable[[], None] | None = None
        self.replay_b: Callable[[], None] | None = None
        self.static: tuple[torch.Tensor, torch.Tensor] | None = None  # graph A's outputs and losses

    @property
    def stepper(self) -> Stepper:
        stepper = self._stepper()
        if stepper is None:
            raise RuntimeError("the trainer these graphs step has been freed")
        return stepper

    @property
    def captured(self) -> bool:
        return self.replay_a is not None

    def forward_backward(self) -> tuple[torch.Tensor, torch.Tensor]:
        stepper = self.stepper
        if not self.captured and self.eager_steps < self.warmup:
            with side_stream(stepper.device):
                return stepper.eager_forward_backward()
        if not self.captured:
            self._capture()
        stepper.count_step()
        self.replay_a()
        out, loss = self.static
        # The loop keeps unread losses until its next look; the next replay overwrites graph A's.
        return out, loss.clone()

    def optimizer_step(self) -> None:
        if self.captured:
            self.replay_b()
            return
        self.eager_steps += 1
        with side_stream(self.stepper.device), warnings.catch_warnings():
            # capturable Adam warns when it steps outside a capture, as the warm-up steps do
            warnings.filterwarnings("ignore", message=".*capturable=True.*")
            self.stepper.eager_optimizer_step()

    def _capture(self) -> None:
        stepper = self.stepper
        # Fresh gradients inside graph A (allocated in its pool), read by graph B at their addresses.
        stepper.optimizer.zero_grad(set_to_none=True)

        def body_a() -> None:
            self.static = stepper.graph_forward_backward()

        self.replay_a, self.replay_b = self.capture(body_a, stepper.eager_optimizer_step)
