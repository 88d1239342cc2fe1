"""How far a run at the paper's protocol has got over Table 1's cells: which are done, which are
training or stopped (and at which iteration), which are missing, and what each unfinished one still
costs on the machine that ran the latest of the others.

Read from the results directory alone (records, checkpoints, locks), like ``bench status``; the
rows are plain data, rendered by the torch-free :func:`bench.analysis.tables.coverage_table`.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.checkpoints import checkpoint_iteration
from bench.data import load_images
from bench.records import COMPLETE, FAILED, Record, read_record
from bench.rundir import RunDir, cell_stem, is_locked


@dataclass(frozen=True)
class CoverageRow:
    name: str  # Table 1's name
    seed: int
    size: str  # "256x256"
    state: str  # done | training | stopped | failed | missing
    iteration: int | None  # iterations done: the record's total, or the checkpoint's
    psnr: float | None  # done cells only
    hours_left: float | None  # unfinished cells: iterations left x ms/iter of the basis
    basis: str  # where hours_left's ms/iter comes from


def coverage(results_dir: Path, records: list[Record]) -> list[dict]:
    """One row per Table 1 image and seed of ``records`` (their shared configuration: iterations, device),
    as dicts for :func:`bench.analysis.tables.coverage_table`."""
    run_dir = RunDir(results_dir)
    iterations = records[0].config.recipe.iterations
    seeds = sorted({r.seed for r in records})
    rates = ms_per_iter_by_size(records)
    rows = []
    for info in load_images().values():
        size = (info.height, info.width)
        for seed in seeds:
            stem = cell_stem(info.key, seed)
            rows.append(asdict(cell_row(run_dir, stem, info.name, seed, size, iterations, rates)))
    return rows


def ms_per_iter_by_size(records: list[Record]) -> dict[tuple[int, int], tuple[float, str]]:
    """(ms/iter, basis) per image size: the median over this run's complete records of that size from
    the machine that ran the latest of them (a campaign may move between CPU kinds: the next cells run
    where the last one did); a size with none is scaled from a measured one by the ratio of pixels (the
    network's work is linear in them)."""
    latest = max(records, key=lambda r: r.provenance.timestamp, default=None)
    machine = _machine(latest) if latest else None
    measured: dict[tuple[int, int], list[float]] = {}
    for r in records:
        if _machine(r) == machine:
            measured.setdefault(tuple(r.size), []).append(r.ms_per_iter)
    several = len({_machine(r) for r in records}) > 1
    where = f" on {latest.provenance.device_name} ({latest.provenance.cpu_capability})" if several else ""
    rates = {size: (statistics.median(ms), f"median of this run's {len(ms)} {size[1]}x{size[0]} record"
                    + ("s" if len(ms) > 1 else "") + where) for size, ms in measured.items()}
    if not rates:
        return rates
    base = max(rates, key=lambda s: len(measured[s]))
    for info in load_images().values():
        size = (info.height, info.width)
        if size not in rates:
            scale = size[0] * size[1] / (base[0] * base[1])
            rates[size] = (rates[base][0] * scale, f"{base[1]}x{base[0]}'s {rates[base][0]:.0f} ms/iter{where} x {scale:g} "
                                                   f"(pixels; not measured)")
    return rates


def _machine(record: Record) -> tuple[str | None, str | None]:
    """The CPU or GPU kind a record ran on, as far as speed goes: its name and instruction set."""
    return record.provenance.device_name, record.provenance.cpu_capability


def cell_row(run_dir: RunDir, stem: str, name: str, seed: int, size: tuple[int, int], iterations: int,
             rates: dict[tuple[int, int], tuple[float, str]]) -> CoverageRow:
    label = f"{size[1]}x{size[0]}"
    if (record := read_record(run_dir.record(stem), COMPLETE)) is not None:
        return CoverageRow(name, seed, label, "done", iterations, record.psnr, None, "")
    if read_record(run_dir.record(stem), FAILED) is not None:
        return CoverageRow(name, seed, label, "failed", None, None, None, "")
    checkpoint = run_dir.checkpoint(stem)
    reached = checkpoint_iteration(checkpoint) if checkpoint.exists() else None
    state = "training" if is_locked(run_dir.lock(stem)) else ("stopped" if reached is not None else "missing")
    ms, basis = rates.get(size, (None, "no record of this run to time it by"))
    left = None if ms is None else (iterations - (reached or 0)) * ms / 3.6e6
    return CoverageRow(name, seed, label, state, reached, None, left, basis)
