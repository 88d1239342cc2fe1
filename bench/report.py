"""Markdown comparison with Table 1, built from stored records only (never from a live run)."""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bench.config import execution_path
from bench.data import load_images
from bench.errors import BenchError
from bench.records import record_path, write_json_atomic, write_text_atomic

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


def _fmt(value: float, spec: str = "{:.2f}") -> str:
    return "—" if value is None or np.isnan(value) else spec.format(value)


def extra_table(summary: pd.DataFrame, others: dict[str, pd.DataFrame] | None = None) -> str | None:
    """Second table: oracle early stop, EMA, reference rows computed here, and other runs (mean ± std
    over their seeds; ``others`` maps a label to that run's summary). None for records that predate it."""
    if not set(EXTRA_COLUMNS) <= set(summary.columns) or summary[list(ESTIMATE_COLUMNS)].isna().any().any():
        return None
    table = pd.DataFrame({"Image": summary["image"]})
    for key, title in EXTRA_COLUMNS.items():
        table[title] = summary[key].map(_fmt)
    table.insert(2, "at iter.", summary["best_iteration"].map("{:.0f}".format))
    mean_row = {"Image": "**Mean**", "at iter.": "", **{t: _fmt(summary[k].mean()) for k, t in EXTRA_COLUMNS.items()}}
    for label, other in (others or {}).items():
        joined = aligned(summary, other)
        table[label] = [_fmt(m) if np.isnan(sd) or np.isnan(m) else psnr_cell(m, sd) for m, sd in zip(joined["psnr_mean"], joined["psnr_std"])]
        mean_row[label] = _fmt(joined["psnr_mean"].mean())
    table = pd.concat([table, pd.DataFrame([mean_row])], ignore_index=True)
    return table.to_markdown(index=False, disable_numparse=True, colalign=["left"] + ["right"] * (len(table.columns) - 1))


EXTRA_LEGEND = """*Best (oracle stop)*: the highest PSNR seen at an evaluation point during training and the (median)
iteration where it was reached: what stopping at the right moment would give, with the ground truth
as oracle. *EMA of output*: PSNR of the exponential moving average (weight 0.99) of the training
outputs. *Interp.*: SciPy's nearest / linear interpolation of the missing pixels from the same mask, the
floor any prior must beat. *DIP published*, *Papyan published*: the authors' published outputs (made
with their own masks) scored here on the same crop with the same PSNR. Further columns: other runs of
the same images, crops, masks and iterations with a different recipe (mean ± std over their seeds)."""


def _size(record: pd.Series) -> str:
    h, w = record["size"]
    full_h, full_w = record["full_size"]
    return f"{w}x{h}" if (h, w) == (full_h, full_w) else f"{w}x{h} crop of {full_w}x{full_h}"


def psnr_cell(mean: float, std: float) -> str:
    return f"{mean:.2f}" if np.isnan(std) else f"{mean:.2f} ± {std:.2f}"


def seed_means(records: list[dict]) -> pd.Series:
    """Mean PSNR over the images, per seed, for the seeds every image was run with: the table's
    mean as each seed alone would have reported it."""
    frame = pd.DataFrame([{"image": r["image"], "seed": r["seed"], "psnr": r["psnr"]} for r in records])
    per_seed = frame.pivot_table(index="seed", columns="image", values="psnr")
    return per_seed.dropna().mean(axis=1)


def markdown_table(summary: pd.DataFrame, table_means: pd.Series | None = None, faulty: frozenset[str] = frozenset()) -> str:
    """The main table; ``table_means`` (:func:`seed_means`) gives the mean row its spread over seeds;
    the images named in ``faulty`` (a failed seed or an undone non-finite loss) are marked †."""
    table = pd.DataFrame(
        {
            "Image": [f"{name} †" if name in faulty else name for name in summary["image"]],
            "Size": summary["size"],
            "Papyan et al.": summary["papyan"].map(_fmt),
            "DIP (Table 1)": summary["dip_paper"].map(_fmt),
            "Seed repro.": summary["seed_repro"].map(_fmt),
            "This run": [psnr_cell(m, s) for m, s in zip(summary["psnr_mean"], summary["psnr_std"])],
            "n": summary["n"].astype(str),
            "Δ vs Table 1": summary["delta"].map(lambda d: _fmt(d, "{:+.2f}")),
            "Paste-back": summary["psnr_pasted"].map("{:.2f}".format),
            "ms/iter": summary["ms_per_iter"].map("{:.1f}".format),
            "Backtracks": summary["backtracks"].astype(str),
            "Device": summary["device"],
        }
    )
    mean_row = {
        "Image": "**Mean**",
        "Size": "",
        "Papyan et al.": _fmt(summary["papyan"].mean()),
        "DIP (Table 1)": _fmt(summary["dip_paper"].mean()),
        "Seed repro.": _fmt(summary["seed_repro"].mean()),
        "This run": f"{summary['psnr_mean'].mean():.2f}",
        "n": str(int(summary["n"].sum())),
        "Δ vs Table 1": _fmt(summary["delta"].mean(), "{:+.2f}"),
        "Paste-back": f"{summary['psnr_pasted'].mean():.2f}",
        "ms/iter": "",
        "Backtracks": str(int(summary["backtracks"].sum())),
        "Device": "",
    }
    if table_means is not None and len(table_means) > 1:  # the table mean of each seed: their spread
        mean_row["This run"] = psnr_cell(float(table_means.mean()), float(table_means.std(ddof=1)))
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
    recipe_name = config.get("recipe_name", "paper")
    lines = [
        f"# dip-bench: profile `{config['profile']}`" + ("" if recipe_name == "paper" else f", recipe `{recipe_name}`"),
        "",
        f"- Recipe: {recipe_name}; iterations: {recipe['iterations']}; lr {recipe['lr']}; backtracking "
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
and, with several, their *min to max*. Mean row: the mean over images, ± the sample std over seeds of
each seed's mean over the images (the spread of the table's headline number); n and min to max over
all records.
*Δ*: this run's mean minus Table 1's DIP value. *Paste-back*: PSNR after the observed pixels are
copied into the output. *ms/iter*: median time of one training iteration (warm-up excluded).
*Backtracks*: times the parameters were restored after a >5 dB drop, summed over seeds."""


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


@dataclass(frozen=True)
class Prepared:
    """What a report is built from, computed once: the run's shared configuration and per-image
    summary, and for each other run (label -> records) its summary and the fields it differs in."""

    records: list[dict]
    config: dict
    summary: pd.DataFrame
    others: dict[str, list[dict]]
    other_summaries: dict[str, pd.DataFrame]
    differing: dict[str, list[str]]
    failures: list[dict]  # failed records of this run's configuration


def prepare(records: list[dict], others: dict[str, list[dict]] | None = None, failures: list[dict] | None = None) -> Prepared:
    """Check the records (one configuration; others comparable) before anything is computed or written.
    ``failures``: failed records; those of another configuration than the records' are left out."""
    others = others or {}
    config = shared_config(records)
    differing = {label: check_comparable(config, shared_config(recs), label) for label, recs in others.items()}
    mine = [f for f in failures or [] if shared_config([f]) == config]
    return Prepared(records, config, summarise(records), others,
                    {label: summarise(recs) for label, recs in others.items()}, differing, mine)


def render(records: list[dict], others: dict[str, list[dict]] | None = None, sections: tuple[str, ...] = (),
           failures: list[dict] | None = None) -> str:
    """The report: header, main table, second table with reference rows and ``others`` (label ->
    records of another run of the same protocol with a different recipe), then ``sections``;
    cells that diverged (``failures``, or non-finite losses undone) are marked † and listed."""
    return render_prepared(prepare(records, others, failures), sections)


def fault_lines(records: list[dict], failures: list[dict]) -> list[str]:
    """One line per cell that diverged: failed (with its reason), or with non-finite losses undone."""
    lines = [f"- {r['name']} seed {r['seed']}: **failed**, no result: {r['reason']} (--on-divergence {r['on_divergence']})"
             for r in failures]
    for r in records:
        if r.get("divergences"):
            lines.append(f"- {r['name']} seed {r['seed']}: non-finite loss at iteration{'s' if len(r['divergences']) > 1 else ''} "
                         f"{', '.join(map(str, r['divergences']))}, each undone by restoring the last good state "
                         f"({len(r['divergences'])} restore{'s' if len(r['divergences']) > 1 else ''}); the result is kept")
    return lines


def render_prepared(prep: Prepared, sections: tuple[str, ...] = ()) -> str:
    records = prep.records
    faults = fault_lines(records, prep.failures)
    faulty = frozenset(r["name"] for r in prep.failures) | frozenset(r["name"] for r in records if r.get("divergences"))
    parts = [header(records, prep.config), markdown_table(prep.summary, seed_means(records), faulty), LEGEND]
    if faults:
        parts += ["## † Diverged cells", "Images marked † in the table had a seed whose loss became non-finite. "
                  "A failed seed has no result (its n is lower); an undone one restored the last good state and went on.",
                  "\n".join(faults)]
    extra = extra_table(prep.summary, prep.other_summaries)
    if extra is not None:
        parts += ["## Second estimates and reference rows computed here", extra, EXTRA_LEGEND]
        for label, recs in prep.others.items():
            seeds = sorted({r["seed"] for r in recs})
            parts.append(
                f"*{label}*: {len(recs)} records (seeds {', '.join(map(str, seeds))}), commit "
                f"{', '.join(commit_labels(recs))}; its configuration differs from this run's only in: "
                f"{', '.join(prep.differing[label]) or 'nothing'}."
            )
    return "\n\n".join(parts + list(sections)) + "\n"


def aligned(summary: pd.DataFrame, other: pd.DataFrame) -> pd.DataFrame:
    """``other``'s per-image summary in the row order of ``summary`` (NaN for images it lacks)."""
    return summary[["image"]].merge(other, on="image", how="left")


def write_report(
    records: list[dict],
    out: Path,
    records_dir: Path | None = None,
    *,
    others: dict[str, list[dict]] | None = None,
    results_dir: Path | None = None,
    failures: list[dict] | None = None,
) -> Path:
    """Write the markdown report with its plots (in ``out``'s stem directory: reports/quick.md ->
    reports/quick/), links to the panels in ``results_dir`` that exist, and a snapshot of the records
    it was built from (and of ``others``) into ``records_dir``."""
    from bench.figures import plot_curves, plot_vs_reference  # matplotlib: only here

    prep = prepare(records, others, failures)
    figures_dir = out.parent / out.stem
    sections = []
    if all("curve" in r for r in records):  # records written before curves existed get no plots
        curves = plot_curves(records, figures_dir / "psnr_curves.png")
        summary = prep.summary.copy()
        for label, other in prep.other_summaries.items():
            summary[label] = aligned(summary, other)["psnr_mean"].to_numpy()
        rows = dict(REFERENCE_ROW_COLUMNS) | {"psnr_ema": "EMA of output"} | {label: label for label in prep.others}
        versus = plot_vs_reference(summary, rows, figures_dir / "psnr_vs_reference.png")
        sections += [
            "## Plots",
            f"![PSNR against iteration per image]({relative_link(curves, out.parent)})",
            "PSNR against iteration per image: mean over seeds of the raw output (band: min to max over seeds), "
            "of its paste-back PSNR (from raw PSNR and loss: MSE_pasted = MSE_raw - loss), of the EMA of the "
            "output, and the linear-interpolation floor.",
            f"![Per-image PSNR against the reference rows]({relative_link(versus, out.parent)})",
            "Per-image PSNR of this run (mean, error bar: sample std over seeds) against the reference rows.",
        ]
    if results_dir is not None:
        sections += panel_links(records, results_dir, out.parent)
    text = render_prepared(prep, tuple(sections))
    if records_dir is not None:
        snapshot_records(records, records_dir)
        for label, recs in prep.others.items():
            snapshot_records(recs, records_dir.with_name(f"records-{slug(label)}"))
    write_text_atomic(out, text)
    return out


def relative_link(target: Path, start: Path) -> str:
    """A markdown link path from the directory ``start`` to ``target``, with forward slashes."""
    return Path(os.path.relpath(target, start)).as_posix()


def slug(label: str) -> str:
    return "-".join("".join(c if c.isalnum() else " " for c in label.lower()).split())


def panel_links(records: list[dict], results_dir: Path, start: Path) -> list[str]:
    """A "Panels" section linking each record's panel PNG, where it exists (the results directory is
    git-ignored: panels show the test images, which are downloaded, not redistributed)."""
    lines = []
    for key, name, _ in image_rows(records):
        links = [
            f"[seed {r['seed']}]({relative_link(results_dir / r['panel'], start)})"
            for r in sorted(records, key=lambda r: r["seed"])
            if r["image"] == key and r.get("panel") and (results_dir / r["panel"]).is_file()
        ]
        if links:
            lines.append(f"- {name}: {', '.join(links)}")
    if not lines:
        return []
    return ["## Panels (ground truth | masked input | restored | error x4; in the run directory, not committed)", "\n".join(lines)]


def snapshot_records(records: list[dict], records_dir: Path) -> None:
    """Copy the records beside the report, replacing any earlier snapshot, so every number has its source."""
    if records_dir.exists():
        shutil.rmtree(records_dir)
    for record in records:
        write_json_atomic(record_path(records_dir, record["image"], record["seed"]), record)
