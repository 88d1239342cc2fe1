"""K cells as one batched model give each cell what it gets alone (the basis of many cells per GPU)."""

from functools import partial

import pytest
import torch

from bench.data import centre_crop, load_image, load_images
from dip.batched import BatchedTrainer
from dip.masks import bernoulli_mask
from dip.nets import SkipNetConfig, build_network
from dip.recipe import RestoreConfig
from dip.trainer import Trainer

TINY_NET = SkipNetConfig(scales=3, channels_down=16, channels_up=16)
CONFIG = RestoreConfig(net=TINY_NET)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def cells(data_dir):
    """(image, mask, seed) of three cells: two seeds of House, one of C.man, 64x64 crops."""
    images = load_images()
    out = []
    for name, seed in (("house", 0), ("house", 1), ("cman", 0)):
        image = centre_crop(load_image(images[name], "GT", data_dir), 64)
        out.append((image, bernoulli_mask(image.shape, seed=seed, name=name), seed))
    return out


def trainers(cells, config=CONFIG) -> list[Trainer]:
    return [Trainer(image, mask, config, partial(build_network, config.net), seed=seed, device=CPU)
            for image, mask, seed in cells]


def test_each_cell_gets_its_own_gradient(cells):
    alone = trainers(cells)
    batched = BatchedTrainer(trainers(cells))
    for k, trainer in enumerate(alone):  # each cell starts from the weights its seed gives it alone
        for name, param in trainer.net.named_parameters():
            assert torch.equal(batched.cell_parameters(k)[name], param.detach())
    _, losses = batched.forward_backward()
    for k, trainer in enumerate(alone):
        _, loss = trainer.forward_backward()
        torch.testing.assert_close(losses[k], loss, rtol=1e-6, atol=0)
        for (name, param) in trainer.net.named_parameters():
            torch.testing.assert_close(batched.params[name].grad[k], param.grad, rtol=1e-4, atol=1e-7)


def test_batched_training_follows_each_cell_trained_alone(cells):
    """Three steps of Adam: each cell's losses and outputs match its training alone (not every
    parameter: the biases before a BatchNorm have a zero gradient up to rounding, which Adam turns
    into steps of +-lr that the BatchNorm then removes). The grouped
    arithmetic rounds differently (about 1e-6 relative in the gradients), and Adam's normalised update
    amplifies that in the parameters whose gradient is near zero, so the trajectories part slowly, as
    any two roundings of this chaotic optimisation do (measured here: outputs 1e-5 apart after 3 steps,
    1e-3 after 10). The cells themselves differ by far more than the tolerance."""
    alone = trainers(cells)
    batched = BatchedTrainer(trainers(cells))
    for _ in range(3):
        outputs, losses = batched.forward_backward()
        batched.optimizer_step()
        for k, trainer in enumerate(alone):
            out, loss = trainer.forward_backward()
            trainer.optimizer_step()
            torch.testing.assert_close(losses[k], loss, rtol=2e-5, atol=0)
            torch.testing.assert_close(outputs[k], out, rtol=0, atol=2e-4)
    assert (outputs[0] - outputs[1]).abs().max() > 100 * 2e-4  # the cells really are different


def test_cells_of_different_sizes_or_recipes_are_refused(cells):
    small = trainers(cells[:1])
    image, mask, seed = cells[1]
    other_size = Trainer(image[:16, :16], mask[:16, :16], CONFIG, partial(build_network, TINY_NET), seed=seed, device=CPU)
    with pytest.raises(ValueError, match="one input shape and one recipe"):
        BatchedTrainer(small + [other_size])
    with pytest.raises(ValueError, match="at least one trainer"):
        BatchedTrainer([])
