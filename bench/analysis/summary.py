"""Statistics of a run, from its stored records: the configuration the cells share, per-image means
and spreads over seeds, and the per-seed table means, from typed records (bench.record). Numbers only;
rendering is in bench.analysis.tables."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd

from bench.data import load_images
from bench.errors import BenchError
from bench.record import Record, RecordConfig
from dip.execution import EXECUTION_FIELDS, PATH_CHOSEN_FIELDS, REFERENCE_EXECUTION, execution_path
from dip.recipe import RestoreConfig

def config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted names of the fields where two (nested) configurations, in their JSON form, differ."""
    names = []
    for key in sorted(a.keys() | b.keys()):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            names += config_diff(x, y, f"{prefix}{key}.")
        elif x != y:
            names.append(prefix + key)
    return names


def shared_config(records: list[Record], per_cell_execution: bool = False) -> RecordConfig:
    """The configuration all records share (image, seed and file aside); raises if they were run differently.
    ``per_cell_execution``: the fields an execution path resolves per machine (precision, layout,
    Winograd, ...) may differ between cells of the same path (a campaign whose cells ran on different CPU
    kinds); the first record's are returned, and :func:`execution_label` says each cell's."""
    if per_cell_execution:
        paths = {r.image: execution_path(r.config.recipe.to_dict()) for r in records}
        if len(set(paths.values())) > 1:
            raise BenchError("records ran on different execution paths ("
                             + ", ".join(f"{image}: {path}" for image, path in paths.items())
                             + "); report each path apart")
    configs = [_protocol_of(r.config, per_cell_execution) for r in records]
    for record, config in zip(records, configs):
        if config != configs[0]:
            differing = config_diff(configs[0].to_dict(), config.to_dict())
            raise BenchError(
                f"records were run with different configurations ({records[0].image} vs "
                f"{record.image} differ in {', '.join(differing)}); report one configuration at a time"
            )
    return records[0].config.shared()


def _protocol_of(config: RecordConfig, per_cell_execution: bool) -> RecordConfig:
    """``config`` without its cell's own fields and, with ``per_cell_execution``, without the choices
    its execution path made for the machine it ran on."""
    shared = config.shared()
    if not per_cell_execution:
        return shared
    neutral = {k: REFERENCE_EXECUTION[k] for k in PATH_CHOSEN_FIELDS}
    return dataclasses.replace(shared, recipe=dataclasses.replace(shared.recipe, **neutral))


def same_protocol(a: RecordConfig, b: RecordConfig) -> bool:
    """Whether two cells' configurations are one run's, each executed as its path chose on its machine."""
    return (execution_path(a.recipe.to_dict()) == execution_path(b.recipe.to_dict())
            and _protocol_of(a, True) == _protocol_of(b, True))


# The words for the execution switches that are on, in the order a label lists them.
_EXECUTION_WORDS = {"channels_last": "channels_last", "fused_adam": "fused Adam", "tf32": "TF32",
                    "cudnn_benchmark": "cuDNN benchmark", "compile": "compiled", "cuda_graphs": "CUDA graphs",
                    "winograd": "Winograd 3x3", "matmul_1x1": "1x1 as matmul", "keep_heap": "kept heap"}


def execution_label(recipe: dict) -> str:
    """How a resolved recipe (as stored) was executed, in a few words: ``"bf16, channels_last, fused Adam"``."""
    return ", ".join([recipe.get("precision", "fp32")] + [w for k, w in _EXECUTION_WORDS.items() if recipe.get(k)])


def image_rows(records: list[Record]) -> list[tuple[str, str, tuple[float, float, float]]]:
    """(key, display name, (Papyan, DIP, seed repro.) of Table 1) per image of the records: Table 1's
    images in its order, then files outside the manifest (no Table 1 values: NaN) in record order."""
    table = load_images()
    keys = dict.fromkeys(r.image for r in records)
    rows = [(k, info.name, (info.papyan, info.dip_paper, info.seed_repro)) for k, info in table.items() if k in keys]
    names = {r.image: r.label for r in records}
    return rows + [(k, names[k], (math.nan,) * 3) for k in keys if k not in table]


def summarise(records: list[Record]) -> pd.DataFrame:
    """One row per image (Table 1's order): reference columns and this run's statistics over seeds."""
    rows = []
    for key, name, (papyan, dip_paper, seed_repro) in image_rows(records):
        mine = [r for r in records if r.image == key]
        values = np.array([r.psnr for r in mine])
        std = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
        rows.append(
            {
                "image": name,
                "size": _size(mine[0]),
                "papyan": papyan,
                "dip_paper": dip_paper,
                "seed_repro": seed_repro,
                "psnr_mean": float(values.mean()),
                "psnr_std": std,
                "psnr_min": float(values.min()),
                "psnr_max": float(values.max()),
                "n": len(values),
                "delta": float(values.mean()) - dip_paper,
                "psnr_pasted": float(np.mean([r.psnr_pasted for r in mine])),
                "ms_per_iter": float(np.median([r.ms_per_iter for r in mine])),
                "backtracks": int(sum(r.backtracks for r in mine)),
                **_extra_means(mine),
                "device": ", ".join(dict.fromkeys(r.provenance.device_name for r in mine)),
                "execution": "; ".join(dict.fromkeys(execution_label(r.config.recipe.to_dict()) for r in mine)),
            }
        )
    return pd.DataFrame(rows)


# Second estimates (record fields) and reference rows (ReferenceScores fields), written since commit
# ff410b6; the report shows their means over seeds.
ESTIMATE_COLUMNS = {"psnr_best": "Best (oracle stop)", "psnr_ema": "EMA of output"}
REFERENCE_ROW_COLUMNS = {
    "interp_nearest": "Interp. nearest",
    "interp_linear": "Interp. linear",
    "deep_prior_published": "DIP published",
    "papyan_published": "Papyan published",
}
EXTRA_COLUMNS = ESTIMATE_COLUMNS | REFERENCE_ROW_COLUMNS


def _extra_means(mine: list[Record]) -> dict[str, float]:
    """Means over seeds of the extra estimates (NaN where a reference does not exist, e.g. no published
    output for a user's file); {} for records written before these fields existed (or with the EMA off)."""
    if any(r.reference_psnr is None or any(getattr(r, k) is None for k in ESTIMATE_COLUMNS) for r in mine):
        return {}
    values = {key: [_number(getattr(r.reference_psnr, key)) for r in mine] for key in REFERENCE_ROW_COLUMNS}
    values |= {key: [getattr(r, key) for r in mine] for key in ESTIMATE_COLUMNS}
    means = {key: float(np.mean(v)) for key, v in values.items()}
    means["best_iteration"] = float(np.median([r.best_iteration for r in mine]))
    return means


def _number(value: float | None) -> float:
    """A stored PSNR: None (absent, or infinite and so not storable in JSON) reads as NaN."""
    return math.nan if value is None else float(value)


def _size(record: Record) -> str:
    h, w = record.size
    full_h, full_w = record.full_size
    return f"{w}x{h}" if (h, w) == (full_h, full_w) else f"{w}x{h} crop of {full_w}x{full_h}"


def seed_means(records: list[Record]) -> pd.Series:
    """Mean PSNR over the images, per seed, for the seeds every image was run with: the table's
    mean as each seed alone would have reported it."""
    frame = pd.DataFrame([{"image": r.image, "seed": r.seed, "psnr": r.psnr} for r in records])
    per_seed = frame.pivot_table(index="seed", columns="image", values="psnr")
    return per_seed.dropna().mean(axis=1)


def commit_labels(records: list[Record]) -> list[str]:
    """The distinct commits the records were run at, short, marked -dirty where the tree was."""
    return sorted({r.provenance.commit_label for r in records})


# Configuration fields another run may differ in and still be shown as a column of this report: the
# recipe and the method (the same images, crops, masks and budget: what a benchmark holds fixed).
COMPARABLE_DIFFERENCES = ("recipe_name", "recipe.", "method.")


def check_comparable(config: RecordConfig, other: RecordConfig, label: str) -> list[str]:
    """The fields ``other`` differs in from ``config``; raises if any is outside the recipe and the method
    (or is the iteration count): images, crops, masks and budget must match for a column to mean anything."""
    differing = config_diff(config.to_dict(), other.to_dict())
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


def is_paper_budget(config: RecordConfig) -> bool:
    """Full images and the paper's 11000 iterations (whatever the recipe)."""
    return config.crop == 0 and config.recipe.iterations == PAPER_ITERATIONS


def method_label(config: RecordConfig) -> str:
    """The method's name as a report shows it (with where it was loaded from, for a user's method)."""
    method = config.method
    return method.name + (f" ({method.source})" if method.source else "")


def recipe_differences(config: RecordConfig) -> list[str]:
    """Where a run's protocol (as stored in its records) departs from the paper's: ``["lr 0.01", ...]``.
    Another method than the built-in one comes first (its network is not the paper's; the built-in
    network's fields are then not compared, the method does not use them). Network fields are compared
    too, except the output channels (they follow the image); so is the fraction of pixels kept (Table 1
    drops 50%). Either mask, a bernoulli draw or the authors' own, is the protocol, and so is any
    subset of the images (each row is compared with its own Table 1 cell)."""
    paper, recipe = RestoreConfig().to_dict(), config.recipe.to_dict()
    differs = [] if config.method.is_builtin else [f"method {method_label(config)}"]
    differs += [f"{k} {recipe[k]}" for k in paper if k not in _NOT_PROTOCOL | {"net"} and recipe[k] != paper[k]]
    if config.method.is_builtin:
        differs += [f"net.{k} {recipe['net'][k]}" for k, v in paper["net"].items()
                    if k != "out_channels" and recipe["net"][k] != v]
    if config.mask == "bernoulli" and config.keep not in (None, PAPER_KEEP):
        differs.append(f"keep {config.keep}")
    return differs
