"""1x1 convolutions as one matmul (dip.conv, ``matmul_1x1``): forward and backward against F.conv2d in
float64 (exact up to the order of the sum), the cases it leaves to nn.Conv2d, and the switch on the paths."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

import bench.execution
from bench.config import PROFILES, build_config
from bench.execution import cell_recipe
from dip.batched import check_batchable
from dip.conv import Conv2d, conv1x1_matmul, switch_convolutions
from dip.nets import SkipNetConfig
from dip.nets.skipnet import SkipNet
from dip.recipe import RestoreConfig
from dip.trainer import check_device
from tests.test_config import parse


def conv_and_input(channels_in: int = 16, channels_out: int = 8, side: int = 12, **kwargs) -> tuple[Conv2d, torch.Tensor]:
    torch.manual_seed(0)
    return Conv2d(channels_in, channels_out, 1, **kwargs), torch.randn(1, channels_in, side, side + 3)


@pytest.mark.parametrize("bias", [True, False])
def test_forward_and_backward_equal_conv2d_in_float64(bias):
    conv, x = conv_and_input(bias=bias)
    conv, x = conv.double(), x.double().requires_grad_()
    grad = torch.randn(1, 8, 12, 15, dtype=torch.float64)
    expected = F.conv2d(x, conv.weight, conv.bias)
    expected_grads = torch.autograd.grad(expected, [x, conv.weight] + ([conv.bias] if bias else []), grad)
    out = conv1x1_matmul(x, conv.weight, conv.bias)
    grads = torch.autograd.grad(out, [x, conv.weight] + ([conv.bias] if bias else []), grad)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, rtol=1e-13, atol=1e-13)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-13, atol=1e-13)


def test_the_module_takes_its_1x1_calls_when_switched_on_in_fp32():
    conv, x = conv_and_input()
    plain = F.conv2d(x, conv.weight, conv.bias)
    assert torch.equal(conv(x), plain)  # off: exactly nn.Conv2d
    conv.matmul_1x1 = True
    assert torch.equal(conv(x), conv1x1_matmul(x, conv.weight, conv.bias))
    torch.testing.assert_close(conv(x), plain, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", ["3x3", "stride 2", "batch 2", "channels_last", "bf16 autocast"])
def test_cases_the_matmul_does_not_take_run_as_nn_conv2d(case):
    conv, x = conv_and_input(stride=2 if case == "stride 2" else 1)
    if case == "3x3":
        torch.manual_seed(0)
        conv = Conv2d(16, 8, 3)
    if case == "batch 2":
        x = torch.cat([x, x])
    if case == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    conv.matmul_1x1 = True
    with torch.autocast("cpu", torch.bfloat16, enabled=case == "bf16 autocast"):
        out = conv(x)
        expected = F.conv2d(x, conv.weight, conv.bias, conv.stride)
    assert torch.equal(out, expected)


def test_every_conv_of_the_paper_network_is_switched():
    net = SkipNet(SkipNetConfig())
    assert switch_convolutions(net, winograd=False, matmul_1x1=True) == 26  # the 1x1 head included
    assert all(m.matmul_1x1 and not m.winograd for m in net.modules() if isinstance(m, Conv2d))


@pytest.mark.parametrize("fast_bf16, avx2, expected", [(False, True, True), (False, False, False), (True, True, False)])
def test_the_fast_path_uses_it_where_it_uses_winograd(monkeypatch, fast_bf16, avx2, expected):
    monkeypatch.setattr(bench.execution, "cpu_has_fast_bf16", lambda: fast_bf16)
    monkeypatch.setattr(bench.execution, "cpu_convolutions_run_avx2", lambda: avx2)
    recipe = cell_recipe(PROFILES["smoke"], torch.device("cpu"), 1)
    assert recipe.matmul_1x1 == recipe.winograd == expected


def test_explicit_flags_override_the_paths_choice():
    cpu = torch.device("cpu")
    assert not cell_recipe(build_config("smoke", parse("--path", "reference")), cpu, 1).matmul_1x1
    assert cell_recipe(build_config("smoke", parse("--path", "reference", "--matmul-1x1")), cpu, 1).matmul_1x1
    assert not cell_recipe(build_config("smoke", parse("--no-matmul-1x1")), cpu, 1).matmul_1x1


def test_batched_cells_refuse_it():
    with pytest.raises(ValueError, match="matmul_1x1"):
        check_batchable(dataclasses.replace(RestoreConfig(), matmul_1x1=True))


def test_it_is_not_the_paths_choice_under_compile_and_refused_with_it(monkeypatch):
    monkeypatch.setattr(bench.execution, "cpu_has_fast_bf16", lambda: False)
    monkeypatch.setattr(bench.execution, "cpu_convolutions_run_avx2", lambda: True)
    cpu = torch.device("cpu")
    assert not cell_recipe(build_config("smoke", parse("--compile")), cpu, 1).matmul_1x1
    with pytest.raises(ValueError, match="matmul_1x1 and compile do not go together"):
        check_device(dataclasses.replace(RestoreConfig(), matmul_1x1=True, compile=True), cpu)
