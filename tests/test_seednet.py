"""The seed reproduction's network: shape, parameter count, wiring, and its recipe preset."""

import dataclasses

import pytest
import torch

from bench.config import RECIPES, build_config
from dip.nets import SkipNetConfig, build_network, count_parameters
from dip.nets.seednet import SeedNet
from dip.nets.skipnet import SkipNet
from dip.recipe import RestoreConfig

SEED = SkipNetConfig(layout="seed")


def test_seed_network_has_2070245_parameters():
    # By hand, (weights + bias) per conv, 2 per BatchNorm channel:
    # down 0: 32*9*128+128 + 256 + 128*9*128+128 + 256 = 185,088; downs 1-4: 4 * 295,680 = 1,182,720
    # skips: 5 * (128*4+4 + 8) = 2,620; deepest up (4 in): 8 + 4*9*128+128 + 256 + 128*128+128 + 256 = 21,768
    # other ups (132 in): 4 * (264 + 132*9*128+128 + 256 + 16,512 + 256) = 677,920; head 128+1 = 129
    assert count_parameters(SeedNet(SEED)) == 185_088 + 1_182_720 + 2_620 + 21_768 + 677_920 + 129 == 2_070_245


@pytest.mark.parametrize("size", [64, 128])
def test_output_shape_and_range(size):
    torch.manual_seed(0)
    with torch.no_grad():
        out = SeedNet(SkipNetConfig(layout="seed", out_channels=3))(torch.rand(1, 32, size, size) * 0.1)
    assert out.shape == (1, 3, size, size)
    assert out.min() >= 0 and out.max() <= 1


def test_skips_are_taken_after_downsampling_and_the_decoder_starts_from_the_deepest_skip():
    net = SeedNet(SEED)
    seen = {}
    for i, skip in enumerate(net.skips):
        skip.register_forward_hook(lambda m, inputs, out, i=i: seen.update({i: tuple(inputs[0].shape)}))  # returns None
    first_up_input = []
    net.ups[0].register_forward_hook(lambda m, inputs, out: first_up_input.append(tuple(inputs[0].shape)))
    with torch.no_grad():
        net(torch.rand(1, 32, 64, 64))
    # skip i reads the 128-channel output of down block i, at 64 / 2**(i+1)
    assert seen == {i: (1, 128, 64 >> (i + 1), 64 >> (i + 1)) for i in range(5)}
    assert first_up_input == [(1, 4, 2, 2)]  # only the 4-channel deepest skip
    # The paper's network, by contrast, takes skip 0 at full resolution from its 32-channel input.
    paper = SkipNet()
    paper_seen = []
    paper.body.skip.register_forward_hook(lambda m, inputs, out: paper_seen.append(tuple(inputs[0].shape)))
    with torch.no_grad():
        paper(torch.rand(1, 32, 64, 64))
    assert paper_seen == [(1, 32, 64, 64)]


def test_build_network_follows_the_layout():
    assert type(build_network(SkipNetConfig())) is SkipNet
    assert type(build_network(SEED)) is SeedNet


def test_layout_validation():
    with pytest.raises(ValueError, match="unknown layout"):
        SkipNetConfig(layout="unet")
    with pytest.raises(ValueError, match="channels_skip >= 1"):
        SkipNetConfig(layout="seed", channels_skip=0)


def test_seed_recipe_preset_keeps_the_profile_budget_and_takes_overrides():
    config = build_config("quick", {"run.recipe_name": "seed"})
    recipe = config.recipe
    assert config.recipe_name == "seed" and recipe.iterations == 600  # the quick profile's budget
    assert (recipe.lr, recipe.input_noise, recipe.backtracking) == (0.01, "cumulative", False)
    assert recipe.input_noise_std == pytest.approx(1 / 30) and recipe.input_scale == 0.1
    assert (recipe.net.layout, recipe.net.upsample_mode, recipe.net.negative_slope) == ("seed", "bicubic", 0.01)
    tuned = build_config("quick", {"run.recipe_name": "seed", "recipe.lr": 0.001})
    assert tuned.recipe.lr == 0.001 and tuned.recipe.net.layout == "seed"
    assert build_config("quick", {}).recipe == RestoreConfig(iterations=600) == dataclasses.replace(RECIPES["paper"], iterations=600)
