"""Statistics of a run, from its stored records: the configuration the cells share, per-image means
and spreads over seeds, and the per-seed table means. Numbers only; rendering is in bench.analysis.tables."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from bench.data import load_images
from bench.errors import BenchError
from dip.execution import EXECUTION_FIELDS
from dip.recipe import RestoreConfig

PER_CELL_KEYS = ("image", "seed", "file", "file_sha256")  # what differs between the cells of one run


def config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted names of the fields where two (nested) configurations differ."""
    names = []
    for key in sorted(a.keys() | b.keys()):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            names += config_diff(x, y, f"{prefix}{key}.")
        elif x != y:
            names.append(prefix + key)
    return names


def shared_config(records: list[dict]) -> dict:
    """The configuration all records share (image and seed aside); raises if they were run differently."""
    configs = [{k: v for k, v in r["config"].items() if k not in PER_CELL_KEYS} for r in records]
    for record, config in zip(records, configs):
        if config != configs[0]:
            differing = config_diff(configs[0], config)
            raise BenchError(
                f"records were run with different configurations ({records[0]['image']} vs "
                f"{record['image']} differ in {', '.join(differing)}); report one configuration at a time"
            )
    return configs[0]


def image_rows(records: list[dict]) -> list[tuple[str, str, tuple[float, float, float]]]:
    """(key, display name, (Papyan, DIP, seed repro.) of Table 1) per image of the records: Table 1's
    images in its order, then files outside the manifest (no Table 1 values: NaN) in record order."""
    table = load_images()
    keys = dict.fromkeys(r["image"] for r in records)
    rows = [(k, info.name, (info.papyan, info.dip_paper, info.seed_repro)) for k, info in table.items() if k in keys]
    names = {r["image"]: r.get("name", r["image"]) for r in records}
    return rows + [(k, names[k], (math.nan,) * 3) for k in keys if k not in table]


def summarise(records: list[dict]) -> pd.DataFrame:
    """One row per image (Table 1's order): reference columns and this run's statistics over seeds."""
    frame = pd.DataFrame(records)
    rows = []
    for key, name, (papyan, dip_paper, seed_repro) in image_rows(records):
        mine = frame[frame["image"] == key]
        values = mine["psnr"].to_numpy()
        std = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
        rows.append(
            {
                "image": name,
                "size": _size(mine.iloc[0]),
                "papyan": papyan,
                "dip_paper": dip_paper,
                "seed_repro": seed_repro,
                "psnr_mean": float(values.mean()),
                "psnr_std": std,
                "psnr_min": float(values.min()),
                "psnr_max": float(values.max()),
                "n": len(values),
                "delta": float(values.mean()) - dip_paper,
                "psnr_pasted": float(mine["psnr_pasted"].mean()),
                "ms_per_iter": float(np.median([t["median_ms_per_iter"] for t in mine["timing"]])),
                "backtracks": int(mine["backtracks"].sum()),
                **_extra_means(mine),
                "device": mine.iloc[0]["provenance"]["device_name"],
            }
        )
    return pd.DataFrame(rows)


# Second estimates (top-level record fields) and reference rows (in record["reference_psnr"]),
# written since commit ff410b6; the report shows their means over seeds.
ESTIMATE_COLUMNS = {"psnr_best": "Best (oracle stop)", "psnr_ema": "EMA of output"}
REFERENCE_ROW_COLUMNS = {
    "interp_nearest": "Interp. nearest",
    "interp_linear": "Interp. linear",
    "deep_prior_published": "DIP published",
    "papyan_published": "Papyan published",
}
EXTRA_COLUMNS = ESTIMATE_COLUMNS | REFERENCE_ROW_COLUMNS


def _extra_means(mine: pd.DataFrame) -> dict[str, float]:
    """Means over seeds of the extra estimates (NaN where a reference does not exist, e.g. no published
    output for a user's file); {} for records written before these fields existed."""
    if not {"reference_psnr", *ESTIMATE_COLUMNS} <= set(mine.columns):
        return {}
    if mine["reference_psnr"].isna().any() or mine[list(ESTIMATE_COLUMNS)].isna().any().any():
        return {}
    values = {key: [_number(r.get(key)) for r in mine["reference_psnr"]] for key in REFERENCE_ROW_COLUMNS}
    values |= {key: list(mine[key]) for key in ESTIMATE_COLUMNS}
    means = {key: float(np.mean(v)) for key, v in values.items()}
    means["best_iteration"] = float(np.median(mine["best_iteration"]))
    return means


def _number(value: float | None) -> float:
    """A stored PSNR: None (absent, or infinite and so not storable in JSON) reads as NaN."""
    return math.nan if value is None else float(value)


def _size(record: pd.Series) -> str:
    h, w = record["size"]
    full_h, full_w = record["full_size"]
    return f"{w}x{h}" if (h, w) == (full_h, full_w) else f"{w}x{h} crop of {full_w}x{full_h}"


def seed_means(records: list[dict]) -> pd.Series:
    """Mean PSNR over the images, per seed, for the seeds every image was run with: the table's
    mean as each seed alone would have reported it."""
    frame = pd.DataFrame([{"image": r["image"], "seed": r["seed"], "psnr": r["psnr"]} for r in records])
    per_seed = frame.pivot_table(index="seed", columns="image", values="psnr")
    return per_seed.dropna().mean(axis=1)


def commit_labels(records: list[dict]) -> list[str]:
    """The distinct commits the records were run at, short, marked -dirty where the tree was."""
    return sorted({(r["provenance"]["commit"] or "unknown")[:12] + ("-dirty" if r["provenance"]["dirty"] else "") for r in records})


# Configuration fields another run may differ in and still be shown as a column of this report.
COMPARABLE_DIFFERENCES = ("recipe_name", "recipe.")


def check_comparable(config: dict, other: dict, label: str) -> list[str]:
    """The fields ``other`` differs in from ``config``; raises if any is outside the recipe (or is the
    iteration count): images, crops, masks and budget must match for a column to mean anything."""
    differing = config_diff(config, other)
    bad = [d for d in differing if not d.startswith(COMPARABLE_DIFFERENCES) or d == "recipe.iterations"]
    if bad:
        raise BenchError(f"run {label!r} cannot be a column of this report: it differs in {', '.join(bad)}")
    return differing


def aligned(summary: pd.DataFrame, other: pd.DataFrame) -> pd.DataFrame:
    """``other``'s per-image summary in the row order of ``summary`` (NaN for images it lacks)."""
    return summary[["image"]].merge(other, on="image", how="left")




PAPER_ITERATIONS = RestoreConfig().iterations
PAPER_KEEP = 0.5  # Table 1 drops 50% of the pixels
# Recipe fields that change what is computed; the rest only change how (execution fields), what is
# recorded (curve points, EMA, timer) or how long (the budget, judged apart).
_NOT_PROTOCOL = set(EXECUTION_FIELDS) | {"iterations", "eval_every", "ema_decay", "timer_warmup", "timer_window"}


def is_paper_budget(config: dict) -> bool:
    """Full images and the paper's 11000 iterations (whatever the recipe)."""
    return config["crop"] == 0 and config["recipe"]["iterations"] == PAPER_ITERATIONS


def recipe_differences(config: dict) -> list[str]:
    """Where a run's protocol (as stored in its records) departs from the paper's: ``["lr 0.01", ...]``.
    Network fields are compared too, except the output channels (they follow the image); so is the
    fraction of pixels kept (Table 1 drops 50%). Either mask, a bernoulli draw or the authors' own, is
    the protocol, and so is any subset of the images (each row is compared with its own Table 1 cell)."""
    paper, recipe = RestoreConfig().to_dict(), config["recipe"]
    differs = [f"{k} {recipe[k]}" for k in paper if k not in _NOT_PROTOCOL | {"net"} and k in recipe and recipe[k] != paper[k]]
    net = recipe.get("net", {})
    differs += [f"net.{k} {net[k]}" for k, v in paper["net"].items() if k != "out_channels" and k in net and net[k] != v]
    if config.get("mask") == "bernoulli" and config.get("keep", PAPER_KEEP) != PAPER_KEEP:
        differs.append(f"keep {config['keep']}")
    return differs
