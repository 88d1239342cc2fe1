"""The outcome check: a run's per-image PSNR (and its mean over images) against a committed baseline.

After the smoke budget (400 iterations) training is chaotic: a different CPU kernel or thread count
moves each image's PSNR by about as much as a different seed does. The tolerances are therefore set
from the measured spread over seeds and CPU variants (bench.spread) and stored in the baseline file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.analysis.summary import config_diff, shared_config
from bench.errors import BenchError
from bench.record import Record, RecordConfig
from bench.records import read_json
from dip.execution import EXECUTION_FIELDS

# The execution fields (dip.execution) say how a recipe is executed, not what it computes: they may differ
# from the baseline's (a machine whose fast path runs fp32, say) and are reported, not failed; the
# tolerances were measured across them.


def cpu_kind_label(amx: bool, avx512_bf16: bool, capability: str) -> str:
    """The CPU kind that decides bf16 speed and rounding: 'AMX', 'AVX-512 BF16, no AMX' or e.g. 'AVX2, no fast bf16'."""
    if amx:
        return "AMX"
    if avx512_bf16:
        return "AVX-512 BF16, no AMX"
    return f"{capability}, no fast bf16"


def per_image_psnr(records: list[Record]) -> dict[str, float]:
    """Mean PSNR over seeds, per image."""
    images = dict.fromkeys(r.image for r in records)
    return {key: float(np.mean([r.psnr for r in records if r.image == key])) for key in images}


# What a baseline, golden or spread measurement keeps of its records' provenance: code, software, CPU kind.
PROVENANCE_KEYS = ("commit", "dirty", "timestamp", "torch", "device_name", "cpu_model", "cpu_capability", "cpu_amx",
                   "cpu_avx512_bf16", "isa_caps", "torch_threads")


def provenance_summary(records: list[Record]) -> dict:
    """The first record's provenance, reduced to :data:`PROVENANCE_KEYS`."""
    prov = records[0].provenance
    return {k: getattr(prov, k) for k in PROVENANCE_KEYS}


def make_baseline(records: list[Record], tolerance: dict | None = None) -> dict:
    """A baseline: the shared configuration (its JSON form), per-image mean PSNR, where it was measured, and
    (when given) its tolerances {"per_image_db", "mean_db", "basis"}."""
    baseline = {
        "config": shared_config(records).to_dict(),
        "seeds": sorted({r.seed for r in records}),
        "psnr": per_image_psnr(records),
        "provenance": provenance_summary(records),
    }
    if tolerance is not None:
        baseline["tolerance"] = tolerance
    return baseline


def load_baseline(path: Path) -> dict:
    baseline = read_json(path, "baseline")
    if not {"config", "psnr"} <= baseline.keys():
        raise BenchError(f"baseline {path} lacks 'config' and 'psnr'; re-record it with 'python -m bench check --record'")
    return baseline


def baseline_config(baseline: dict) -> RecordConfig:
    """A baseline's or golden's stored configuration, read as a record's is (older forms migrated)."""
    return RecordConfig.from_dict(baseline["config"], schema=baseline.get("schema", 1))


def without_execution(config: RecordConfig) -> dict:
    """The JSON form of ``config`` without the execution fields."""
    as_dict = config.to_dict()
    recipe = {k: v for k, v in as_dict["recipe"].items() if k not in EXECUTION_FIELDS}
    return {**as_dict, "recipe": recipe}


def execution_note(records: list[Record], baseline: dict) -> str | None:
    """A line naming the execution fields that differ from the baseline's, if any."""
    ours, theirs = shared_config(records).recipe, baseline_config(baseline).recipe
    differing = [f"{k} {getattr(ours, k)} (baseline {getattr(theirs, k)})" for k in EXECUTION_FIELDS
                 if getattr(ours, k) != getattr(theirs, k)]
    return f"executed differently from the baseline: {', '.join(differing)}" if differing else None


def compare(records: list[Record], baseline: dict, tolerance_db: float, mean_tolerance_db: float | None = None) -> list[str]:
    """One line per problem: a configuration mismatch, a missing image, an image outside ``tolerance_db``,
    or the mean over the images outside ``mean_tolerance_db``."""
    if tolerance_db < 0 or (mean_tolerance_db is not None and mean_tolerance_db < 0):
        raise BenchError(f"tolerance must be >= 0 dB, got {tolerance_db}")
    config = without_execution(shared_config(records))
    expected_config = without_execution(baseline_config(baseline))
    if config != expected_config:
        return [f"configuration differs from the baseline's in: {', '.join(config_diff(expected_config, config))}"]
    ours = per_image_psnr(records)
    failures = []
    for image, expected in baseline["psnr"].items():
        if image not in ours:
            failures.append(f"{image}: no record in this run (baseline {expected:.2f} dB)")
        elif not abs(ours[image] - expected) <= tolerance_db:  # `not <=`: a NaN fails too
            failures.append(
                f"{image}: {ours[image]:.2f} dB vs baseline {expected:.2f} dB "
                f"(Δ {ours[image] - expected:+.2f}, tolerance ±{tolerance_db:g})"
            )
    if mean_tolerance_db is not None and not failures:
        delta = mean_delta(ours, baseline)
        if not abs(delta) <= mean_tolerance_db:
            failures.append(f"mean over {len(baseline['psnr'])} images: Δ {delta:+.2f} dB vs baseline "
                            f"(tolerance ±{mean_tolerance_db:g})")
    return failures


def mean_delta(ours: dict[str, float], baseline: dict) -> float:
    """Mean over the baseline's images of (this run - baseline), in dB."""
    return float(np.mean([ours[image] - expected for image, expected in baseline["psnr"].items()]))
