"""A panel PNG per (image, seed) cell: ground truth | masked input | restored | absolute error.

Panels show the test images, which the project downloads and does not redistribute: they are
written into the (git-ignored) results directory only. PIL only: the harness writes one after every
cell, so it should not pay for matplotlib's import.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from bench.records import write_bytes_atomic
from dip.masks import apply_mask

PANEL_GAP = 4  # white pixels between tiles
PANEL_LABEL_HEIGHT = 14  # a strip above the tiles with their names
ERROR_GAIN = 4  # |restored - truth| is shown x4 (clipped), so 0.25 and above is white


def panel(truth: np.ndarray, mask: np.ndarray, restored: np.ndarray) -> np.ndarray:
    """uint8 (14 + H, 4 W + 12[, 3]): ground truth | masked input | restored | absolute error x4."""
    tiles = [truth, apply_mask(truth, mask), restored, np.clip(ERROR_GAIN * np.abs(restored - truth), 0.0, 1.0)]
    height, width = truth.shape[:2]
    shape = (PANEL_LABEL_HEIGHT + height, 4 * width + 3 * PANEL_GAP) + truth.shape[2:]
    canvas = np.ones(shape, dtype=np.float64)
    for k, tile in enumerate(tiles):
        left = k * (width + PANEL_GAP)
        canvas[PANEL_LABEL_HEIGHT:, left : left + width] = tile
    return np.round(np.clip(canvas, 0.0, 1.0) * 255.0).astype(np.uint8)


def write_panel(path: Path, truth: np.ndarray, mask: np.ndarray, restored: np.ndarray) -> Path:
    """Write :func:`panel` as a PNG (atomically), with the tiles' names in its top strip."""
    image = Image.fromarray(panel(truth, mask, restored))
    draw = ImageDraw.Draw(image)
    width = truth.shape[1]
    labels = ("ground truth", "masked input", "restored", f"|error| x{ERROR_GAIN}")
    for k, label in enumerate(labels):
        draw.text((k * (width + PANEL_GAP) + 2, 1), label, fill=0 if image.mode == "L" else (0, 0, 0))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    write_bytes_atomic(path, buffer.getvalue())
    return path
