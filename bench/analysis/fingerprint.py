"""The recipe fingerprint: a short training trajectory, compared point by point with a stored golden.

The ``fingerprint`` profile (bench.config) trains each smoke image for 24 iterations at lr 1e-6 on the
reference path and keeps a curve point at every iteration. Its records reduce to a few series per
image, all in dB so that one unit serves every tolerance:

- ``loss``: -10 log10(masked MSE) at each iteration (the training loss, as backtracking sees it);
- ``psnr`` / ``psnr_ema``: PSNR of the raw output and of its moving average at each iteration;
- ``final``: PSNR, paste-back PSNR and EMA PSNR of the finished cell (the record's own numbers);
- ``static``: PSNR of the masked input and of nearest and linear interpolation (data, mask and PSNR
  code with no training in between);

plus the mask's sha256, compared exactly. Any change to the math of the step (data, mask, network,
input, loss, optimiser, output, metric) moves some point of some series; the tolerances are measured
across CPU instruction sets and thread counts (bench.spread), so rounding alone does not.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from bench.record import Record

CURVE_SERIES = ("loss", "psnr", "psnr_ema")
FINAL_KEYS = ("psnr", "psnr_pasted", "psnr_ema")
STATIC_KEYS = ("psnr_masked_input", "interp_nearest", "interp_linear")
SERIES = CURVE_SERIES + ("final", "static")


def image_fingerprint(record: Record) -> dict:
    """{"mask_sha256": str, series: [dB, ...]} of one complete record."""
    curve = record.curve
    if [p.iteration for p in curve] != list(range(len(curve))):
        raise ValueError(f"{record.image}: a fingerprint needs a curve point at every iteration (eval_every 1)")
    return {
        "mask_sha256": record.mask_sha256,
        "loss": [-10.0 * math.log10(p.loss) for p in curve],
        "psnr": [p.psnr for p in curve],
        "psnr_ema": [p.psnr_ema for p in curve],
        "final": [getattr(record, key) for key in FINAL_KEYS],
        "static": [record.psnr_masked_input] + [getattr(record.reference_psnr, key) for key in STATIC_KEYS[1:]],
    }


def fingerprint(records: list[Record]) -> dict[str, dict]:
    """{image: image_fingerprint} of a run's records (one seed per image)."""
    return {r.image: image_fingerprint(r) for r in records}


def deviations(a: dict[str, dict], b: dict[str, dict]) -> dict[str, list[float]]:
    """Per series and point, the largest |a - b| in dB over the images both hold."""
    images = sorted(a.keys() & b.keys())
    return {name: [max(abs(a[i][name][k] - b[i][name][k]) for i in images) for k in range(len(a[images[0]][name]))]
            for name in SERIES}


def tolerances(measured: list[dict[str, list[float]]], safety: float, floor: float) -> dict[str, list[float]]:
    """The tolerance of every point: ``safety`` x the largest deviation measured there (or before it, for
    curve series) across CPU variants, and at least ``floor`` dB."""
    tol = {}
    for name in SERIES:
        worst = [max(m[name][k] for m in measured) for k in range(len(measured[0][name]))]
        if name in CURVE_SERIES:  # rounding differences only grow along a trajectory: at least the predecessors'
            worst = list(itertools.accumulate(worst, max))
        tol[name] = [max(floor, safety * w) for w in worst]
    return tol


@dataclass(frozen=True)
class Point:
    """One compared point: this run's value, the golden's, and the tolerance."""

    image: str
    series: str
    index: int  # the iteration, for curve series; the position in FINAL_KEYS or STATIC_KEYS otherwise
    value: float
    expected: float
    tolerance: float

    @property
    def ratio(self) -> float:
        """|Δ| in units of the tolerance (> 1: outside; infinite for a value that is not finite)."""
        delta = abs(self.value - self.expected)
        return delta / self.tolerance if math.isfinite(delta) else math.inf

    def point(self) -> str:
        if self.series in CURVE_SERIES:
            return f"{self.series} at iteration {self.index}"
        return f"{self.series} {(FINAL_KEYS if self.series == 'final' else STATIC_KEYS)[self.index]}"

    def describe(self) -> str:
        return (f"{self.image}: {self.point()} {self.value:.6f} dB vs golden {self.expected:.6f} "
                f"(Δ {self.value - self.expected:+.2e}, tolerance ±{self.tolerance:.1e}, {self.ratio:.3g}x)")


def compare_fingerprints(ours: dict[str, dict], golden: dict[str, dict], tol: dict[str, list[float]]) -> tuple[list[str], list[Point]]:
    """(structural problems: a missing image, another mask, another length; every point compared)."""
    problems, points = [], []
    for image, expected in golden.items():
        if image not in ours:
            problems.append(f"{image}: no record in this run")
            continue
        mine = ours[image]
        if mine["mask_sha256"] != expected["mask_sha256"]:
            problems.append(f"{image}: the mask differs from the golden's (sha256 {mine['mask_sha256'][:12]} vs "
                            f"{expected['mask_sha256'][:12]})")
        for name in SERIES:
            if len(mine[name]) != len(expected[name]):
                problems.append(f"{image}: {name} has {len(mine[name])} points, the golden {len(expected[name])}")
                continue
            points += [Point(image, name, k, value, want, tol[name][k])
                       for k, (value, want) in enumerate(zip(mine[name], expected[name]))]
    return problems, points
