"""The network's input z: its shape and how it is drawn. Torch-free, so that a method (bench.methods)
can say what it feeds its network without importing PyTorch.

The paper's z is (1, 32, H, W) ~ 0.1 * U[0, 1), at the image's size (:meth:`NetInput.paper`). A
decoder-only prior starts from a small code instead, e.g. (1, 64, 4, 4) ~ N(0, 1), and upsamples it.
Either way the loop then perturbs z with the recipe's input noise at every step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dip.recipe import RestoreConfig

# "uniform": scale * U[0, 1) (the paper's); "normal": scale * N(0, 1) (deepinv's DeepImagePrior).
DISTRIBUTIONS = ("uniform", "normal")


@dataclass(frozen=True)
class NetInput:
    """z of shape (1, channels, height, width), drawn from ``distribution`` times ``scale``."""

    channels: int
    height: int
    width: int
    distribution: str = "uniform"
    scale: float = 0.1

    def __post_init__(self) -> None:
        if min(self.channels, self.height, self.width) < 1:
            raise ValueError(f"the network input needs a positive shape, got {self.shape}")
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(f"unknown input distribution {self.distribution!r}; "
                             f"choose from {', '.join(DISTRIBUTIONS)}")
        if not self.scale >= 0:
            raise ValueError(f"the input scale must be >= 0, got {self.scale}")

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (1, self.channels, self.height, self.width)

    @classmethod
    def paper(cls, config: RestoreConfig, height: int, width: int) -> NetInput:
        """The paper's z: net.in_channels channels at the image's size, input_scale * U[0, 1)."""
        return cls(config.net.in_channels, height, width, "uniform", config.input_scale)
