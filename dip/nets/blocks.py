"""The building blocks both networks are wired from: padded convolutions, conv-BN-LReLU, the down
and merge blocks, and upsampling. Every conv has a bias, 3x3 convs reflect-pad by one pixel,
BatchNorm keeps PyTorch defaults."""

from __future__ import annotations

import torch
from torch import nn

from dip.nets.config import SkipNetConfig
from dip.conv import Conv2d


class ReflectionPad(nn.ReflectionPad2d):
    """``nn.ReflectionPad2d`` that pads in its input's dtype, also under autocast.

    CPU autocast lists reflection_pad2d among the fp32 ops: a bf16 activation would be cast to
    fp32, padded, and cast back to bf16 by the next convolution, two copies of the largest tensors
    per 3x3 conv, among the largest costs of a bf16 step on a CPU. Padding only copies values, so
    this is exact.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type not in ("cpu", "cuda"):  # e.g. the meta device used to count FLOPs
            return super().forward(x)
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x)


def conv(config: SkipNetConfig, c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Module:
    """Convolution with bias and 'same' padding (reflection by default) applied explicitly. The conv is
    ``nn.Conv2d`` unless a faster algorithm is switched on (``dip.conv.switch_convolutions``)."""
    pad = (kernel - 1) // 2
    if pad == 0:
        return Conv2d(c_in, c_out, kernel, stride=stride)
    if config.padding == "reflection":
        return nn.Sequential(ReflectionPad(pad), Conv2d(c_in, c_out, kernel, stride=stride))
    return Conv2d(c_in, c_out, kernel, stride=stride, padding=pad)


def conv_bn_act(config: SkipNetConfig, c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        conv(config, c_in, c_out, kernel, stride),
        nn.BatchNorm2d(c_out),
        # In place, as in the authors' code: BatchNorm's backward needs its input, not its output.
        nn.LeakyReLU(config.negative_slope, inplace=True),
    )


def down_block(config: SkipNetConfig, c_in: int) -> nn.Sequential:
    """Strided k x k conv (halves H and W), then a k x k conv: (N, c_in, H, W) -> (N, c_down, H/2, W/2)."""
    return nn.Sequential(
        conv_bn_act(config, c_in, config.channels_down, config.kernel_down, stride=2),
        conv_bn_act(config, config.channels_down, config.channels_down, config.kernel_down),
    )


def merge_block(config: SkipNetConfig, c_in: int) -> nn.Sequential:
    """BN on the concatenated features, k x k conv, 1x1 conv: (N, c_in, H, W) -> (N, c_up, H, W)."""
    return nn.Sequential(
        nn.BatchNorm2d(c_in),
        conv_bn_act(config, c_in, config.channels_up, config.kernel_up),
        conv_bn_act(config, config.channels_up, config.channels_up, 1),
    )


def upsample(config: SkipNetConfig) -> nn.Upsample:
    """2x upsampling in ``config.upsample_mode``: (N, C, H, W) -> (N, C, 2H, 2W)."""
    align = None if config.upsample_mode == "nearest" else False
    return nn.Upsample(scale_factor=2, mode=config.upsample_mode, align_corners=align)
