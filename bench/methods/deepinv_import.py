"""Importing deepinv, the optional extra behind the methods it provides (``pip install -e ".[methods]"``).

One workaround lives here. PyPI's torchvision wheels are built against CUDA torch: next to a CPU build
of torch (what ``make setup`` installs without a GPU) their compiled operators do not load, and
torchvision 0.28 then fails at import, registering a fake kernel for ``torchvision::nms`` (and
``qnms``), whose schema only that compiled library defines. deepinv imports torchvision first thing,
though its ConvDecoder uses none of it. Defining those two schemas (schemas only, no kernels) lets
the import through; torchvision's detection operators stay unavailable, as they already were. With a
torchvision whose operators load, the first import succeeds and nothing is defined.
"""

from __future__ import annotations

import sys
import types

INSTALL = 'make methods (pip install -e ".[methods]" with the installed torch pinned)'
_UNGUARDED_OPS = ("nms", "qnms")  # the operators torchvision registers fakes for without checking they exist
_schemas = None  # the torch.library.Library holding them, kept alive for the process


def import_deepinv() -> types.ModuleType:
    """The deepinv package; ValueError, one line naming the install command, where it is not installed."""
    try:
        return _import_with_workaround()
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] in ("deepinv", "torchvision"):
            raise ValueError(f"this method needs deepinv, an optional extra: {INSTALL}") from None
        raise


def _import_with_workaround() -> types.ModuleType:
    try:
        import deepinv
    except RuntimeError as exc:
        if "torchvision::nms" not in str(exc):
            raise
        _forget("torchvision", "deepinv")  # the half-imported packages, so that the retry starts clean
        _define_unguarded_schemas()
        import deepinv
    return deepinv


def _forget(*packages: str) -> None:
    for name in [m for m in sys.modules if m.split(".")[0] in packages]:
        del sys.modules[name]


def _define_unguarded_schemas() -> None:
    global _schemas
    import torch

    _schemas = torch.library.Library("torchvision", "DEF")
    for op in _UNGUARDED_OPS:
        _schemas.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
