"""The encoder-decoder with skip connections used for Table 1 of Deep Image Prior.

Structure of one scale i, applied to x_i of shape (1, d_i, R, R) (docs/protocol.md, "The network"):

    skip    = LReLU(BN(conv1x1(x_i)))                                   (1, 4,   R,   R)
    deeper  = LReLU(BN(conv3x3(LReLU(BN(conv3x3_stride2(x_i))))))       (1, 128, R/2, R/2)
    deeper  = upsample2x(block_{i+1}(deeper))  or upsample2x(deeper)    (1, 128, R,   R)
    block_i = LReLU(BN(conv1x1(LReLU(BN(conv3x3(BN(cat(skip, deeper))))))))   (1, 128, R, R)

and the network is sigmoid(conv1x1(block_0(z))). Every conv has a bias, 3x3 convs reflect-pad by
one pixel, BatchNorm keeps PyTorch defaults.
"""

from __future__ import annotations

import torch
from torch import nn

from dip.nets.blocks import Conv2d, conv_bn_act, down_block, merge_block, upsample
from dip.nets.config import SkipNetConfig


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
        self.head = Conv2d(cfg.channels_up, cfg.out_channels, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.head(self.body(z)))

