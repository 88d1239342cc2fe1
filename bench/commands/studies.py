"""Studies beside the main table: ablations, the published outputs, and a profile's cost estimate."""

from __future__ import annotations

import argparse

from bench.commands.common import config_overrides
from bench.config import build_config
from bench.data import data_dir
from bench.paths import RUNS_DIR


def cmd_ablate(args: argparse.Namespace) -> int:
    from bench.ablate import ABLATION_IMAGES, run_ablations, select_variants
    from bench.analysis.ablations import write_ablations

    variants = select_variants(args.variants)
    shared = {"run.images": ABLATION_IMAGES, "run.seeds": (0, 1, 2)} | config_overrides(args)
    results = run_ablations(args.profile, shared, variants, data_dir(args.data_dir), RUNS_DIR, args.progress)
    out = write_ablations(results, args.out, {v.name: v.description for v in variants})
    print(f"Ablation report written to {out}")
    return 0


def cmd_published(args: argparse.Namespace) -> int:
    from bench.published import render_published, score_published, write_published

    record = score_published(data_dir(args.data_dir))
    out = write_published(record, args.out)
    print(render_published(record))
    print(f"Written to {out}")
    return 0


def cmd_estimate(args: argparse.Namespace) -> int:
    from bench.estimate import estimate_seconds, measure_ms_per_iter
    from bench.progress import human_duration

    config = build_config(args.profile, config_overrides(args))
    measured = measure_ms_per_iter(config)
    seconds = estimate_seconds(config, measured)
    sizes = ", ".join(f"{w}x{h}: {ms:.0f} ms/iter" for (h, w), ms in measured.items())
    print(f"profile {args.profile}: about {human_duration(seconds)} on this machine ({seconds:.0f} s; measured {sizes})")
    return 0
