"""The networks' hyper-parameters and the input sizes they take. Torch-free: a recipe (and a stored
record's configuration) can be built and checked without PyTorch."""

from __future__ import annotations

from dataclasses import dataclass

# The values of SkipNetConfig's string fields (the command line offers exactly these).
UPSAMPLE_MODES = ("bilinear", "bicubic", "nearest")
PADDINGS = ("reflection", "zeros")
LAYOUTS = ("paper", "seed")


@dataclass(frozen=True)
class SkipNetConfig:
    """Hyper-parameters of the skip network; the defaults are the paper's inpainting network."""

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
    # "paper": the authors' skip network (dip.nets.skipnet). "seed": the seed reproduction's network
    # (dip.nets.seednet): skips taken after each downsampling block, each up block convolves and then
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
        if self.upsample_mode not in UPSAMPLE_MODES:
            raise ValueError(f"unknown upsample_mode {self.upsample_mode!r}")
        if self.padding not in PADDINGS:
            raise ValueError(f"unknown padding {self.padding!r}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown layout {self.layout!r}; choose from {', '.join(LAYOUTS)}")
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
