"""A decoder-only prior: deepinv's ConvDecoder (the Deep Decoder family of Heckel and Hand, in Darestani
and Heckel's convolutional form), trained by dip-bench's loop.

The network: a small code z of ``channels`` x ``in_size`` x ``in_size`` is upsampled (nearest) layer by
layer to the image's size, each layer a 3x3 convolution, ReLU and BatchNorm, then a 1x1 convolution to
the image's channels: no encoder, no skip connections. deepinv's generator module is used as it is;
its ``DeepImagePrior`` wrapper is not (it draws a fresh z on every call, has no per-step hook for the
curve or backtracking, and its ``re_init`` does not reset a ConvDecoder, whose only child is a
Sequential): the loop, the masks, the budget and the PSNR are dip-bench's, as for every method.

Depth: ``layers`` 0 (the default) picks ``log2(side / in_size) + 1`` layers for the image's shorter
side, rounded, so that each layer about doubles the resolution, as the Deep Decoder's do: from a 4x4
code, 5 layers at 64x64, 6 at 128x128, 7 at 256x256 (deepinv's default depth), 8 at 512x512.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from bench.methods.base import Method
from bench.methods.deepinv_import import import_deepinv
from dip.inputs import DISTRIBUTIONS, NetInput

if TYPE_CHECKING:
    from torch import nn

    from dip.recipe import RestoreConfig

HEADS = ("linear", "sigmoid")  # linear: deepinv's ConvDecoder as written (a 1x1 conv); sigmoid: DIP's head

# One line per field, shown by `python -m bench run --method convdecoder --help`.
HELP = {
    "channels": "channels of every layer of the ConvDecoder (deepinv's example: 64)",
    "in_size": "side of the code z the decoder starts from (in_size x in_size)",
    "layers": "ConvDecoder layers; 0: log2(side / in_size) + 1, each layer doubling the resolution",
    "head": "output head: linear (deepinv's ConvDecoder as written) or sigmoid (DIP's)",
    "z_distribution": "distribution of the code z: normal (deepinv's DeepImagePrior) or uniform",
    "z_scale": "scale of the code z: z ~ z_scale * N(0, 1) (or * U[0, 1))",
}


@dataclass(frozen=True)
class ConvDecoderMethod(Method):
    name: ClassVar[str] = "convdecoder"
    field_help: ClassVar[dict[str, str]] = HELP

    channels: int = 64
    in_size: int = 4
    layers: int = 0
    head: str = "linear"
    z_distribution: str = "normal"
    z_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.channels < 1 or self.in_size < 1 or self.layers < 0:
            raise ValueError("channels and in_size must be >= 1, and layers >= 0 (0: chosen for the image size)")
        if self.layers == 1:
            raise ValueError("a ConvDecoder needs at least 2 layers (or 0: chosen for the image size)")
        if self.head not in HEADS:
            raise ValueError(f"unknown head {self.head!r}; choose from {', '.join(HEADS)}")
        if self.z_distribution not in DISTRIBUTIONS:
            raise ValueError(f"unknown z_distribution {self.z_distribution!r}; choose from {', '.join(DISTRIBUTIONS)}")
        if not math.isfinite(self.z_scale) or self.z_scale <= 0:
            raise ValueError(f"z_scale must be positive and finite, got {self.z_scale}")

    def depth(self, height: int, width: int) -> int:
        """The number of layers for a height x width image: ``layers``, or by the doubling rule."""
        if self.layers:
            return self.layers
        return max(2, round(math.log2(min(height, width) / self.in_size)) + 1)

    def check(self, recipe: RestoreConfig, height: int, width: int) -> None:
        if min(height, width) < 2 * self.in_size:
            raise ValueError(f"a {width}x{height} image is too small for a {self.in_size}x{self.in_size} code to "
                             f"upsample from (at least {2 * self.in_size} px a side); lower --in-size")

    def require(self) -> None:
        import_deepinv()

    def net_input(self, recipe: RestoreConfig, height: int, width: int) -> NetInput:
        return NetInput(self.channels, self.in_size, self.in_size, self.z_distribution, self.z_scale)

    def build(self, recipe: RestoreConfig, channels: int, height: int, width: int) -> nn.Module:
        from torch import nn

        decoder = import_deepinv().models.ConvDecoder(
            img_size=(channels, height, width), in_size=(self.in_size, self.in_size),
            layers=self.depth(height, width), channels=self.channels,
        )
        return nn.Sequential(decoder, nn.Sigmoid()) if self.head == "sigmoid" else decoder
