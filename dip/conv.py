"""The networks' convolution: ``nn.Conv2d``, or per call a faster algorithm for the same math where the
trainer switches one on (execution switches; :func:`switch_convolutions`):

- ``winograd``: 3x3 stride-1 convolutions with large outputs by Winograd F(4x4, 3x3) (dip.winograd);
- ``matmul_1x1``: 1x1 stride-1 convolutions as one matrix product, W (K, C) @ x (C, H W). In plain
  (NCHW) layout with batch 1 that is exactly the convolution's sum in another order; oneDNN's fp32
  1x1 kernels in that layout measured up to 2x slower forward and backward on an AVX2 CPU, the 128 -> 1
  head most of all (docs/speed.md, "1x1 convolutions").

Both take fp32 outside autocast, batch 1, and leave every other call to ``nn.Conv2d``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dip.winograd import WinogradConv3x3, winograd_fits


def matmul_fits(x: torch.Tensor, conv: nn.Conv2d) -> bool:
    """Whether ``conv`` on ``x`` is a 1x1 stride-1 ungrouped unpadded convolution of one contiguous fp32
    image outside autocast (the case :func:`conv1x1_matmul` computes)."""
    if conv.kernel_size != (1, 1) or conv.stride != (1, 1) or conv.groups != 1 or conv.padding not in ((0, 0), "valid"):
        return False
    return (x.dim() == 4 and x.shape[0] == 1 and x.dtype == torch.float32 and x.is_contiguous()
            and not torch.is_autocast_enabled(x.device.type))


def conv1x1_matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.conv2d(x, weight, bias)`` for a 1x1 kernel: (K, C) @ (C, H W) (+ bias), viewed as (1, K, H, W).
    Autograd's backward is two more products: dW = dY X^T, dX = W^T dY."""
    channels_out, channels_in = weight.shape[:2]
    height, width = x.shape[2:]
    pixels = x.view(channels_in, height * width)
    w = weight.view(channels_out, channels_in)
    y = torch.mm(w, pixels) if bias is None else torch.addmm(bias.view(channels_out, 1), w, pixels)
    return y.view(1, channels_out, height, width)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` that computes its eligible calls by Winograd F(4x4, 3x3) when ``winograd`` is set
    (see :func:`dip.winograd.winograd_fits`) and its 1x1 ones as a matmul when ``matmul_1x1`` is
    (:func:`matmul_fits`); otherwise, and by default, exactly ``nn.Conv2d``. The parameters, their
    initialisation and the state dict are ``nn.Conv2d``'s."""

    winograd: bool = False
    matmul_1x1: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.matmul_1x1 and matmul_fits(x, self):
            return conv1x1_matmul(x, self.weight, self.bias)
        if not (self.winograd and winograd_fits(x, self)):
            return super().forward(x)
        pad_h, pad_w = self.padding
        if pad_h or pad_w:
            x = F.pad(x, (pad_w, pad_w, pad_h, pad_h))
        return WinogradConv3x3.apply(x, self.weight, self.bias)


def switch_convolutions(network: nn.Module, *, winograd: bool, matmul_1x1: bool) -> int:
    """Set both switches in every :class:`Conv2d` of ``network``; returns how many there are."""
    convs = [module for module in network.modules() if isinstance(module, Conv2d)]
    for conv in convs:
        conv.winograd, conv.matmul_1x1 = winograd, matmul_1x1
    return len(convs)
