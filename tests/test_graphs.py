"""Whole-step CUDA graphs (dip.graphs): the bookkeeping around the capture, on the CPU.

The capture itself needs a GPU (``make gpu-check`` compares it with eager). Here an eager stand-in
"captures" the two bodies and replays them by running them again, with what a replay means on a
GPU: the backward pass writes its gradients afresh (a captured backward writes to the addresses it
was captured with; it does not accumulate), and the output and loss are overwritten in place. Everything around it is the real code: the warm-up, the
step counter, the loss handed to the loop, the in-place restore of Adam's state.
"""

from functools import partial

import numpy as np
import pytest
import torch

from dip.graphs import WholeStepGraphs
from dip.masks import bernoulli_mask
from dip.nets import SkipNetConfig, build_network
from dip.recipe import RestoreConfig
from dip.trainer import Trainer

TINY_NET = SkipNetConfig(scales=3, channels_down=16, channels_up=16)
IMAGE = np.random.default_rng(5).random((32, 32), dtype=np.float32)
MASK = bernoulli_mask((32, 32), seed=0, name="graphs")


def trainer_of(config: RestoreConfig) -> Trainer:
    return Trainer(IMAGE, MASK, config, partial(build_network, config.net), seed=0, device=torch.device("cpu"))


def with_eager_graphs(trainer: Trainer, captures: list[int], warmup: int = 3) -> Trainer:
    def capture(body_a, body_b):
        captures.append(trainer.steps)

        def replay_a():
            trainer.optimizer.zero_grad(set_to_none=True)
            captured = trainer.graphs.static
            body_a()
            if captured is not None:  # a graph's outputs live at fixed addresses: each replay overwrites them
                for old, new in zip(captured, trainer.graphs.static):
                    old.copy_(new)
                trainer.graphs.static = captured

        return replay_a, body_b

    trainer.graphs = WholeStepGraphs(trainer, capture=capture, warmup=warmup)
    return trainer


def steps(trainer: Trainer, count: int) -> list[torch.Tensor]:
    losses = []
    for _ in range(count):
        _, loss = trainer.forward_backward()
        trainer.optimizer_step()
        losses.append(loss)
    return losses


@pytest.mark.parametrize("input_noise", ["fixed", "cumulative"])
def test_graph_bookkeeping_takes_the_eager_steps(input_noise):
    """Warm-up, capture after it, then replays: the same steps, bit for bit, as the plain eager Trainer."""
    config = RestoreConfig(fused_adam=True, input_noise=input_noise, net=TINY_NET)
    eager, captures = trainer_of(config), []
    graphed = with_eager_graphs(trainer_of(config), captures)
    eager_losses, graphed_losses = steps(eager, 8), steps(graphed, 8)
    assert captures == [3]  # once, after the three warm-up steps
    assert [float(v) for v in graphed_losses] == [float(v) for v in eager_losses]  # each loss kept, not overwritten
    assert len({float(v) for v in graphed_losses}) == 8
    for a, b in zip(eager.params, graphed.params):
        assert torch.equal(a, b)
    assert graphed.steps == eager.steps == 8
    assert torch.equal(graphed.noise_gen.get_state(), eager.noise_gen.get_state())
    assert torch.equal(graphed.net_input, eager.net_input)


def test_after_the_capture_adams_state_is_restored_into_the_captured_tensors():
    config = RestoreConfig(fused_adam=True, net=TINY_NET)
    trainer = with_eager_graphs(trainer_of(config), [])
    before_first_step = trainer.kept_optimizer_state()
    steps(trainer, 5)
    kept = trainer.kept_optimizer_state()
    steps(trainer, 2)
    live = {id(t) for state in trainer.optimizer.state.values() for t in state.values()}
    trainer.restore_optimizer_state(kept)
    assert {id(t) for state in trainer.optimizer.state.values() for t in state.values()} == live  # same tensors
    for j, state in enumerate(trainer.optimizer.state.values()):
        for key, value in state.items():
            assert torch.equal(value, kept["state"][j][key])
    trainer.restore_optimizer_state(before_first_step)  # what Adam starts from: zeros, step 0
    assert all(not value.any() for state in trainer.optimizer.state.values() for value in state.values())


def test_before_the_capture_the_state_is_restored_as_without_graphs():
    config = RestoreConfig(fused_adam=True, net=TINY_NET)
    trainer = with_eager_graphs(trainer_of(config), [], warmup=5)
    steps(trainer, 2)
    kept = trainer.kept_optimizer_state()
    steps(trainer, 1)
    trainer.restore_optimizer_state(kept)
    assert not trainer.graphs.captured
    assert all(torch.equal(trainer.optimizer.state_dict()["state"][j]["exp_avg"], kept["state"][j]["exp_avg"])
               for j in kept["state"])
