"""Markdown comparison with Table 1, built from stored records only (never from a live run)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from bench.config import execution_path
from bench.data import load_images
from bench.errors import BenchError
from bench.records import record_path, write_json_atomic, write_text_atomic

PER_CELL_KEYS = ("image", "seed")


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


def summarise(records: list[dict]) -> pd.DataFrame:
    """One row per image in Table 1's order: reference columns and this run's statistics over seeds."""
    frame = pd.DataFrame(records)
    rows = []
    for key, info in load_images().items():
        mine = frame[frame["image"] == key]
        if mine.empty:
            continue
        values = mine["psnr"].to_numpy()
        std = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
        rows.append(
            {
                "image": info.name,
                "size": _size(mine.iloc[0]),
                "papyan": info.papyan,
                "dip_paper": info.dip_paper,
                "seed_repro": info.seed_repro,
                "psnr_mean": float(values.mean()),
                "psnr_std": std,
                "psnr_min": float(values.min()),
                "psnr_max": float(values.max()),
                "n": len(values),
                "delta": float(values.mean()) - info.dip_paper,
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
    """Means over seeds of the extra estimates, when every record of the image has them."""
    if "reference_psnr" not in mine or mine["reference_psnr"].isna().any() or mine["psnr_ema"].isna().any():
        return {}
    values = {key: [r[key] for r in mine["reference_psnr"]] for key in REFERENCE_ROW_COLUMNS}
    values |= {key: list(mine[key]) for key in ESTIMATE_COLUMNS}
    means = {key: float(np.mean(v)) for key, v in values.items()}
    means["best_iteration"] = float(np.median(mine["best_iteration"]))
    return means


def extra_table(summary: pd.DataFrame) -> str | None:
    """Second table: oracle early stop, EMA, and reference rows computed here; None for older records."""
    if not set(EXTRA_COLUMNS) <= set(summary.columns) or summary[list(EXTRA_COLUMNS)].isna().any().any():
        return None
    table = pd.DataFrame({"Image": summary["image"]})
    for key, title in EXTRA_COLUMNS.items():
        table[title] = summary[key].map("{:.2f}".format)
    table.insert(2, "at iter.", summary["best_iteration"].map("{:.0f}".format))
    mean_row = {"Image": "**Mean**", "at iter.": "", **{t: f"{summary[k].mean():.2f}" for k, t in EXTRA_COLUMNS.items()}}
    table = pd.concat([table, pd.DataFrame([mean_row])], ignore_index=True)
    return table.to_markdown(index=False, disable_numparse=True, colalign=["left"] + ["right"] * (len(table.columns) - 1))


EXTRA_LEGEND = """*Best (oracle stop)*: the highest PSNR seen at an evaluation point during training and the (median)
iteration where it was reached: what stopping at the right moment would give, with the ground truth
as oracle. *EMA of output*: PSNR of the exponential moving average (weight 0.99) of the training
outputs. *Interp.*: SciPy's nearest / linear interpolation of the missing pixels from the same mask, the
floor any prior must beat. *DIP published*, *Papyan published*: the authors' published outputs (made
with their own masks) scored here on the same crop with the same PSNR."""


def _size(record: pd.Series) -> str:
    h, w = record["size"]
    full_h, full_w = record["full_size"]
    return f"{w}x{h}" if (h, w) == (full_h, full_w) else f"{w}x{h} crop of {full_w}x{full_h}"


def _psnr_cell(mean: float, std: float) -> str:
    return f"{mean:.2f}" if np.isnan(std) else f"{mean:.2f} ± {std:.2f}"


def markdown_table(summary: pd.DataFrame) -> str:
    table = pd.DataFrame(
        {
            "Image": summary["image"],
            "Size": summary["size"],
            "Papyan et al.": summary["papyan"].map("{:.2f}".format),
            "DIP (Table 1)": summary["dip_paper"].map("{:.2f}".format),
            "Seed repro.": summary["seed_repro"].map("{:.2f}".format),
            "This run": [_psnr_cell(m, s) for m, s in zip(summary["psnr_mean"], summary["psnr_std"])],
            "n": summary["n"].astype(str),
            "Δ vs Table 1": summary["delta"].map("{:+.2f}".format),
            "Paste-back": summary["psnr_pasted"].map("{:.2f}".format),
            "ms/iter": summary["ms_per_iter"].map("{:.1f}".format),
            "Backtracks": summary["backtracks"].astype(str),
            "Device": summary["device"],
        }
    )
    mean_row = {
        "Image": "**Mean**",
        "Size": "",
        "Papyan et al.": f"{summary['papyan'].mean():.2f}",
        "DIP (Table 1)": f"{summary['dip_paper'].mean():.2f}",
        "Seed repro.": f"{summary['seed_repro'].mean():.2f}",
        "This run": f"{summary['psnr_mean'].mean():.2f}",
        "n": str(int(summary["n"].sum())),
        "Δ vs Table 1": f"{summary['delta'].mean():+.2f}",
        "Paste-back": f"{summary['psnr_pasted'].mean():.2f}",
        "ms/iter": "",
        "Backtracks": str(int(summary["backtracks"].sum())),
        "Device": "",
    }
    if summary["n"].max() > 1:  # several seeds: show their range next to n
        table.insert(7, "Min to max", [f"{lo:.2f} to {hi:.2f}" for lo, hi in zip(summary["psnr_min"], summary["psnr_max"])])
        mean_row["Min to max"] = f"{summary['psnr_min'].min():.2f} to {summary['psnr_max'].max():.2f}"
    table = pd.concat([table, pd.DataFrame([mean_row])], ignore_index=True)
    colalign = ["left", "left"] + ["right"] * (len(table.columns) - 3) + ["left"]
    return table.to_markdown(index=False, disable_numparse=True, colalign=colalign)


def commit_labels(records: list[dict]) -> list[str]:
    """The distinct commits the records were run at, short, marked -dirty where the tree was."""
    return sorted({(r["provenance"]["commit"] or "unknown")[:12] + ("-dirty" if r["provenance"]["dirty"] else "") for r in records})


def header(records: list[dict], config: dict) -> str:
    recipe = config["recipe"]
    prov = records[0]["provenance"]
    commits = commit_labels(records)
    dates = sorted(r["provenance"]["timestamp"] for r in records)
    seeds_per_image = {key: sum(1 for r in records if r["image"] == key) for key in dict.fromkeys(r["image"] for r in records)}
    mask = config["mask"] + (f" (keep {config['keep']})" if config["mask"] == "bernoulli" else " (published masks)")
    lines = [
        f"# dip-bench: profile `{config['profile']}`",
        "",
        f"- Iterations: {recipe['iterations']}; lr {recipe['lr']}; backtracking "
        f"{'on' if recipe['backtracking'] else 'off'}; mask {mask}",
        f"- Path: {execution_path(recipe)} ({recipe['precision']}, channels_last {recipe['channels_last']}, "
        f"fused Adam {recipe.get('fused_adam', False)})",
        f"- Device: {prov['device_name']} ({config['device']}), torch {prov['torch']}, {prov['torch_threads']} threads",
        f"- Commit: {', '.join(commits)}; runs from {dates[0]} to {dates[-1]}",
        f"- Images: {len(seeds_per_image)}, seeds per image: {_span(seeds_per_image.values())}",
    ]
    full = recipe["iterations"] == 11000 and config["crop"] == 0
    if not full:
        lines += [
            "",
            f"> **Not comparable to Table 1.** This run uses "
            f"{'centre crops of ' + str(config['crop']) + ' px' if config['crop'] else 'full images'} and "
            f"{recipe['iterations']} iterations instead of the paper's full images and 11000 iterations; "
            f"the Table 1 columns are shown for orientation only, and Δ is not a reproduction gap.",
        ]
    return "\n".join(lines)


def _span(counts) -> str:
    lo, hi = min(counts), max(counts)
    return str(lo) if lo == hi else f"{lo} to {hi}"


LEGEND = """\
Columns: *Papyan et al.*, *DIP (Table 1)*: the paper's Table 1 (dB). *Seed repro.*: the independent
reproduction by Peschl et al. *This run*: PSNR of the raw network output against the ground truth
(whole image or crop, data range 1, known pixels not pasted back), mean ± sample std over seeds; *n* seeds
and, with several, their *min to max* (the mean row: over all records).
*Δ*: this run's mean minus Table 1's DIP value. *Paste-back*: PSNR after the observed pixels are
copied into the output. *ms/iter*: median time of one training iteration (warm-up excluded).
*Backtracks*: times the parameters were restored after a >5 dB drop, summed over seeds."""


def render(records: list[dict]) -> str:
    config = shared_config(records)
    summary = summarise(records)
    parts = [header(records, config), markdown_table(summary), LEGEND]
    extra = extra_table(summary)
    if extra is not None:
        parts += ["## Second estimates and reference rows computed here", extra, EXTRA_LEGEND]
    return "\n\n".join(parts) + "\n"


def write_report(records: list[dict], out: Path, records_dir: Path | None = None) -> Path:
    """Write the markdown report, and a snapshot of the records it was built from into ``records_dir``."""
    text = render(records)
    if records_dir is not None:
        snapshot_records(records, records_dir)
    write_text_atomic(out, text)
    return out


def snapshot_records(records: list[dict], records_dir: Path) -> None:
    """Copy the records beside the report, replacing any earlier snapshot, so every number has its source."""
    if records_dir.exists():
        shutil.rmtree(records_dir)
    for record in records:
        write_json_atomic(record_path(records_dir, record["image"], record["seed"]), record)
