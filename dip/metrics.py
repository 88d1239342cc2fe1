"""PSNR with the convention of Table 1: full image, raw network output, floats in [0, 1], data range 1."""

from __future__ import annotations

import math

import numpy as np
from skimage.metrics import peak_signal_noise_ratio


def psnr(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB, data range 1.

    >>> round(psnr(np.zeros((4, 4)), np.full((4, 4), 0.1)), 6)
    20.0
    """
    reference = np.asarray(reference, dtype=np.float64)
    estimate = np.asarray(estimate, dtype=np.float64)
    if reference.shape != estimate.shape:
        raise ValueError(f"shape mismatch: reference {reference.shape} vs estimate {estimate.shape}")
    if np.array_equal(reference, estimate):
        return math.inf  # skimage would divide by zero (and warn) to get the same answer
    return float(peak_signal_noise_ratio(reference, estimate, data_range=1.0))


def paste_back(estimate: np.ndarray, observed: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Replace the estimate by the observation where the pixel was kept (mask broadcast over channels)."""
    mask = np.asarray(mask, dtype=np.float64)
    if mask.ndim == 2 and np.ndim(estimate) == 3:
        mask = mask[..., None]
    return mask * observed + (1.0 - mask) * estimate


def psnr_pasted(reference: np.ndarray, estimate: np.ndarray, mask: np.ndarray) -> float:
    """PSNR after pasting the known pixels of ``reference`` back into ``estimate``.

    Only the dropped pixels contribute error; later DIP papers report this next to the raw PSNR.
    """
    return psnr(reference, paste_back(estimate, reference, mask))


def psnr_pasted_from_loss(psnr_raw: float, masked_mse: float) -> float:
    """Paste-back PSNR of an output from its raw PSNR and its training loss, with no image at hand.

    The loss is mean((m * (out - x))**2) over all N pixels: the kept pixels' share of the raw MSE,
    mean((out - x)**2). Pasting the kept pixels back leaves only the dropped pixels' share, so
    MSE_pasted = MSE_raw - loss. This gives a paste-back curve from the (raw PSNR, loss) pairs that
    every curve point already stores. NaN if rounding makes the difference non-positive.
    """
    mse_pasted = 10.0 ** (-psnr_raw / 10.0) - masked_mse
    return -10.0 * math.log10(mse_pasted) if mse_pasted > 0 else math.nan
