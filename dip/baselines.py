"""Classical inpainting baselines: interpolate the missing pixels from the known ones.

The floor any learned or untrained prior must beat. Interpolation runs on the (row, column) grid
of known pixels with SciPy's ``griddata``; linear interpolation is undefined outside the convex hull
of the known pixels (a few border pixels), where the nearest known pixel is used.
"""

from __future__ import annotations

import numpy as np
from scipy.interpolate import griddata

METHODS = ("nearest", "linear", "cubic")


def interpolate_missing(observed: np.ndarray, mask: np.ndarray, method: str = "linear") -> np.ndarray:
    """(H, W) or (H, W, C) image with the pixels where ``mask`` (H, W) is 0 filled by interpolation."""
    if method not in METHODS:
        raise ValueError(f"unknown interpolation {method!r}; choose from {', '.join(METHODS)}")
    observed = np.asarray(observed, dtype=np.float64)
    keep = np.asarray(mask) != 0
    if not keep.any():
        raise ValueError("mask keeps no pixel: nothing to interpolate from")
    if observed.ndim == 3:
        return np.stack([interpolate_missing(observed[..., c], mask, method) for c in range(observed.shape[2])], axis=2)
    known = np.argwhere(keep)  # (K, 2) row, column
    missing = np.argwhere(~keep)  # (M, 2)
    filled = observed.copy()
    if len(missing) == 0:
        return filled
    values = griddata(known, observed[keep], missing, method=method)
    outside = np.isnan(values)
    if outside.any():
        values[outside] = griddata(known, observed[keep], missing[outside], method="nearest")
    filled[~keep] = np.clip(values, 0.0, 1.0)
    return filled
