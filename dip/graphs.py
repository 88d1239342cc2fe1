"""The whole training step of a :class:`dip.trainer.Trainer` replayed as CUDA graphs (``cuda_graphs``).

A paper-network step is a few hundred small kernels; launched one by one from Python the GPU waits
on the host. Captured once and replayed, a step costs two graph launches. The step is captured as
two graphs because the restoration loop acts between them at its looks (the backtracking check,
the restore after a non-finite loss): graph A is the input draw (from the cell's own generator,
registered with the graph so that each replay draws fresh noise), forward, loss, backward and the
non-finite guard; graph B is Adam's step (capturable, so its step count and bias corrections stay on
the device). Everything the loop does to the state between replays acts in place on the captured
tensors: the parameter and optimiser-state restores of backtracking copy into them
(:meth:`Trainer.restore_optimizer_state` does so when graphs are on).

The first ``warmup`` steps run eagerly on a side stream (cuDNN autotuning, lazy workspaces), then
the graphs are captured. Capturing and replaying are behind a ``capture`` function, so that the
bookkeeping here (the warm-up, the step counter, the loss handed to the loop) is tested on a CPU
with an eager stand-in (tests/test_graphs.py); the capture itself runs only on a GPU
(``make gpu-check`` compares it with eager).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from dip.trainer import Trainer

# (body of graph A, body of graph B) -> (replay A, replay B)
Capture = Callable[[Callable[[], None], Callable[[], None]], tuple[Callable[[], None], Callable[[], None]]]

# Eager steps before the capture (PyTorch's examples warm up for 3 iterations on a side stream)
WARMUP_STEPS = 3


def cuda_capture(generator: torch.Generator) -> Capture:
    """Capture the two bodies as CUDA graphs sharing one memory pool; ``generator`` (the noise) is
    registered with graph A, so each replay advances it instead of repeating the captured draw."""

    def capture(body_a: Callable[[], None], body_b: Callable[[], None]) -> tuple[Callable[[], None], Callable[[], None]]:
        graph_a, graph_b = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        graph_a.register_generator_state(generator)
        torch.cuda.synchronize()
        with torch.cuda.graph(graph_a):
            body_a()
        with torch.cuda.graph(graph_b, pool=graph_a.pool()):
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
    """A Trainer's ``forward_backward`` and ``optimizer_step``: eager for ``warmup`` steps, then replays."""

    def __init__(self, trainer: Trainer, capture: Capture | None = None, warmup: int = WARMUP_STEPS) -> None:
        self.trainer = trainer
        self.warmup = warmup
        self.capture = capture or cuda_capture(trainer.noise_gen)
        self.eager_steps = 0
        self.replay_a: Callable[[], None] | None = None
        self.replay_b: Callable[[], None] | None = None
        self.static: tuple[torch.Tensor, torch.Tensor] | None = None  # graph A's output (1, C, H, W) and loss

    @property
    def captured(self) -> bool:
        return self.replay_a is not None

    def forward_backward(self) -> tuple[torch.Tensor, torch.Tensor]:
        trainer = self.trainer
        if not self.captured and self.eager_steps < self.warmup:
            with side_stream(trainer.device):
                return trainer.eager_forward_backward()
        if not self.captured:
            self._capture()
        trainer.steps += 1
        self.replay_a()
        out, loss = self.static
        # The loop keeps unread losses until its next look; the next replay overwrites graph A's.
        return out, loss.clone()

    def optimizer_step(self) -> None:
        if self.captured:
            self.replay_b()
            return
        self.eager_steps += 1
        with side_stream(self.trainer.device), warnings.catch_warnings():
            # capturable Adam warns when it steps outside a capture, as the warm-up steps do
            warnings.filterwarnings("ignore", message=".*capturable=True.*")
            self.trainer.eager_optimizer_step()

    def _capture(self) -> None:
        trainer = self.trainer
        # Fresh gradients inside graph A (allocated in its pool), read by graph B at their addresses.
        trainer.optimizer.zero_grad(set_to_none=True)

        def body_a() -> None:
            trainer.draw_input(walk=True)  # warm-up steps came first: a walking z has left its start
            self.static = trainer.forward_loss_backward()

        self.replay_a, self.replay_b = self.capture(body_a, trainer.eager_optimizer_step)
