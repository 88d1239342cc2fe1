"""Ablations of the ambiguities the seed reproduction named: one run per variant, compared in pairs.

Every variant changes one thing in the paper's recipe. Cells of the same (image, seed) share the
mask, the network's initial weights and z, so a variant's effect is measured as the paired
difference against the baseline cell, which cancels most of the seed-to-seed spread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bench.config import build_config, execution_path
from bench.errors import BenchError
from bench.report import commit_labels, config_diff, psnr_cell, seed_means, shared_config, snapshot_records, summarise
from bench.records import write_text_atomic
from bench.runner import run


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    overrides: dict  # build_config overrides on top of the profile ({} = the baseline)


BASELINE = "paper"
VARIANTS = {
    v.name: v
    for v in (
        Variant(BASELINE, "the paper's recipe: fresh noise around a fixed z, bilinear, lr 1e-3, paper network", {}),
        Variant("noise-cumulative", "input noise accumulated into z every step (z <- z + 0.03 N(0, 1))",
                {"recipe.input_noise": "cumulative"}),
        Variant("upsample-bicubic", "bicubic upsampling instead of bilinear", {"net.upsample_mode": "bicubic"}),
        Variant("upsample-nearest", "nearest upsampling instead of bilinear", {"net.upsample_mode": "nearest"}),
        Variant("lr-1e-2", "learning rate 1e-2 instead of 1e-3", {"recipe.lr": 0.01}),
        Variant("seed-network", "the seed reproduction's wiring: skips after downsampling, convolutions before "
                "upsampling (net.layout seed; paper slope, upsampling and training)", {"net.layout": "seed"}),
    )
}
# A texture-rich image, the paper's weakest (C.man) and its strongest (House) of Table 1.
ABLATION_IMAGES = ("barbara", "cman", "house")


def variant_results_dir(runs_dir: Path, profile: str, variant: Variant) -> Path:
    return runs_dir / "ablate" / f"{profile}-{variant.name}"


def select_variants(names: tuple[str, ...] | None) -> list[Variant]:
    names = names or tuple(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise BenchError(f"unknown ablation {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    return [VARIANTS[BASELINE]] + [VARIANTS[n] for n in names if n != BASELINE]  # the baseline always runs


def run_ablations(profile: str, shared: dict, variants: list[Variant], data_dir: Path, runs_dir: Path,
                  progress: bool = True) -> dict[str, list[dict]]:
    """Run every variant (cells with complete records are skipped); records per variant name.

    ``shared``: build_config overrides for every variant (images, seeds, --iterations, ...).
    """
    for v in variants:
        clash = shared.keys() & v.overrides.keys()
        if clash:
            raise BenchError(f"ablation {v.name} sets {', '.join(sorted(clash))} itself; do not override it")
    configs = {v.name: build_config(profile, {**shared, **v.overrides}) for v in variants}
    results = {}
    for v in variants:  # configs first: a bad variant or image fails before any training
        print(f"ablation {v.name}: {v.description}", flush=True)
        # The baseline's cells are often in the profile's own run already (same config): copied, not re-run.
        reuse = runs_dir / profile if not v.overrides else None
        results[v.name] = run(configs[v.name], data_dir, variant_results_dir(runs_dir, profile, v), progress=progress, reuse_from=reuse).records
    return results


def paired_deltas(records: list[dict], baseline: list[dict]) -> pd.Series:
    """PSNR of each (image, seed) cell minus the baseline's cell of the same image and seed."""
    def psnrs(recs: list[dict]) -> pd.Series:
        return pd.Series({(r["image"], r["seed"]): r["psnr"] for r in recs})

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


def effect(records: list[dict], baseline: list[dict]) -> Effect:
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
        ms_per_iter=float(np.median([r["timing"]["median_ms_per_iter"] for r in records])),
        best_psnr=float(np.mean([r["psnr_best"] for r in records])),
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


def render_ablations(results: dict[str, list[dict]]) -> str:
    base_records = results[BASELINE]
    config = shared_config(base_records)
    effects = {name: effect(recs, base_records) for name, recs in results.items()}
    rows = []
    for name, e in effects.items():
        differing = config_diff(config, shared_config(results[name]))
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
    seeds = sorted({r["seed"] for r in base_records})
    images = list(summaries[BASELINE]["image"])
    recipe = config["recipe"]
    descriptions = "\n".join(f"- `{name}`: {VARIANTS[name].description}" for name in results)
    return "\n\n".join([
        f"# Ablations: profile `{config['profile']}`",
        f"- Images: {', '.join(images)}; seeds {', '.join(map(str, seeds))}; crop {config['crop']}; "
        f"{recipe['iterations']} iterations; mask {config['mask']}; path {execution_path(recipe)} ({recipe['precision']})\n"
        f"- Device: {base_records[0]['provenance']['device_name']}; commits {', '.join(commit_labels(all_records))}\n"
        f"- Records of every variant beside this report (`ablations/<variant>/records`)",
        "## Variants",
        descriptions,
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


def write_ablations(results: dict[str, list[dict]], out: Path) -> Path:
    text = render_ablations(results)
    for name, records in results.items():
        snapshot_records(records, out.parent / out.stem / name / "records")
    write_text_atomic(out, text)
    return out
