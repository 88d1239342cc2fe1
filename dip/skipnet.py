"""The encoder-decoder with skip connections used for Table 1 of Deep Image Prior.

Structure of one scale i, applied to x_i of shape (1, d_i, R, R) (see REFERENCE.md section 2):

    skip    = LReLU(BN(conv1x1(x_i)))                                   (1, 4,   R,   R)
    deeper  = LReLU(BN(conv3x3(LReLU(BN(conv3x3_stride2(x_i))))))       (1, 128, R/2, R/2)
    deeper  = upsample2x(block_{i+1}(deeper))  or upsample2x(deeper)    (1, 128, R,   R)
    block_i = LReLU(BN(conv1x1(LReLU(BN(conv3x3(BN(cat(skip, deeper))))))))   (1, 128, R, R)

and the network is sigmoid(conv1x1(block_0(z))). Every conv has a bias, 3x3 convs reflect-pad by
one pixel, BatchNorm keeps PyTorch defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class SkipNetConfig:
    """Hyper-parameters of :class:`SkipNet`; the defaults are the paper's inpainting network."""

    in_channels: int = 32
    out_channels: int = 1
    scales: int = 5
    channels_down: int = 128
    channels_up: int = 128
    channels_skip: int = 4
    kernel_down: int = 3
    kernel_up: int = 3
    kernel_skip: int = 1
    upsample_mode: str = "bilinear"  # "bilinear" | "bicubic" | "nearest"
    padding: str = "reflection"  # "reflection" | "zeros"
    negative_slope: float = 0.2
    # "paper": the authors' skip network (this module). "seed": the seed reproduction's network
    # (dip.seednet): skips taken after each downsampling block, each up block convolves and then
    # upsamples, and the deepest features reach the decoder only through their skip.
    layout: str = "paper"

    def __post_init__(self) -> None:
        if self.scales < 1:
            raise ValueError(f"scales must be >= 1, got {self.scales}")
        for name in ("in_channels", "out_channels", "channels_down", "channels_up"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.channels_skip < 0:
            raise ValueError(f"channels_skip must be >= 0, got {self.channels_skip}")
        if self.upsample_mode not in ("bilinear", "bicubic", "nearest"):
            raise ValueError(f"unknown upsample_mode {self.upsample_mode!r}")
        if self.padding not in ("reflection", "zeros"):
            raise ValueError(f"unknown padding {self.padding!r}")
        if self.layout not in ("paper", "seed"):
            raise ValueError(f"unknown layout {self.layout!r}; choose from paper, seed")
        if self.layout == "seed" and self.channels_skip < 1:
            raise ValueError("the seed layout needs channels_skip >= 1: its decoder starts from the deepest skip")


def size_multiple(config: SkipNetConfig) -> int:
    """Height and width must be multiples of this (each scale halves the resolution)."""
    return 2**config.scales


def check_input_size(height: int, width: int, config: SkipNetConfig) -> None:
    """Raise ValueError, naming the sizes that work, if the network cannot take (height, width).

    The deepest 3x3 convolution reflect-pads a map of size/2**scales pixels, which must be >= 2.
    """
    multiple = size_multiple(config)
    if height % multiple or width % multiple or min(height, width) < 2 * multiple:
        raise ValueError(
            f"image size {height}x{width} does not fit a {config.scales}-scale network: height and "
            f"width must be multiples of {multiple} and at least {2 * multiple} "
            f"(e.g. 256x256, 512x512); use --crop to take a centre crop"
        )


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
    """Convolution with bias and 'same' padding (reflection by default) applied explicitly."""
    pad = (kernel - 1) // 2
    if pad == 0:
        return nn.Conv2d(c_in, c_out, kernel, stride=stride)
    if config.padding == "reflection":
        return nn.Sequential(ReflectionPad(pad), nn.Conv2d(c_in, c_out, kernel, stride=stride))
    return nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=pad)


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


class Scale(nn.Module):
    """One scale of the U-Net-like hierarchy; holds the next (deeper) scale as ``inner``."""

    def __init__(self, config: SkipNetConfig, c_in: int, inner: nn.Module | None) -> None:
        super().__init__()
        c_skip, c_down, c_up = config.channels_skip, config.channels_down, config.channels_up
        self.skip = conv_bn_act(config, c_in, c_skip, config.kernel_skip) if c_skip > 0 else None
        self.down = down_block(config, c_in)
        self.inner = inner
        self.upsample = upsample(config)
        c_deeper = c_up if inner is not None else c_down
        self.merge = merge_block(config, c_skip + c_deeper)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        deeper = self.down(x)  # (N, c_down, H/2, W/2)
        if self.inner is not None:
            deeper = self.inner(deeper)  # (N, c_up, H/2, W/2)
        deeper = self.upsample(deeper)  # (N, c, H, W)
        if self.skip is not None:
            deeper = torch.cat([self.skip(x), deeper], dim=1)
        return self.merge(deeper)  # (N, c_up, H, W)


class SkipNet(nn.Module):
    """Deep Image Prior's "skip" network: (N, in_channels, H, W) -> (N, out_channels, H, W) in (0, 1)."""

    def __init__(self, config: SkipNetConfig | None = None) -> None:
        super().__init__()
        self.config = config or SkipNetConfig()
        cfg = self.config
        inner: Scale | None = None
        # Build from the deepest scale outwards: scale 0 reads the input, deeper ones read c_down.
        for i in reversed(range(cfg.scales)):
            c_in = cfg.in_channels if i == 0 else cfg.channels_down
            inner = Scale(cfg, c_in, inner)
        self.body = inner
        self.head = nn.Conv2d(cfg.channels_up, cfg.out_channels, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.head(self.body(z)))


def upsample(config: SkipNetConfig) -> nn.Upsample:
    align = None if config.upsample_mode == "nearest" else False
    return nn.Upsample(scale_factor=2, mode=config.upsample_mode, align_corners=align)


def build_network(config: SkipNetConfig) -> nn.Module:
    """The network ``config.layout`` names: :class:`SkipNet` or the seed reproduction's ``SeedNet``."""
    if config.layout == "seed":
        from dip.seednet import SeedNet  # seednet builds on this module's blocks

        return SeedNet(config)
    return SkipNet(config)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
