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
issue. Each part is a function of :data:`PARTS` returning its JSON-ready result; the record is rewritten
as each part finishes (``"complete": false`` until the last), so a crash or a kill keeps the parts done,
and a part that fails is recorded with its error while the others still run. ``python -m bench
gpu-session`` (bench/gpu_session.py) runs the same parts, then the paper table. Every run trains into
an emptied directory: records of an earlier check with an equal configuration (which holds no commit)
would otherwise be reused, and a re-run after a fix would compare the old results.
"""

from __future__ import annotations

import math
import shutil
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.analysis.check import make_baseline
from bench.config import build_config
from bench.errors import BenchError, RunStopped
from bench.hardware import peak_tflops
from bench.paths import GOLDENS_DIR
from bench.provenance import device_name, provenance
from bench.records import Record, read_json, write_json_atomic
from bench.regression import PartResult, check_outcome
from bench.runner import run
from bench.speed import measure_batched, measure_ratio
from bench.train import gflop_per_iteration
from dip.graphs import WARMUP_STEPS
from dip.nets import SkipNetConfig

CHECK_RECORD = "gpu-check.json"  # the record's name in the work directory


def require_cuda(command: str = "gpu-check",
                 hint: str = "on a GPU machine, 'make setup' installs a CUDA build") -> torch.device:
    """The CUDA device, or a one-line error saying why there is none."""
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise BenchError(f"{command} needs a CUDA GPU, and torch {torch.__version__} ({build}) sees none; {hint}")
    return torch.device("cuda")


# Cells per batched model in the batched speed measurement
BATCHED_SPEED_CELLS = 4


@dataclass(frozen=True)
class CheckPlan:
    """What the parts run and on which device: :data:`GPU_PLAN`, or the rehearsal's tiny CPU stand-in
    (bench.gpu_session), which exercises every step but CUDA itself."""

    device: str = "cuda"
    smoke_overrides: tuple[tuple[str, object], ...] = ()  # (dest, value) on top of the smoke profile
    cuda_graphs: bool = True  # False off a GPU: the graph parts are skipped, the batched timing runs eager
    # True: the outcome part compares with a baseline made from its own eager run, for a configuration
    # that has no committed one (the rehearsal's); it then tests the comparison's code, not CUDA
    own_baseline: bool = False
    speed_size: int = 256
    speed_rounds: int = 5
    speed_steps: int = 5
    batched_speed_cells: int = BATCHED_SPEED_CELLS
    batched_speed_rounds: int = 3
    batched_speed_steps: int = 5


GPU_PLAN = CheckPlan()


@dataclass
class CheckState:
    """What the parts of one check share: the plan, the places, the committed smoke baseline (whose
    tolerance every comparison uses), and the eager run once the first part has trained it."""

    plan: CheckPlan
    device: torch.device
    data_dir: Path
    work_dir: Path
    golden: dict
    eager: list[dict] | None = None


def smoke_records(plan: CheckPlan, data_dir: Path, results_dir: Path, cuda_graphs: bool = False,
                  cells_per_gpu: int = 1) -> list[dict]:
    """The smoke profile on the plan's device (fast path), trained afresh into an emptied ``results_dir``:
    eager or with whole-step CUDA graphs, one cell or ``cells_per_gpu`` at a time."""
    # Emptied first: an earlier check's records of an equal configuration would be reused, not re-run.
    shutil.rmtree(results_dir, ignore_errors=True)
    overrides = {**dict(plan.smoke_overrides), "run.device": plan.device, "recipe.cuda_graphs": cuda_graphs,
                 "run.cells_per_gpu": cells_per_gpu}
    outcome = run(build_config("smoke", overrides), data_dir, results_dir, progress=False)
    if outcome.failures:
        raise BenchError(f"{len(outcome.failures)} smoke cell(s) failed to train on {plan.device}: "
                         + "; ".join(f"{r.image}: {r.reason}" for r in outcome.failures))
    return outcome.records


def against_cpu_baseline(records: list[Record], golden: dict) -> PartResult:
    """The outcome check with the baseline's device taken as the run's: CUDA is the one intended difference."""
    device = records[0].config.device
    return check_outcome(records, {**golden, "config": {**golden["config"], "device": device}})


def against_eager(eager: list[Record], other: list[Record], per_image_db: float) -> dict:
    """Per-image PSNR of another run of the same cells (graphed, batched) minus the eager run's; ok when
    each is within ``per_image_db``."""
    eager_psnr = {r.image: r.psnr for r in eager}
    deltas = {r.image: r.psnr - eager_psnr[r.image] for r in other}
    ok = set(deltas) == set(eager_psnr) and all(abs(d) <= per_image_db for d in deltas.values())
    return {"ok": ok, "delta_db": deltas, "tolerance_db": per_image_db}


def speed_at(size: int, device: torch.device, rounds: int = 5, steps: int = 5) -> dict:
    """ms/iter of both paths and the authors' code at size x size, GFLOP/s and the fraction of peak."""
    m = measure_ratio(size, rounds=rounds, steps=steps, device=str(device), authors=True)
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


def batched_speed_at(size: int, cells: int, device: torch.device, rounds: int = 3, steps: int = 5,
                     cuda_graphs: bool = True) -> dict:
    """Per cell-iteration: ``cells`` cells as one batched model against the same cells stepped alone."""
    warmup = WARMUP_STEPS + 2 if cuda_graphs else 2  # past the graphs' eager warm-up steps
    m = measure_batched(size, cells, rounds=rounds, steps=steps, warmup=warmup, device=str(device),
                        cuda_graphs=cuda_graphs)
    return {"size": size, "cells": cells, "cuda_graphs": cuda_graphs, "alone_ms_per_cell": m.alone_s * 1e3,
            "batched_ms_per_cell": m.batched_s * 1e3, "speed_up": m.ratio}


# --- the parts: each takes the check's state and returns its JSON-ready result --------------------

def skipped(reason: str) -> dict:
    """The result of a part that cannot run here (not a failure)."""
    return {"ok": None, "skipped": reason}


def eager_records(state: CheckState) -> list[dict]:
    if state.eager is None:
        raise BenchError("needs the eager run of the first part, which did not finish")
    return state.eager


def cuda_vs_cpu_part(state: CheckState) -> dict:
    """Train the eager run (the later parts compare with it) and compare it with the CPU baseline."""
    state.eager = smoke_records(state.plan, state.data_dir, state.work_dir / "eager")
    if state.plan.own_baseline:
        own = make_baseline(state.eager, tolerance=state.golden["tolerance"])
        return against_cpu_baseline(state.eager, own).to_dict() | {
            "baseline": "the eager run's own records (no committed baseline for this configuration)"}
    return against_cpu_baseline(state.eager, state.golden).to_dict()


def versus_eager_part(run_name: str, cuda_graphs: bool, batched: bool) -> Callable[[CheckState], dict]:
    """A part that trains the smoke cells another way (graphed, batched) into ``work_dir/run_name`` and
    compares each image with the eager run."""
    def part(state: CheckState) -> dict:
        if cuda_graphs and not state.plan.cuda_graphs:
            return skipped("CUDA graphs need a CUDA device")
        eager = eager_records(state)
        other = smoke_records(state.plan, state.data_dir, state.work_dir / run_name, cuda_graphs=cuda_graphs,
                              cells_per_gpu=len(eager) if batched else 1)
        return against_eager(eager, other, state.golden["tolerance"]["per_image_db"])
    return part


def speed_part(state: CheckState) -> dict:
    plan = state.plan
    return speed_at(plan.speed_size, state.device, rounds=plan.speed_rounds, steps=plan.speed_steps)


def batched_speed_part(state: CheckState) -> dict:
    plan = state.plan
    return batched_speed_at(plan.speed_size, plan.batched_speed_cells, state.device, rounds=plan.batched_speed_rounds,
                            steps=plan.batched_speed_steps, cuda_graphs=plan.cuda_graphs)


# --- each part's summary line -------------------------------------------------------------------

def _verdict_line(title: str, result: dict) -> str:
    return f"{'OK' if result['ok'] else 'FAIL'} {title}: {result['lines'][-1]}"


def _largest_delta_line(title: str, result: dict) -> str:
    largest = max((abs(d) for d in result["delta_db"].values()), default=math.nan)
    verdict = "OK" if result["ok"] else "FAIL"
    return f"{verdict} {title}: largest |Δ| {largest:.2f} dB (tolerance ±{result['tolerance_db']:.2f})"


def _speed_line(title: str, speed: dict) -> str:
    peak = speed["fraction_of_peak"]
    return (f"{title} {speed['size']}x{speed['size']}: fast {speed['fast_ms']:.1f} ms/iter "
            f"({speed['fast_precision']}), {speed['fast_tflops']:.1f} TFLOP/s"
            + ("" if peak is None else f", {100 * peak:.1f}% of the card's peak")
            + f"; {speed['fast_vs_authors']:.2f}x the authors' code, "
            f"{speed['fast_vs_reference']:.2f}x the reference path")


def _batched_speed_line(title: str, batched: dict) -> str:
    graphs = " (CUDA graphs)" if batched.get("cuda_graphs", True) else " (eager)"
    return (f"batched {batched['cells']} cells at {batched['size']}x{batched['size']}{graphs}: "
            f"{batched['batched_ms_per_cell']:.1f} ms per cell-iteration, alone {batched['alone_ms_per_cell']:.1f}: "
            f"{batched['speed_up']:.2f}x")


@dataclass(frozen=True)
class Part:
    key: str  # its key in gpu-check.json
    title: str  # its name in the printed lines
    run: Callable[[CheckState], dict]
    line: Callable[[str, dict], str]  # its summary line, from (title, result)


PARTS: tuple[Part, ...] = (
    Part("cuda_vs_cpu", "CUDA vs CPU baseline", cuda_vs_cpu_part, _verdict_line),
    Part("graphs_vs_eager", "CUDA graphs vs eager", versus_eager_part("graphs", True, False), _largest_delta_line),
    Part("batched_vs_single", "batched cells vs single cells", versus_eager_part("batched", False, True),
         _largest_delta_line),
    Part("batched_graphs_vs_single", "batched cells as CUDA graphs vs single cells",
         versus_eager_part("batched-graphs", True, True), _largest_delta_line),
    Part("speed", "speed", speed_part, _speed_line),
    Part("batched_speed", "batched speed", batched_speed_part, _batched_speed_line),
)


def run_part(part: Part, state: CheckState) -> dict:
    """The part's result; a part that raises is a failed result with its error, so the others still run.
    A stop signal is not a failure: it propagates."""
    try:
        return part.run(state)
    except RunStopped:
        raise
    except BenchError as exc:
        return {"ok": False, "error": str(exc)}
    except Exception as exc:  # a crash on the device (a CUDA error, a failed capture): its traceback goes to the log
        traceback.print_exc()
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}".splitlines()[0]}


def part_line(part: Part, result: dict) -> str:
    """The line printed for one part's result: FAIL with its error, SKIP with why, or its summary."""
    if "error" in result:
        return f"FAIL {part.title}: {result['error']}"
    if "skipped" in result:
        return f"SKIP {part.title}: {result['skipped']}"
    return part.line(part.title, result)


def summary_lines(record: dict) -> list[str]:
    """What the command prints: one line per part in the record."""
    return [part_line(part, record[part.key]) for part in PARTS if part.key in record]


def check_record(results: dict[str, dict], device: torch.device) -> dict:
    """gpu-check.json from the parts' results so far: ``ok`` when none of them failed, ``complete`` once
    every part has its result."""
    return {"ok": all(r.get("ok") is not False for r in results.values()),
            "complete": all(part.key in results for part in PARTS), **results, "provenance": provenance(device)}


def new_state(plan: CheckPlan, device: torch.device, data_dir: Path, work_dir: Path,
              goldens_dir: Path = GOLDENS_DIR) -> CheckState:
    return CheckState(plan, device, data_dir, work_dir, read_json(goldens_dir / "smoke.json", "outcome baseline"))


def gpu_check(data_dir: Path, work_dir: Path, goldens_dir: Path = GOLDENS_DIR,
              on_part: Callable[[Part, dict], None] | None = None) -> dict:
    """Run every part, rewriting the record after each (``on_part`` is told each result as it comes);
    return the record (``ok``: every part that can fail passed)."""
    device = require_cuda()
    state = new_state(GPU_PLAN, device, data_dir, work_dir, goldens_dir)
    results: dict[str, dict] = {}
    record: dict = {}
    for part in PARTS:
        results[part.key] = run_part(part, state)
        # the record returned is the one last written: rebuilding it would take a new provenance timestamp
        record = check_record(results, device)
        write_json_atomic(work_dir / CHECK_RECORD, record)
        if on_part is not None:
            on_part(part, results[part.key])
    return record
