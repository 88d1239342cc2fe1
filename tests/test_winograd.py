"""Winograd F(4x4, 3x3) (dip.winograd): the transforms' algebra exactly, forward and backward against
F.conv2d within a stated bound, the fallbacks to direct convolution, and the switch on the paths."""

import copy
import dataclasses
import random
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F

from bench.config import PROFILES, build_config
from bench.execution import cell_recipe
from dip.batched import check_batchable
from dip.nets import SkipNetConfig
from dip.nets.skipnet import SkipNet
from dip.recipe import RestoreConfig
from dip.conv import Conv2d, switch_convolutions
from dip.winograd import MIN_SIDE, WinogradConv3x3, bands, toom_cook
from tests.test_config import parse

# fp32 rounding of F(4x4, 3x3), relative to the largest output (or gradient) entry, as measured against
# float64 direct convolution on the paper network's shapes: up to 9e-6 (direct fp32: 2.5e-7). The bound
# leaves 3x room; bf16 autocast, which the fast path runs elsewhere, rounds at 4e-3.
FP32_BOUND = 3e-5


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return ((value.double() - reference).abs().max() / reference.abs().max()).item()


def correlate_1d(d: list[Fraction], g: list[Fraction]) -> list[Fraction]:
    return [sum(d[i + k] * g[k] for k in range(len(g))) for i in range(len(d) - len(g) + 1)]


def test_the_transforms_compute_the_correlation_exactly():
    """A^T [(G g) (.) (B^T d)] is the 1-D correlation of d (6) with g (3), in exact rationals."""
    a_t, g_m, b_t = toom_cook()
    assert (len(a_t), len(a_t[0]), len(g_m), len(g_m[0]), len(b_t)) == (4, 6, 6, 3, 6)
    rng = random.Random(0)
    for _ in range(20):
        d = [Fraction(rng.randint(-9, 9)) for _ in range(6)]
        g = [Fraction(rng.randint(-9, 9), rng.randint(1, 5)) for _ in range(3)]
        gg = [sum(row[k] * g[k] for k in range(3)) for row in g_m]
        bd = [sum(row[j] * d[j] for j in range(6)) for row in b_t]
        y = [sum(row[j] * gg[j] * bd[j] for j in range(6)) for row in a_t]
        assert y == correlate_1d(d, g)


def test_the_input_transform_is_integral_and_the_usual_one():
    a_t, g_m, b_t = toom_cook()
    assert all(v.denominator == 1 for row in b_t for v in row)
    assert [int(v) for v in b_t[0]] == [4, 0, -5, 0, 1, 0]  # Lavin & Gray's first row of B^T
    assert [int(v) for v in a_t[3]] == [0, 1, -1, 8, -8, 1]
    assert g_m[0] == [Fraction(1, 4), 0, 0]
    # and F(2, 3) from three points: 4 inputs, 2 outputs
    a_t2, _, b_t2 = toom_cook((0, 1, -1))
    assert (len(a_t2), len(b_t2)) == (2, 4)


def conv_case(channels: int, out_channels: int, height: int, width: int, dtype=torch.float32, seed: int = 0):
    torch.manual_seed(seed)
    x = torch.randn(1, channels, height + 2, width + 2, dtype=dtype)
    w = torch.randn(out_channels, channels, 3, 3, dtype=dtype) / (3 * channels ** 0.5)
    b = torch.randn(out_channels, dtype=dtype)
    grad = torch.randn(1, out_channels, height, width, dtype=dtype)
    return x, w, b, grad


def grads(fn, x, w, b, grad):
    x, w, b = (t.detach().clone().requires_grad_() for t in (x, w, b))
    y = fn(x, w, b)
    y.backward(grad)
    return y.detach(), x.grad, w.grad, b.grad


@pytest.mark.parametrize("shape", [(5, 7, 8, 12), (132, 128, 32, 32), (128, 128, 64, 64), (16, 8, 44, 20)])
def test_forward_and_backward_match_conv2d_in_fp32(shape):
    """Output, input, weight and bias gradients within FP32_BOUND of float64 direct convolution. The
    shapes include the paper network's (a merge and a down block) and bands of tile rows (the last
    case's 44 rows are split in several bands)."""
    x, w, b, grad = conv_case(*shape)
    ours = grads(WinogradConv3x3.apply, x, w, b, grad)
    reference = grads(F.conv2d, x.double(), w.double(), b.double(), grad.double())
    for name, value, expected in zip(("output", "input grad", "weight grad", "bias grad"), ours, reference):
        assert value.dtype == torch.float32 and value.shape == expected.shape
        assert relative_error(value, expected) < FP32_BOUND, name


def test_bands_split_the_tile_rows(monkeypatch):
    import dip.winograd as winograd

    monkeypatch.setattr(winograd, "BAND_BYTES", 36 * 16 * 5 * 4 * 3)  # three tile rows of 5 tiles, 16 channels
    assert bands(11, 5, 16) == [(0, 3), (3, 6), (6, 9), (9, 11)]
    assert bands(2, 5, 16) == [(0, 2)]
    assert bands(4, 500, 16) == [(0, 1), (1, 2), (2, 3), (3, 4)]  # at least one row per band
    # many bands compute what one band does (the bands partition the tiles; matmuls of other shapes and
    # the weight gradient's sum over bands round differently)
    x, w, b, grad = conv_case(16, 8, 44, 20)
    many = grads(WinogradConv3x3.apply, x, w, b, grad)
    monkeypatch.setattr(winograd, "BAND_BYTES", 1 << 30)
    one = grads(WinogradConv3x3.apply, x, w, b, grad)
    for value, expected in zip(many, one):
        assert relative_error(value, expected.double()) < 1e-5


def test_the_algebra_is_exact_up_to_float64_rounding():
    x, w, b, grad = conv_case(6, 5, 12, 8, dtype=torch.float64)
    ours = grads(WinogradConv3x3.apply, x, w, b, grad)
    for value, expected in zip(ours, grads(F.conv2d, x, w, b, grad)):
        assert relative_error(value, expected) < 1e-13


def test_gradcheck():
    x, w, b, _ = conv_case(3, 2, 4, 8, dtype=torch.float64)
    assert torch.autograd.gradcheck(WinogradConv3x3.apply, (x.requires_grad_(), w.requires_grad_(), b.requires_grad_()))


def test_two_forwards_before_one_backward_keep_their_own_inputs():
    """The band loops reuse scratch buffers between calls; what backward needs is each call's own."""
    x1, w, b, grad = conv_case(8, 8, 32, 32, seed=1)
    x2 = torch.randn_like(x1)
    w_ = w.clone().requires_grad_()
    (WinogradConv3x3.apply(x1, w_, b) * grad).sum().add((WinogradConv3x3.apply(x2, w_, b) * grad).sum()).backward()
    expected = w.double().requires_grad_()
    (F.conv2d(x1.double(), expected) * grad).sum().add((F.conv2d(x2.double(), expected) * grad).sum()).backward()
    assert relative_error(w_.grad, expected.grad) < FP32_BOUND


def module(padding: int = 0, stride: int = 1, kernel: int = 3, channels: int = 8) -> Conv2d:
    torch.manual_seed(0)
    return Conv2d(channels, 8, kernel, stride=stride, padding=padding)


def test_the_module_is_nn_conv2d_until_switched_on():
    conv = module()
    plain = torch.nn.Conv2d(8, 8, 3)
    plain.load_state_dict(conv.state_dict())
    x = torch.randn(1, 8, MIN_SIDE + 2, MIN_SIDE + 2)
    assert torch.equal(conv(x), plain(x))  # off: exactly nn.Conv2d
    assert conv.state_dict().keys() == plain.state_dict().keys()
    conv.winograd = True
    assert not torch.equal(conv(x), plain(x))  # on: other rounding ...
    assert relative_error(conv(x), F.conv2d(x.double(), conv.weight.double(), conv.bias.double())) < FP32_BOUND


@pytest.mark.parametrize("case", ["small", "stride 2", "1x1", "batch 2", "not a multiple of 4", "bf16 autocast", "fp64"])
def test_cases_winograd_does_not_take_run_direct(case):
    conv = module(stride=2 if case == "stride 2" else 1, kernel=1 if case == "1x1" else 3)
    side = {"small": MIN_SIDE - 4, "not a multiple of 4": MIN_SIDE + 2}.get(case, MIN_SIDE)
    x = torch.randn(2 if case == "batch 2" else 1, 8, side + 2, side + 2)
    if case == "fp64":
        conv, x = conv.double(), x.double()
    expected = F.conv2d(x, conv.weight, conv.bias, conv.stride)
    conv.winograd = True
    with torch.autocast("cpu", torch.bfloat16, enabled=case == "bf16 autocast"):
        out = conv(x)
        if case == "bf16 autocast":
            expected = F.conv2d(x, conv.weight, conv.bias)
    assert torch.equal(out, expected)


def test_zero_padding_is_applied_before_the_transform():
    conv = module(padding=1)
    conv.winograd = True
    x = torch.randn(1, 8, MIN_SIDE, MIN_SIDE + 8)
    expected = F.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=1)
    assert relative_error(conv(x), expected) < FP32_BOUND


def test_the_paper_network_with_winograd_is_as_accurate_as_with_direct_convolutions():
    """SkipNet at 64x64 (its first merge conv, 64x64 outputs, switches; the smaller ones stay direct),
    against the same network in float64. The gradients of a deep BatchNorm network round far above one
    layer's bound (measured: 6.6e-3 of the largest entry on an AVX-512 CPU, 1.8e-2 under an AVX2 cap, with
    direct convolutions and with Winograd alike): Winograd must not add to that."""
    torch.manual_seed(0)
    net = SkipNet(SkipNetConfig())
    z = torch.rand(1, 32, 64, 64) * 0.1

    def outputs_and_grads(model: torch.nn.Module, z: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        out = model(z)
        out.sum().backward()
        # the convolutions' weights (a conv bias before BatchNorm has a zero gradient up to rounding)
        return out.detach(), [p.grad.clone() for p in model.parameters() if p.dim() == 4]

    exact = outputs_and_grads(copy.deepcopy(net).double(), z.double())
    direct = outputs_and_grads(net, z)
    assert switch_convolutions(net, winograd=True, matmul_1x1=False) == 26  # every conv; only those that fit take Winograd
    winograd = outputs_and_grads(net, z)

    def worst(case: tuple) -> tuple[float, float]:
        return (relative_error(case[0], exact[0]),
                max(relative_error(g, e) for g, e in zip(case[1], exact[1])))

    (out_direct, grad_direct), (out_winograd, grad_winograd) = worst(direct), worst(winograd)
    assert out_winograd < max(2 * out_direct, FP32_BOUND)
    assert grad_winograd < 1.5 * grad_direct


@pytest.mark.parametrize("fast_bf16, avx2, expected", [(False, True, True), (False, False, False), (True, True, False)])
def test_the_fast_path_uses_winograd_where_a_cpu_runs_fp32_with_avx2(monkeypatch, fast_bf16, avx2, expected):
    import bench.execution

    monkeypatch.setattr(bench.execution, "cpu_has_fast_bf16", lambda: fast_bf16)
    monkeypatch.setattr(bench.execution, "cpu_convolutions_run_avx2", lambda: avx2)
    assert cell_recipe(PROFILES["smoke"], torch.device("cpu"), 1).winograd == expected


def test_an_isa_cap_below_avx512_counts_as_avx2(monkeypatch):
    from bench.execution import cpu_convolutions_run_avx2

    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert cpu_convolutions_run_avx2()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE")
    assert cpu_convolutions_run_avx2() == (not torch.cpu._is_avx512_supported())


def test_explicit_winograd_flags_override_the_paths_choice():
    cpu = torch.device("cpu")
    assert not cell_recipe(build_config("smoke", parse("--path", "reference")), cpu, 1).winograd
    assert not cell_recipe(build_config("smoke", parse("--cells-per-gpu", "2")), cpu, 1).winograd
    assert cell_recipe(build_config("smoke", parse("--path", "reference", "--winograd")), cpu, 1).winograd
    assert not cell_recipe(build_config("smoke", parse("--no-winograd")), cpu, 1).winograd


def test_batched_cells_refuse_winograd():
    with pytest.raises(ValueError, match="winograd"):
        check_batchable(dataclasses.replace(RestoreConfig(), winograd=True))
