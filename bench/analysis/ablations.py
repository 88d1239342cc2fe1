"""The ablation report: each variant's effect as the paired PSNR difference against the baseline on
the same (image, seed) cells, with its standard error, and a reading generated from the numbers."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bench.analysis.report import snapshot_records
from bench.analysis.summary import (
    commit_labels,
    config_diff,
    seed_means,
    shared_config,
    summarise,
)
from bench.analysis.tables import psnr_cell
from bench.errors import BenchError
from bench.record import Record
from bench.records import write_text_atomic
from dip.execution import execution_path

BASELINE = "paper"  # the variant every other one is paired with: the paper's recipe


def paired_deltas(records: list[Record], baseline: list[Record]) -> pd.Series:
    """PSNR of each (image, seed) cell minus the baseline's cell of the same image and seed."""
    def psnrs(recs: list[Record]) -> pd.Series:
        return pd.Series({(r.image, r.seed): r.psnr for r in recs})

    mine, base = psnrs(records), psnrs(baseline)
    missing = mine.index.difference(base.index)
    if len(missing):
        raise BenchError(f"baseline has no cell for {', '.join(f'{i} seed {s}' for i, s in missing)}")
    return mine - base[mine.index]


@dataclass(frozen=True)
class Effect:
    mean_psnr: float
    std_over_seeds: float  # sample std of the per-seed means over images (NaN with one seed)
    delta: float  # mean paired difference against the baseline (dB)
    delta_se: float  # its standard error (NaN with one pair)
    better: int  # pairs where the variant scored higher
    pairs: int
    ms_per_iter: float
    best_psnr: float


def effect(records: list[Record], baseline: list[Record]) -> Effect:
    per_seed = seed_means(records)
    deltas = paired_deltas(records, baseline)
    n = len(deltas)
    return Effect(
        mean_psnr=float(per_seed.mean()),
        std_over_seeds=float(per_seed.std(ddof=1)) if len(per_seed) > 1 else math.nan,
        delta=float(deltas.mean()),
        delta_se=float(deltas.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan,
        better=int((deltas > 0).sum()),
        pairs=n,
        ms_per_iter=float(np.median([r.ms_per_iter for r in records])),
        best_psnr=float(np.mean([r.psnr_best for r in records])),
    )


def reading(effects: dict[str, Effect]) -> str:
    """One paragraph, generated from the numbers: which changes move PSNR beyond twice their standard
    error, in which direction, and at what cost per iteration."""
    base = effects[BASELINE]
    sentences = []
    for name, e in effects.items():
        if name == BASELINE:
            continue
        speed = e.ms_per_iter / base.ms_per_iter
        cost = f"at {speed:.2f}x the baseline's time per iteration"
        if not math.isnan(e.delta_se) and abs(e.delta) > 2 * e.delta_se:
            verdict = "raises" if e.delta > 0 else "lowers"
            sentences.append(f"*{name}* {verdict} PSNR by {abs(e.delta):.2f} dB (± {e.delta_se:.2f} standard error; "
                             f"higher in {e.better} of {e.pairs} paired cells), {cost}.")
        else:
            sentences.append(f"*{name}* changes PSNR by {e.delta:+.2f} dB, within twice its standard error "
                             f"({_se(e)}; higher in {e.better} of {e.pairs} paired cells): not separable from seed noise "
                             f"at this budget, {cost}.")
    return " ".join(sentences)


def _se(e: Effect) -> str:
    return "n/a" if math.isnan(e.delta_se) else f"± {e.delta_se:.2f}"


def render_ablations(results: dict[str, list[Record]], descriptions: dict[str, str] | None = None) -> str:
    """The report of ``results`` (variant name -> records); ``descriptions`` says what each variant changes."""
    base_records = results[BASELINE]
    config = shared_config(base_records)
    effects = {name: effect(recs, base_records) for name, recs in results.items()}
    rows = []
    for name, e in effects.items():
        differing = config_diff(config.to_dict(), shared_config(results[name]).to_dict())
        rows.append({
            "Variant": name,
            "Changes": ", ".join(differing) or "(baseline)",
            "PSNR mean ± std": f"{e.mean_psnr:.2f} ± {e.std_over_seeds:.2f}" if not math.isnan(e.std_over_seeds) else f"{e.mean_psnr:.2f}",
            "Δ vs baseline (paired)": "" if name == BASELINE else f"{e.delta:+.2f} {_se(e)}",
            "Higher in": "" if name == BASELINE else f"{e.better}/{e.pairs}",
            "Best (oracle stop)": f"{e.best_psnr:.2f}",
            "ms/iter": f"{e.ms_per_iter:.1f}",
            "Time vs baseline": f"{e.ms_per_iter / effects[BASELINE].ms_per_iter:.2f}x",
        })
    table = pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True, colalign=["left", "left"] + ["right"] * 6)

    # Per image: the report's own per-image summary (mean, sample std over seeds) of each variant.
    summaries = {name: summarise(recs) for name, recs in results.items()}
    per_image = {"Image": summaries[BASELINE]["image"]}
    for name, summary in summaries.items():
        per_image[name] = [psnr_cell(m, sd) for m, sd in zip(summary["psnr_mean"], summary["psnr_std"])]
    image_table = pd.DataFrame(per_image).to_markdown(index=False, disable_numparse=True)

    all_records = [r for recs in results.values() for r in recs]
    seeds = sorted({r.seed for r in base_records})
    images = list(summaries[BASELINE]["image"])
    recipe = config.recipe
    variant_lines = "\n".join(f"- `{name}`" + (f": {descriptions[name]}" if descriptions and name in descriptions else "") for name in results)
    return "\n\n".join([
        f"# Ablations: profile `{config.profile}`",
        f"- Images: {', '.join(images)}; seeds {', '.join(map(str, seeds))}; crop {config.crop}; "
        f"{recipe.iterations} iterations; mask {config.mask}; path {execution_path(recipe.to_dict())} ({recipe.precision})\n"
        f"- Device: {base_records[0].provenance.device_name}; commits {', '.join(commit_labels(all_records))}\n"
        f"- Records of every variant beside this report (`ablations/<variant>/records`)",
        "## Variants",
        variant_lines,
        "## Results",
        table,
        "*PSNR mean ± std*: mean over images and seeds; std: sample std over seeds of each seed's mean over the "
        "images. *Δ vs baseline*: mean over (image, seed) cells of the variant's PSNR minus the baseline's PSNR on "
        "the same cell (same mask, initial weights and z), ± its standard error; *Higher in*: cells where the variant "
        "scored higher. *ms/iter*: median over cells. Budget: the profile's iterations, not the paper's 11000; a "
        "variant that converges faster or slower can rank differently at 11000.",
        "## Reading",
        reading(effects),
        "## Per image (mean ± std over seeds)",
        image_table,
    ]) + "\n"


def write_ablations(results: dict[str, list[Record]], out: Path, descriptions: dict[str, str] | None = None) -> Path:
    text = render_ablations(results, descriptions)
    for name, records in results.items():
        snapshot_records(records, out.parent / out.stem / name / "records")
    write_text_atomic(out, text)
    return out
