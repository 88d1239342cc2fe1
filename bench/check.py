"""Regression check: a run's per-image PSNR against a committed baseline, within a tolerance in dB."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.errors import BenchError
from bench.records import read_json
from bench.report import config_diff, shared_config


def per_image_psnr(records: list[dict]) -> dict[str, float]:
    """Mean PSNR over seeds, per image."""
    images = dict.fromkeys(r["image"] for r in records)
    return {key: float(np.mean([r["psnr"] for r in records if r["image"] == key])) for key in images}


def make_baseline(records: list[dict]) -> dict:
    """A baseline: the shared configuration, per-image mean PSNR, and where it was measured."""
    prov = records[0]["provenance"]
    return {
        "config": shared_config(records),
        "seeds": sorted({r["seed"] for r in records}),
        "psnr": per_image_psnr(records),
        "provenance": {k: prov[k] for k in ("commit", "dirty", "timestamp", "torch", "device_name", "cpu_capability")},
    }


def load_baseline(path: Path) -> dict:
    baseline = read_json(path, "baseline")
    if not {"config", "psnr"} <= baseline.keys():
        raise BenchError(f"baseline {path} lacks 'config' and 'psnr'; write one with 'python -m bench baseline'")
    return baseline


def compare(records: list[dict], baseline: dict, tolerance_db: float) -> list[str]:
    """One line per problem: a configuration mismatch, a missing image, or a PSNR outside tolerance."""
    if tolerance_db < 0:
        raise BenchError(f"tolerance must be >= 0 dB, got {tolerance_db}")
    config = shared_config(records)
    if config != baseline["config"]:
        differing = config_diff(baseline["config"], config)
        return [f"configuration differs from the baseline's in: {', '.join(differing)}"]
    ours = per_image_psnr(records)
    failures = []
    for image, expected in baseline["psnr"].items():
        if image not in ours:
            failures.append(f"{image}: no record in this run (baseline {expected:.2f} dB)")
        elif abs(ours[image] - expected) > tolerance_db:
            failures.append(
                f"{image}: {ours[image]:.2f} dB vs baseline {expected:.2f} dB "
                f"(Δ {ours[image] - expected:+.2f}, tolerance ±{tolerance_db:g})"
            )
    return failures
