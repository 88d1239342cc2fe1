"""The built-in method: the paper's skip network (dip.nets), as dip-bench has always trained it.

Its hyper-parameters are the network's fields (dip.nets.config.SkipNetConfig), which live in the
recipe (``recipe.net``, the ``net`` flags) where every record has always stored them; the method itself
has no fields of its own, and feeds the paper's input (``net_input`` None).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from bench.methods.base import Method
from dip.nets.config import check_input_size

if TYPE_CHECKING:
    from torch import nn

    from dip.recipe import RestoreConfig


@dataclass(frozen=True)
class DipBench(Method):
    name: ClassVar[str] = "dip-bench"

    def build(self, recipe: RestoreConfig, channels: int, height: int, width: int) -> nn.Module:
        from dip.nets import build_network

        return build_network(recipe.net)  # out_channels is the image's (bench.execution.cell_recipe)

    def check(self, recipe: RestoreConfig, height: int, width: int) -> None:
        check_input_size(height, width, recipe.net)
