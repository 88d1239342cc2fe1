"""Whole-step CUDA graphs (dip.graphs): the bookkeeping around the capture, on the CPU.

The capture itself needs a GPU (``make gpu-check`` compares it with eager). Here an eager stand-in
"captures" the two bodies and replays them by running them again, with what a replay means on a
GPU: the backward pass writes its gradients afresh (a captured backward writes to the addresses it
was captured with; it does not accumulate), and the output and loss are overwritten in place.
Everything around it is the real code: the warm-up, the step counter, the loss handed to the loop,
the in-place restore of Adam's state.
"""

from functools import partial

import numpy as np
import pytest
import torch

from dip.batched import BatchedTrainer
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


def with_eager_graphs(stepper, captures: list[int], warmup: int = 3):
    """``stepper`` (a Trainer or a BatchedTrainer) with its step behind WholeStepGraphs and an eager
    stand-in for the capture; ``captures`` collects the warm-up steps taken at each capture."""

    def capture(body_a, body_b):
        captures.append(stepper.graphs.eager_steps)

        def replay_a():
            stepper.optimizer.zero_grad(set_to_none=True)
            captured = stepper.graphs.static
            body_a()
            if captured is not None:  # a graph's outputs live at fixed addresses: each replay overwrites them
                for old, new in zip(captured, stepper.graphs.static):
                    old.copy_(new)
                stepper.graphs.static = captured

        return replay_a, body_b

    stepper.graphs = WholeStepGraphs(stepper, capture=capture, warmup=warmup)
    return stepper


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


def test_a_batched_step_replays_as_it_steps_eagerly():
    """K cells as one model behind the graphs (the skips of the host read and the device guard included):
    the same steps, bit for bit, as the eager batched model."""
    config = RestoreConfig(fused_adam=True, net=TINY_NET)
    images = [np.random.default_rng(k).random((32, 32), dtype=np.float32) for k in range(3)]

    def batch():
        return BatchedTrainer([Trainer(image, MASK, config, partial(build_network, config.net), seed=k,
                                       device=torch.device("cpu")) for k, image in enumerate(images)])

    eager, captures = batch(), []
    graphed = with_eager_graphs(batch(), captures)
    skips = [None, None, [False, True, False], None, None, [True, False, False], None, None]
    for skip in skips:
        (out_e, loss_e), (out_g, loss_g) = eager.forward_backward(), graphed.forward_backward()
        assert torch.equal(out_e, out_g) and torch.equal(loss_e, loss_g)
        eager.optimizer_step(skip)
        graphed.optimizer_step(skip)
    assert captures == [3]
    for name in eager.params:
        assert torch.equal(eager.params[name], graphed.params[name])
    assert torch.equal(eager.optimizer.steps, graphed.optimizer.steps)
    assert eager.optimizer.steps.tolist() == [7.0, 7.0, 8.0]  # cells 1 and 0 skipped one step each
    assert [t.steps for t in graphed.trainers] == [8, 8, 8]
