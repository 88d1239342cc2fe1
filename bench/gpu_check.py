"""``python -m bench gpu-check`` (``make gpu-check``): the first thing to run on a new GPU.

The CUDA path has never run on a GPU in this project's own testing (docs/speed.md, "The GPU path"),
so a user's first GPU run is its first test. This runs, in a few minutes:

1. **CUDA against the CPU**: the smoke profile (3 images, 64x64, 400 iterations) on CUDA, compared
   with the committed CPU baseline (reports/baselines/smoke.json) within its measured tolerance;
2. **CUDA graphs against eager**: the same cells with ``--cuda-graphs``, each image within that
   tolerance of the eager run;
3. **batched cells against single cells**: the same cells as one batched model (``--cells-per-gpu 3``),
   eager and replayed as CUDA graphs, each image within that tolerance of the eager run;
4. **speed**: one paper-network iteration at 256x256 on both paths and the authors' code, ms/iter,
   GFLOP/s and the fraction of the card's peak (bench/hardware.py); and 4 cells at 256x256 as one
   batched model against the same 4 stepped alone, per cell-iteration, both with CUDA graphs;

and writes every number with its provenance to ``<work-dir>/gpu-check.json``, a file to attach to an
issue.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from bench.config import build_config
from bench.errors import BenchError
from bench.hardware import peak_tflops
from bench.paths import GOLDENS_DIR
from bench.provenance import device_name, provenance
from bench.records import read_json, write_json_atomic
from bench.regression import PartResult, check_outcome
from bench.runner import run
from bench.speed import measure_batched, measure_ratio
from bench.train import gflop_per_iteration
from dip.graphs import WARMUP_STEPS
from dip.nets import SkipNetConfig


def require_cuda() -> torch.device:
    """The CUDA device, or a one-line error saying why there is none."""
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise BenchError(f"gpu-check needs a CUDA GPU, and torch {torch.__version__} ({build}) sees none; "
                         "on a GPU machine, 'make setup' installs a CUDA build")
    return torch.device("cuda")


# Cells per batched model in the batched speed measurement
BATCHED_SPEED_CELLS = 4


def smoke_records(data_dir: Path, results_dir: Path, cuda_graphs: bool = False, cells_per_gpu: int = 1) -> list[dict]:
    """The smoke profile on CUDA (fast path): eager or with whole-step CUDA graphs, one cell or
    ``cells_per_gpu`` at a time."""
    overrides = {"run.device": "cuda", "recipe.cuda_graphs": cuda_graphs, "run.cells_per_gpu": cells_per_gpu}
    outcome = run(build_config("smoke", overrides), data_dir, results_dir, progress=False)
    if outcome.failures:
        raise BenchError(f"gpu-check: {len(outcome.failures)} smoke cell(s) failed on CUDA: "
                         + "; ".join(f"{r['image']}: {r['reason']}" for r in outcome.failures))
    return outcome.records


def against_cpu_baseline(records: list[dict], golden: dict) -> PartResult:
    """The outcome check with the baseline's device taken as the run's: CUDA is the one intended difference."""
    device = records[0]["config"]["device"]
    return check_outcome(records, {**golden, "config": {**golden["config"], "device": device}})


def against_eager(eager: list[dict], other: list[dict], per_image_db: float) -> dict:
    """Per-image PSNR of another run of the same cells (graphed, batched) minus the eager run's; ok when
    each is within ``per_image_db``."""
    eager_psnr = {r["image"]: r["psnr"] for r in eager}
    deltas = {r["image"]: r["psnr"] - eager_psnr[r["image"]] for r in other}
    ok = set(deltas) == set(eager_psnr) and all(abs(d) <= per_image_db for d in deltas.values())
    return {"ok": ok, "delta_db": deltas, "tolerance_db": per_image_db}


def speed_at(size: int, device: torch.device) -> dict:
    """ms/iter of both paths and the authors' code at size x size, GFLOP/s and the fraction of peak."""
    m = measure_ratio(size, rounds=5, steps=5, device=str(device), authors=True)
    gflop = gflop_per_iteration(SkipNetConfig(), size, size)
    name = device_name(device)
    peak = peak_tflops(name, m.fast_precision, tf32=True)
    fast_tflops = gflop / m.fast_s / 1e3
    return {
        "size": size, "gflop_per_iter": gflop,
        "authors_ms": m.authors_s * 1e3, "reference_ms": m.reference_s * 1e3, "fast_ms": m.fast_s * 1e3,
        "fast_vs_authors": m.fast_vs_authors, "fast_vs_reference": m.ratio,
        "fast_precision": m.fast_precision, "fast_tflops": fast_tflops,
        "fraction_of_peak": None if peak is None else fast_tflops / peak,
    }


def batched_speed_at(size: int, cells: int, device: torch.device) -> dict:
    m = measure_batched(size, cells, rounds=3, steps=5, warmup=WARMUP_STEPS + 2, device=str(device), cuda_graphs=True)
    return {"size": size, "cells": cells, "alone_ms_per_cell": m.alone_s * 1e3,
            "batched_ms_per_cell": m.batched_s * 1e3, "speed_up": m.ratio}


def _largest_delta_line(name: str, part: dict) -> str:
    largest = max((abs(d) for d in part["delta_db"].values()), default=math.nan)
    verdict = "OK" if part["ok"] else "FAIL"
    return f"{verdict} {name}: largest |Δ| {largest:.2f} dB (tolerance ±{part['tolerance_db']:.2f})"


def summary_lines(record: dict) -> list[str]:
    """What the command prints: one line per part."""
    outcome, speed, batched = record["cuda_vs_cpu"], record["speed"], record["batched_speed"]
    peak = speed["fraction_of_peak"]
    return [
        f"{'OK' if outcome['ok'] else 'FAIL'} CUDA vs CPU baseline: {outcome['lines'][-1]}",
        _largest_delta_line("CUDA graphs vs eager", record["graphs_vs_eager"]),
        _largest_delta_line("batched cells vs single cells", record["batched_vs_single"]),
        _largest_delta_line("batched cells as CUDA graphs vs single cells", record["batched_graphs_vs_single"]),
        f"speed {speed['size']}x{speed['size']}: fast {speed['fast_ms']:.1f} ms/iter ({speed['fast_precision']}), "
        f"{speed['fast_tflops']:.1f} TFLOP/s" + ("" if peak is None else f", {100 * peak:.1f}% of the card's peak")
        + f"; {speed['fast_vs_authors']:.2f}x the authors' code, {speed['fast_vs_reference']:.2f}x the reference path",
        f"batched {batched['cells']} cells at {batched['size']}x{batched['size']} (CUDA graphs): "
        f"{batched['batched_ms_per_cell']:.1f} ms per cell-iteration, alone {batched['alone_ms_per_cell']:.1f}: "
        f"{batched['speed_up']:.2f}x",
    ]


def gpu_check(data_dir: Path, work_dir: Path, goldens_dir: Path = GOLDENS_DIR) -> dict:
    """Run every part; write and return the record (``ok``: every part that can fail passed)."""
    device = require_cuda()
    golden = read_json(goldens_dir / "smoke.json", "outcome baseline")
    eager = smoke_records(data_dir, work_dir / "eager")
    graphed = smoke_records(data_dir, work_dir / "graphs", cuda_graphs=True)
    batched = smoke_records(data_dir, work_dir / "batched", cells_per_gpu=len(eager))
    batched_graphed = smoke_records(data_dir, work_dir / "batched-graphs", cuda_graphs=True, cells_per_gpu=len(eager))
    outcome = against_cpu_baseline(eager, golden)
    tolerance = golden["tolerance"]["per_image_db"]
    parts = {"graphs_vs_eager": against_eager(eager, graphed, tolerance),
             "batched_vs_single": against_eager(eager, batched, tolerance),
             "batched_graphs_vs_single": against_eager(eager, batched_graphed, tolerance)}
    record = {
        "ok": outcome.ok and all(part["ok"] for part in parts.values()),
        "cuda_vs_cpu": outcome.to_dict(),
        **parts,
        "speed": speed_at(256, device),
        "batched_speed": batched_speed_at(256, BATCHED_SPEED_CELLS, device),
        "provenance": provenance(device),
    }
    write_json_atomic(work_dir / "gpu-check.json", record)
    return record
