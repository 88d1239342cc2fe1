"""Ablations of the ambiguities the seed reproduction named: one run per variant, compared in pairs.

Every variant changes one thing in the paper's recipe. Cells of the same (image, seed) share the
mask, the network's initial weights and z, so a variant's effect is measured as the paired
difference against the baseline cell, which cancels most of the seed-to-seed spread.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench.analysis.ablations import BASELINE
from bench.config import build_config
from bench.errors import BenchError, unknown_choice
from bench.runner import run


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    overrides: dict  # build_config overrides on top of the profile ({} = the baseline)


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
        raise BenchError(unknown_choice("unknown ablation", unknown[0], VARIANTS))
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
