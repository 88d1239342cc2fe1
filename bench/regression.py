"""The regression check (``python -m bench check``, ``make check``): fingerprint, then outcome.

1. **Recipe fingerprint** (bench.fingerprint): the ``fingerprint`` profile, fp32, 24 iterations at a
   learning rate small enough that the trajectory is not chaotic; every point of every series within a
   tolerance measured across CPU variants. Sees any change to the math, however small its effect.
2. **Outcome** (bench.check): the ``smoke`` profile (400 iterations, the default path); per-image and
   mean PSNR within tolerances derived from the spread measured over seeds and CPU variants. Sees what
   only shows after many steps, at the price of a tolerance of the order of a seed's spread. Then
   **parity**: House trained on the reference path too, and the fast path's House within House's own
   measured effect (``bench.spread.parity_tolerance_db``), far tighter than the per-image tolerance,
   which the noisiest image sets.

Both run on the CPU (also on a GPU machine) into fresh directories, and compare with the goldens in
``reports/baselines/``. ``record`` writes new goldens, taking the tolerances from the spread
measurement ``reports/regression-spread.json`` (``make spread``).
"""

from __future__ import annotations

import contextlib
import math
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from bench.analysis import check, fingerprint
from bench.analysis.summary import config_diff, shared_config
from bench.config import CHECK_PARTS as PARTS
from bench.config import build_config
from bench.errors import BenchError
from bench.record import Record
from bench.paths import GOLDENS_DIR, SPREAD_PATH
from bench.records import read_json, write_json_atomic
from bench.runner import run
from bench.spread import parity_tolerance_db
from dip.execution import REFERENCE_EXECUTION


@dataclass
class PartResult:
    part: str
    ok: bool
    lines: list[str]  # what to print: failures first, then a summary
    margin: float  # largest |Δ| / tolerance over everything compared (> 1: outside)
    worst: str  # the point (or image) that came closest to, or went furthest past, its tolerance
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready: an infinite margin (nothing comparable: configuration or mask differ) becomes None."""
        return {**asdict(self), "margin": self.margin if math.isfinite(self.margin) else None}


def golden_path(part: str, goldens_dir: Path = GOLDENS_DIR) -> Path:
    return goldens_dir / f"{PARTS[part]}.json"


class CellsFailed(BenchError):
    """A cell of the check's own run diverged: the recipe regressed, so the part fails (exit 1)."""


def fresh_run(part: str, data_dir: Path, work_dir: Path, images: tuple[str, ...] = (), path: str | None = None) -> list[dict]:
    """Train ``part``'s profile (only ``images`` of it, if given; on ``path`` if given, else the profile's) on
    the CPU into an emptied ``work_dir/<profile>[-<path>]``; its complete records."""
    profile = PARTS[part]
    results = work_dir / (profile if path is None else f"{profile}-{path}")
    shutil.rmtree(results, ignore_errors=True)  # stale records of another configuration must not be compared
    overrides = {"run.device": "cpu", **({"run.images": images} if images else {}), **({"run.path": path} if path else {})}
    outcome = run(build_config(profile, overrides), data_dir, results, progress=False)
    if outcome.failures:
        reasons = "; ".join(f"{r.image}: {r.reason}" for r in outcome.failures)
        raise CellsFailed(f"{profile}: {len(outcome.failures)} cell(s) failed to train ({reasons})")
    return outcome.records


# ---------------------------------------------------------------------------------------------------
# Fingerprint


def check_fingerprint(records: list[Record], golden: dict) -> PartResult:
    config, expected = shared_config(records), check.baseline_config(golden)
    if config != expected:
        line = f"configuration differs from the golden's in: {', '.join(config_diff(expected.to_dict(), config.to_dict()))}"
        return PartResult("fingerprint", False, [line], float("inf"), line)
    problems, points = fingerprint.compare_fingerprints(fingerprint.fingerprint(records), golden["fingerprint"],
                                                        golden["tolerance"])
    misses = sorted((p for p in points if p.ratio > 1.0), key=lambda p: -p.ratio)
    lines = problems + [m.describe() for m in misses[:10]]
    if len(misses) > 10:
        lines.append(f"... and {len(misses) - 10} more points outside their tolerance")
    closest = max(points, key=lambda p: p.ratio)
    margin = math.inf if problems else closest.ratio
    n_images = len(golden["fingerprint"])
    summary = (f"fingerprint: {len(points)} points of {n_images} image{'s' if n_images != 1 else ''}, {len(misses)} outside "
               f"tolerance; largest |Δ| = {margin:.3g}x its tolerance")
    return PartResult("fingerprint", not problems and not misses, lines + [summary], margin,
                      problems[0] if problems else closest.describe())


def record_fingerprint(records: list[Record], spread: dict) -> dict:
    return {
        "config": shared_config(records).to_dict(),
        "fingerprint": fingerprint.fingerprint(records),
        "tolerance": spread["tolerance"]["fingerprint"],
        "tolerance_basis": spread["tolerance"]["fingerprint_basis"],
        "provenance": check.provenance_summary(records),
    }


# ---------------------------------------------------------------------------------------------------
# Outcome


def check_outcome(records: list[Record], golden: dict) -> PartResult:
    tol = golden.get("tolerance")
    if tol is None:
        raise BenchError("the outcome baseline has no measured tolerance; re-record it with 'python -m bench check --record'")
    failures = check.compare(records, golden, tol["per_image_db"], tol["mean_db"])
    notes = [n for n in [check.execution_note(records, golden)] if n]
    if failures and failures[0].startswith("configuration differs"):
        return PartResult("outcome", False, failures, float("inf"), failures[0], notes)
    ours = check.per_image_psnr(records)
    if not golden["psnr"].keys() <= ours.keys():
        return PartResult("outcome", False, failures, math.inf, failures[0], notes)
    deltas = {image: ours[image] - want for image, want in golden["psnr"].items()}
    mean = check.mean_delta(ours, golden)
    image = max(deltas, key=lambda i: abs(deltas[i]))
    image_ratio, mean_ratio = abs(deltas[image]) / tol["per_image_db"], abs(mean) / tol["mean_db"]
    worst = f"mean Δ {mean:+.2f} dB" if mean_ratio >= image_ratio else f"{image}: Δ {deltas[image]:+.2f} dB"
    summary = (f"outcome: {len(ours)} images after {records[0].config.recipe.iterations} iterations; "
               f"mean Δ {mean:+.2f} dB (tolerance ±{tol['mean_db']:.2f}), largest image |Δ| {abs(deltas[image]):.2f} dB "
               f"({image}; tolerance ±{tol['per_image_db']:.2f})")
    margin = max(image_ratio, mean_ratio)
    return PartResult("outcome", not failures, failures + [summary], margin if math.isfinite(margin) else math.inf, worst, notes)


# The image the outcome part also trains on the reference path: the least noisy of the three (its seed std
# 0.19 dB, reports/regression-spread.md), so the parity tolerance is the tightest.
PARITY_IMAGE = "house"


def add_parity(result: PartResult, fast: list[Record], reference: list[Record], tolerance_db: float) -> PartResult:
    """The outcome part with its parity comparison: PARITY_IMAGE's PSNR on the fast path against the reference
    path's, both trained afresh, within ``tolerance_db``. A miss is a FAIL line and fails the part."""
    ours, theirs = check.per_image_psnr(fast)[PARITY_IMAGE], check.per_image_psnr(reference)[PARITY_IMAGE]
    delta = ours - theirs
    ratio = abs(delta) / tolerance_db
    line = (f"parity: {PARITY_IMAGE} fast path {ours:.2f} dB, reference path {theirs:.2f} dB: Δ {delta:+.2f} dB "
            f"(tolerance ±{tolerance_db:.2f}, {PARITY_IMAGE}'s own effect)")
    failures, summary = result.lines[:-1], result.lines[-1]
    ok = ratio <= 1.0
    worst = line if ratio > result.margin else result.worst
    return PartResult(result.part, result.ok and ok, failures + ([] if ok else [line]) + [f"{summary}; {line}"],
                      max(result.margin, ratio), worst, result.notes)


def record_outcome(records: list[Record], spread: dict) -> dict:
    return check.make_baseline(records, tolerance=spread["tolerance"]["outcome"])


CHECKS = {"fingerprint": check_fingerprint, "outcome": check_outcome}
RECORDERS = {"fingerprint": record_fingerprint, "outcome": record_outcome}


def run_check(part: str, data_dir: Path, work_dir: Path, goldens_dir: Path = GOLDENS_DIR,
              images: tuple[str, ...] = (), spread_path: Path = SPREAD_PATH) -> PartResult:
    """Train ``part`` afresh and compare it with its golden. ``images`` (fingerprint only) checks a
    subset of the golden's images: cheaper, for the mutation tests, which run the check 15 times."""
    golden = read_json(golden_path(part, goldens_dir), f"{part} golden")
    if images:
        if part != "fingerprint":
            raise BenchError("--images applies to the fingerprint part only (the outcome's mean is over all its images)")
        unknown = [name for name in images if name not in golden["fingerprint"]]
        if unknown:
            raise BenchError(f"the fingerprint golden has no image {unknown[0]!r}; it has {', '.join(golden['fingerprint'])}")
        golden = {**golden, "fingerprint": {name: golden["fingerprint"][name] for name in images}}
    threads = golden.get("provenance", {}).get("torch_threads")
    parity_db = parity_tolerance_db(read_json(spread_path, "spread measurement"), PARITY_IMAGE) if part == "outcome" else None
    try:
        with torch_threads(threads) as default:
            records = fresh_run(part, data_dir, work_dir, images)
            reference = [] if parity_db is None else fresh_run(part, data_dir, work_dir, (PARITY_IMAGE,), path="reference")
    except CellsFailed as exc:
        return PartResult(part, False, [str(exc)], math.inf, str(exc))
    result = CHECKS[part](records, golden)
    if parity_db is not None and math.isfinite(result.margin):
        result = add_parity(result, records, reference, parity_db)
    if threads is not None and threads != default:
        result.notes.append(f"trained with {threads} threads, as the golden was (this machine's default: {default})")
    return result


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[int]:
    """torch's intra-op thread count set to ``count`` inside the block (None: left alone), and restored after;
    yields the count it had before. A golden's sums were reduced in the order of its own thread count
    (its provenance's torch_threads), so the check trains with that count on a machine of any size."""
    default = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield default
    finally:
        torch.set_num_threads(default)


def record(part: str, data_dir: Path, work_dir: Path, goldens_dir: Path = GOLDENS_DIR, spread_path: Path = SPREAD_PATH) -> Path:
    """Train ``part`` afresh and write its golden (tolerances from the spread measurement)."""
    spread = read_json(spread_path, "spread measurement (run 'make spread' first)")
    path = golden_path(part, goldens_dir)
    write_json_atomic(path, RECORDERS[part](fresh_run(part, data_dir, work_dir), spread))
    return path
