"""Seeding that covers Python, NumPy and torch, and per-(seed, name) sub-seeds."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch


def derived_seed(seed: int, name: str) -> int:
    """A 63-bit seed from (seed, name), stable across processes, machines and library versions.

    Lets each (image, seed) cell draw the same network weights and input whatever order cells run in.
    """
    digest = hashlib.sha256(f"{seed}:{name}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds the CPU generator and every CUDA device's
