"""The seed reproduction's network (Peschl et al.; docs/protocol.md, "The seed reproduction's recipe"), adapted to grayscale.

Same blocks (:mod:`dip.nets.blocks`) as :mod:`dip.nets.skipnet`, wired differently. With d_i the
output of down block i (resolution R / 2**(i+1)) and s_i = skip_i(d_i):

    d_i  = LReLU(BN(conv3x3(LReLU(BN(conv3x3_stride2(d_{i-1}))))))      (1, 128, R/2**(i+1), ...)
    s_i  = LReLU(BN(conv1x1(d_i)))                                       (1, 4,   R/2**(i+1), ...)
    u_4  = up_4(s_4);  u_i = up_i(cat(u_{i+1}, s_i))                     (1, 128, R/2**i, ...)
    up_i = upsample2x(LReLU(BN(conv1x1(LReLU(BN(conv3x3(BN(.))))))))

and the output is sigmoid(conv1x1(u_0)). Against the paper's network: skips are taken after
downsampling rather than before, each up block convolves at the lower resolution and upsamples
last, and the deepest block's 128 channels reach the decoder only through its 4-channel skip.
Their code used ``nn.LeakyReLU()`` (slope 0.01) and bicubic upsampling; those are config fields
(the ``seed`` recipe in bench sets them), so this module can also be run with the paper's values.
"""

from __future__ import annotations

import torch
from torch import nn

from dip.nets.blocks import Conv2d, conv_bn_act, down_block, merge_block, upsample
from dip.nets.config import SkipNetConfig


class SeedNet(nn.Module):
    """(N, in_channels, H, W) -> (N, out_channels, H, W) in (0, 1), wired as the seed reproduction."""

    def __init__(self, config: SkipNetConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or SkipNetConfig(layout="seed")
        c_down, c_up, c_skip = cfg.channels_down, cfg.channels_up, cfg.channels_skip
        self.downs = nn.ModuleList(down_block(cfg, cfg.in_channels if i == 0 else c_down) for i in range(cfg.scales))
        self.skips = nn.ModuleList(conv_bn_act(cfg, c_down, c_skip, cfg.kernel_skip) for _ in range(cfg.scales))
        # Ordered deepest first, as the decoder runs: the deepest takes its skip alone. Each up block is
        # the paper network's merge block followed by the upsampling (the paper upsamples before it).
        self.ups = nn.ModuleList(
            nn.Sequential(merge_block(cfg, c_skip if i == 0 else c_up + c_skip), upsample(cfg)) for i in range(cfg.scales)
        )
        self.head = Conv2d(c_up, cfg.out_channels, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        skips = []
        x = z
        for down, skip in zip(self.downs, self.skips):
            x = down(x)  # (N, c_down, H / 2**(i+1), W / 2**(i+1))
            skips.append(skip(x))  # (N, c_skip, same)
        x = self.ups[0](skips[-1])
        for up, s in zip(self.ups[1:], reversed(skips[:-1])):
            x = up(torch.cat([x, s], dim=1))  # (N, c_up + c_skip, ...) -> (N, c_up, 2x the size)
        return torch.sigmoid(self.head(x))
