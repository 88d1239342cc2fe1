"""The networks the method fits: the paper's skip network and the seed reproduction's.

Layers, each importing only those before it: ``config`` (hyper-parameters, input sizes; torch-free)
<- ``blocks`` <- ``skipnet``, ``seednet`` <- this package's :func:`build_network`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dip.nets.config import SkipNetConfig, check_input_size, size_multiple

if TYPE_CHECKING:
    from torch import nn

__all__ = ["SkipNetConfig", "build_network", "check_input_size", "count_parameters", "size_multiple"]


def build_network(config: SkipNetConfig) -> nn.Module:
    """The network ``config.layout`` names: :class:`~dip.nets.skipnet.SkipNet` ("paper") or
    :class:`~dip.nets.seednet.SeedNet` ("seed"). Draws its initial weights from torch's global RNG."""
    # Imported here, not at the top: importing dip.nets.config runs this file first, and the
    # config (with the recipe built on it) must load without torch.
    if config.layout == "seed":
        from dip.nets.seednet import SeedNet

        return SeedNet(config)
    from dip.nets.skipnet import SkipNet

    return SkipNet(config)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
