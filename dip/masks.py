"""Masks of kept pixels (1 = observed, 0 = dropped) for inpainting, as float32 arrays of shape (H, W)."""

from __future__ import annotations

import hashlib

import numpy as np

from dip.seeding import derived_seed


def mask_rng(seed: int, name: str) -> np.random.Generator:
    """A NumPy generator seeded from (seed, name).

    The name goes through sha256 rather than ``hash()`` (salted per process), and NumPy's
    ``Generator`` stream is stable across versions and machines, so a (seed, image) pair gives the
    same mask everywhere, independently of torch and of the order in which images are run.
    """
    return np.random.default_rng(derived_seed(seed, f"mask/{name}"))


def bernoulli_mask(shape: tuple[int, int], keep: float = 0.5, *, seed: int, name: str) -> np.ndarray:
    """Keep each pixel independently with probability ``keep`` (one channel, as in the paper)."""
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep-probability must be in (0, 1], got {keep}")
    return (mask_rng(seed, name).random(shape) < keep).astype(np.float32)


def paper_mask(masked: np.ndarray) -> np.ndarray:
    """The paper's own mask, read off its published masked input: m = (masked != 0).

    Ambiguous only where the ground truth itself is 0 (under 1% of the pixels of three images).
    """
    if masked.ndim == 3:  # (H, W, C): a pixel is kept if any channel is non-zero
        masked = masked.max(axis=2)
    return (masked != 0).astype(np.float32)


def mask_digest(mask: np.ndarray) -> str:
    """sha256 of the mask's bits, recorded with every result so masks can be compared across runs."""
    packed = np.packbits(np.asarray(mask, dtype=bool), axis=None)
    return hashlib.sha256(packed.tobytes() + repr(mask.shape).encode()).hexdigest()


def apply_mask(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The observation: ``image`` (H, W[, C]) with the dropped pixels zeroed; ``mask`` (H, W) is shared by channels."""
    return image * (mask[..., None] if image.ndim == 3 else mask)
