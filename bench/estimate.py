"""Measuring what a profile would cost here: a few real iterations at each image size, scaled up."""

from __future__ import annotations

import dataclasses
from functools import partial

import numpy as np

from bench.config import RunConfig
from bench.data import ImageInfo, resolve_image
from bench.execution import cell_recipe, resolve_device
from bench.plan import cell_network
from dip.restore import restore


def measure_ms_per_iter(config: RunConfig, timed_iterations: int = 2) -> dict[tuple[int, int], float]:
    """Median ms per iteration of ``config``'s recipe on this machine, per distinct (height, width).

    A few real iterations of the profile's own recipe and method (after one warm-up) on a random image of
    each size the run will train at.
    """
    device = resolve_device(config.device)
    recipe = cell_recipe(config, device, out_channels=1)
    probe = dataclasses.replace(recipe, iterations=timed_iterations + 1, timer_warmup=1)
    method = config.loaded_method().method
    rng = np.random.default_rng(0)
    measured = {}
    for shape in sorted({train_shape(config, resolve_image(name)) for name in config.images}):
        image = rng.random(shape, dtype=np.float32)
        result = restore(image, np.ones(shape, np.float32), probe, partial(cell_network, method, probe, shape), seed=0,
                         device=device, net_input=method.net_input(probe, *shape))
        measured[shape] = result.timing.median_ms_per_iter
    return measured


def train_shape(config: RunConfig, info: ImageInfo) -> tuple[int, int]:
    return (info.height, info.width) if config.crop == 0 else (config.crop, config.crop)


def estimate_seconds(config: RunConfig, ms_per_iter: dict[tuple[int, int], float]) -> float:
    """Run time of ``config`` from measured per-iteration times: images x seeds x iterations."""
    per_seed_ms = sum(ms_per_iter[train_shape(config, resolve_image(n))] for n in config.images)
    return per_seed_ms * config.recipe.iterations * len(config.seeds) / 1e3
