import pytest
import torch

from dip.nets import SkipNetConfig, check_input_size, count_parameters
from dip.nets.blocks import ReflectionPad
from dip.nets.skipnet import SkipNet
from dip.timing import count_flops


def test_paper_network_has_2217573_parameters():
    assert count_parameters(SkipNet()) == 2_217_573


def test_parameter_count_follows_the_config():
    # RGB output adds 2 * (128 weights + 1 bias) to the 1x1 head
    assert count_parameters(SkipNet(SkipNetConfig(out_channels=3))) == 2_217_573 + 2 * 129


@pytest.mark.parametrize("size", [64, 256, 512])
def test_output_shape_and_range(size):
    torch.manual_seed(0)
    net = SkipNet()
    with torch.no_grad():
        out = net(torch.rand(1, 32, size, size) * 0.1)
    assert out.shape == (1, 1, size, size)
    assert out.min() >= 0 and out.max() <= 1  # sigmoid head


@pytest.mark.parametrize("mode", ["bilinear", "bicubic", "nearest"])
def test_upsampling_modes_and_rgb_output(mode):
    net = SkipNet(SkipNetConfig(out_channels=3, upsample_mode=mode, scales=3, channels_down=8, channels_up=8))
    with torch.no_grad():
        assert net(torch.rand(1, 32, 32, 48)).shape == (1, 3, 32, 48)


def test_flop_count_matches_reference_figures():
    """~115 GFLOP per 256x256 iteration and ~460 at 512 (docs/protocol.md), counted on the meta device."""
    flops_256 = count_flops(SkipNet, (1, 32, 256, 256))
    assert flops_256 == 114_917_113_856
    assert count_flops(SkipNet, (1, 32, 512, 512)) == 4 * flops_256  # convolutions scale with pixels


@pytest.mark.parametrize("size", [(100, 256), (256, 48), (32, 32)])
def test_sizes_the_network_cannot_take_are_rejected_with_the_rule(size):
    with pytest.raises(ValueError, match="multiples of 32 and at least 64"):
        check_input_size(*size, SkipNetConfig())


def test_bad_config_values_are_rejected():
    with pytest.raises(ValueError, match="upsample_mode"):
        SkipNetConfig(upsample_mode="cubic")
    with pytest.raises(ValueError, match="scales"):
        SkipNetConfig(scales=0)


def test_reflection_pad_keeps_bf16_under_autocast_and_is_exact():
    x = torch.randn(1, 4, 8, 8).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        padded = ReflectionPad(1)(x)
    assert padded.dtype == torch.bfloat16
    assert torch.equal(padded, torch.nn.ReflectionPad2d(1)(x.float()).to(torch.bfloat16))
