"""What a method is: the network a DIP-style prior fits, and what it may change of the loop's inputs.

dip-bench's loop (dip.restore) is fixed: Table 1's masks, the recipe's optimiser, input noise and
backtracking, the budget and the PSNR. A method supplies the rest, behind one small interface:

- ``build``: the network (its output head included), called right after the cell is seeded, so its
  initial weights follow from the seed alone;
- ``net_input``: the shape and distribution of its input z (``None``: the paper's, 32 channels at the
  image's size, 0.1 * U[0, 1));
- ``check``: whether it can restore an image of this size, and ``require``: whether it can run on this
  machine at all (a missing package), both before any cell trains.

A method is a frozen dataclass whose fields, each with a default, are its hyper-parameters: each is a
flag of ``python -m bench run`` and is stored in every record (docs/methods.md). Torch-free: a
method's configuration is built and checked without PyTorch; ``build`` imports what it needs.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from torch import nn

    from dip.inputs import NetInput
    from dip.recipe import RestoreConfig

# The types a method's field may have: each one's values parse from a command line and store in JSON.
FIELD_TYPES = (int, float, str, bool, tuple[int, ...], tuple[str, ...])


@dataclass(frozen=True)
class Method:
    """Subclass as ``@dataclass(frozen=True)``, set ``name``, and implement :meth:`build`."""

    name: ClassVar[str] = ""
    field_help: ClassVar[dict[str, str]] = {}  # one line per field, for --help

    def build(self, recipe: RestoreConfig, channels: int, height: int, width: int) -> nn.Module:
        """The network: maps z (of :meth:`net_input`'s shape) to (1, channels, height, width)."""
        raise NotImplementedError(f"method {self.name!r} does not build a network")

    def net_input(self, recipe: RestoreConfig, height: int, width: int) -> NetInput | None:
        """z's shape and distribution; None: the paper's (dip.inputs.NetInput.paper)."""
        return None

    def check(self, recipe: RestoreConfig, height: int, width: int) -> None:
        """Raise ValueError, in one line, if this method cannot restore a height x width image."""

    def require(self) -> None:
        """Raise ValueError, in one line naming the install command, if a package the method needs is missing."""

    def field_values(self) -> dict[str, typing.Any]:
        """The hyper-parameters as a record stores them (JSON: tuples become lists)."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
                for f in dataclasses.fields(self)}


def check_method_class(method: Method, where: str) -> None:
    """Raise ValueError if ``method`` (loaded from ``where``) does not follow the interface."""
    if not isinstance(method, Method) or not dataclasses.is_dataclass(method):
        raise ValueError(f"{where} did not give a bench.methods.Method dataclass instance "
                         f"(got {type(method).__name__})")
    if not isinstance(method.name, str) or not method.name.strip():
        raise ValueError(f"{where}: the method has no name (set the class attribute name = '...')")
    hints = typing.get_type_hints(type(method))
    for f in dataclasses.fields(method):
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ValueError(f"{where}: field {f.name!r} of method {method.name!r} needs a default")
        if hints[f.name] not in FIELD_TYPES:
            raise ValueError(f"{where}: field {f.name!r} of method {method.name!r} is a {hints[f.name]}; a method's "
                             f"fields are int, float, str, bool or tuples of int or str")
