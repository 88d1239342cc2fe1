"""Markdown tables of a run: the main table against Table 1, the second table of estimates and
reference rows, and the report's header. Inputs are bench.analysis.summary's frames."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bench.analysis.summary import (
    ESTIMATE_COLUMNS,
    EXTRA_COLUMNS,
    aligned,
    commit_labels,
    execution_label,
    is_paper_budget,
    method_label,
    recipe_differences,
)
from bench.record import Record, RecordConfig
from dip.execution import execution_path


def fmt(value: float, spec: str = "{:.2f}") -> str:
    return "—" if value is None or np.isnan(value) else spec.format(value)


def extra_table(summary: pd.DataFrame, others: dict[str, pd.DataFrame] | None = None) -> str | None:
    """Second table: oracle early stop, EMA, reference rows computed here, and other runs (mean ± std
    over their seeds; ``others`` maps a label to that run's summary). None for records that predate it."""
    if not set(EXTRA_COLUMNS) <= set(summary.columns) or summary[list(ESTIMATE_COLUMNS)].isna().any().any():
        return None
    table = pd.DataFrame({"Image": summary["image"]})
    for key, title in EXTRA_COLUMNS.items():
        table[title] = summary[key].map(fmt)
    table.insert(2, "at iter.", summary["best_iteration"].map("{:.0f}".format))
    mean_row = {"Image": "**Mean**", "at iter.": "", **{t: fmt(summary[k].mean()) for k, t in EXTRA_COLUMNS.items()}}
    for label, other in (others or {}).items():
        joined = aligned(summary, other)
        table[label] = [fmt(m) if np.isnan(sd) or np.isnan(m) else psnr_cell(m, sd) for m, sd in zip(joined["psnr_mean"], joined["psnr_std"])]
        mean_row[label] = fmt(joined["psnr_mean"].mean())
    table = pd.concat([table, pd.DataFrame([mean_row])], ignore_index=True)
    return table.to_markdown(index=False, disable_numparse=True, colalign=["left"] + ["right"] * (len(table.columns) - 1))


def psnr_cell(mean: float, std: float) -> str:
    return f"{mean:.2f}" if np.isnan(std) else f"{mean:.2f} ± {std:.2f}"


def markdown_table(summary: pd.DataFrame, table_means: pd.Series | None = None, faulty: frozenset[str] = frozenset()) -> str:
    """The main table; ``table_means`` (:func:`seed_means`) gives the mean row its spread over seeds;
    the images named in ``faulty`` (a failed seed or an undone non-finite loss) are marked †."""
    table = pd.DataFrame(
        {
            "Image": [f"{name} †" if name in faulty else name for name in summary["image"]],
            "Size": summary["size"],
            "Papyan et al.": summary["papyan"].map(fmt),
            "DIP (Table 1)": summary["dip_paper"].map(fmt),
            "Seed repro.": summary["seed_repro"].map(fmt),
            "This run": [psnr_cell(m, s) for m, s in zip(summary["psnr_mean"], summary["psnr_std"])],
            "n": summary["n"].astype(str),
            "Δ vs Table 1": summary["delta"].map(lambda d: fmt(d, "{:+.2f}")),
            "Paste-back": summary["psnr_pasted"].map("{:.2f}".format),
            "ms/iter": summary["ms_per_iter"].map("{:.1f}".format),
            "Backtracks": summary["backtracks"].astype(str),
            "Device": summary["device"],
        }
    )
    if summary["execution"].nunique() > 1:  # cells resolved on different machines: say how each ran
        table.insert(len(table.columns) - 1, "Execution", summary["execution"])
    mean_row = {
        "Image": "**Mean**",
        "Size": "",
        "Papyan et al.": fmt(summary["papyan"].mean()),
        "DIP (Table 1)": fmt(summary["dip_paper"].mean()),
        "Seed repro.": fmt(summary["seed_repro"].mean()),
        "This run": f"{summary['psnr_mean'].mean():.2f}",
        "n": str(int(summary["n"].sum())),
        "Δ vs Table 1": fmt(summary["delta"].mean(), "{:+.2f}"),
        "Paste-back": f"{summary['psnr_pasted'].mean():.2f}",
        "ms/iter": "",
        "Backtracks": str(int(summary["backtracks"].sum())),
        "Device": "",
    } | ({"Execution": ""} if "Execution" in table.columns else {})
    if table_means is not None and len(table_means) > 1:  # the table mean of each seed: their spread
        mean_row["This run"] = psnr_cell(float(table_means.mean()), float(table_means.std(ddof=1)))
    if summary["n"].max() > 1:  # several seeds: show their range next to n
        table.insert(7, "Min to max", [f"{lo:.2f} to {hi:.2f}" for lo, hi in zip(summary["psnr_min"], summary["psnr_max"])])
        mean_row["Min to max"] = f"{summary['psnr_min'].min():.2f} to {summary['psnr_max'].max():.2f}"
    table = pd.concat([table, pd.DataFrame([mean_row])], ignore_index=True)
    text_tail = 2 if "Execution" in table.columns else 1  # Execution and Device: words, left-aligned
    colalign = ["left", "left"] + ["right"] * (len(table.columns) - 2 - text_tail) + ["left"] * text_tail
    return table.to_markdown(index=False, disable_numparse=True, colalign=colalign)


def _one_or_per_cell(values: dict, column: str) -> str:
    """The one value all cells share, or where each cell's is shown (a campaign across machines)."""
    return next(iter(values)) if len(values) == 1 else f"per cell, see the {column} column: {'; '.join(values)}"


def header(records: list[Record], config: RecordConfig, show_method: bool = False) -> str:
    """The report's opening lines; the method's line where it is not the built-in one, or ``show_method``
    (the report holds several methods)."""
    recipe = config.recipe
    prov = records[0].provenance
    executions = dict.fromkeys(execution_label(r.config.recipe.to_dict()) for r in records)
    devices = dict.fromkeys(r.provenance.device_name for r in records)
    commits = commit_labels(records)
    # a cell runs from its "started" (kept across resumes; absent in older records) to its record's timestamp
    starts = sorted(r.started or r.provenance.timestamp for r in records)
    ends = sorted(r.provenance.timestamp for r in records)
    seeds_per_image = {key: sum(1 for r in records if r.image == key) for key in dict.fromkeys(r.image for r in records)}
    mask = config.mask + (f" (keep {config.keep})" if config.mask == "bernoulli" else " (published masks)")
    recipe_name = config.recipe_name
    builtin = config.method.is_builtin
    title = f"# dip-bench: profile `{config.profile}`" + ("" if recipe_name == "paper" else f", recipe `{recipe_name}`")
    lines = [
        title + ("" if builtin else f", method `{config.method.name}`"),
        "",
        *([] if builtin and not show_method else [f"- Method: {method_line(config)}"]),
        f"- Recipe: {recipe_name}; iterations: {recipe.iterations}; lr {recipe.lr}; backtracking "
        f"{'on' if recipe.backtracking else 'off'}; mask {mask}",
        f"- Path: {execution_path(recipe.to_dict())} ({_one_or_per_cell(executions, 'Execution')})"
        + (f"; up to {config.cells_per_gpu} cells trained at once as one batched model (--cells-per-gpu): "
           f"a cell's ms/iter is its batch's step" if config.cells_per_gpu > 1 else ""),
        f"- Device: {_one_or_per_cell(devices, 'Device')} ({config.device}), torch "
        f"{', '.join(sorted({r.provenance.torch for r in records}))}, {prov.torch_threads} threads",
        f"- Commit: {', '.join(commits)}; runs from {starts[0]} to {ends[-1]}",
        f"- Images: {len(seeds_per_image)}, seeds per image: {_span(seeds_per_image.values())}",
    ]
    recipe_differs = recipe_differences(config)
    if not is_paper_budget(config):
        lines += [
            "",
            f"> **Not comparable to Table 1.** This run uses "
            f"{'centre crops of ' + str(config.crop) + ' px' if config.crop else 'full images'} and "
            f"{recipe.iterations} iterations instead of the paper's full images and 11000 iterations; "
            f"the Table 1 columns are shown for orientation only, and Δ is not a reproduction gap."
            + (f" Its protocol also differs from the paper's in: {', '.join(recipe_differs)}." if recipe_differs else ""),
        ]
    elif recipe_differs:
        lines += ["", f"> **Not comparable to Table 1.** This run's protocol differs from the paper's in: "
                      f"{', '.join(recipe_differs)}; Δ is the effect of that change, not a reproduction gap."]
    return "\n".join(lines)


def method_line(config: RecordConfig) -> str:
    """The method and its hyper-parameters, e.g. 'convdecoder (channels 64, in_size 4, ...)'."""
    fields = ", ".join(f"{k} {v}" for k, v in config.method.fields.items())
    return method_label(config) + (f" ({fields})" if fields else "")


def _span(counts) -> str:
    lo, hi = min(counts), max(counts)
    return str(lo) if lo == hi else f"{lo} to {hi}"




def coverage_section(rows: list[dict]) -> list[str]:
    """The "Coverage" section of a paper-protocol report from :func:`bench.coverage.coverage`'s rows:
    which of Table 1's cells are done, which are under way (and how far), which are missing, and what
    each unfinished one still costs."""
    done = sum(r["state"] == "done" for r in rows)
    left = [r["hours_left"] for r in rows if r["hours_left"] is not None]
    table = pd.DataFrame([{
        "Image": r["name"],
        "Seed": r["seed"],
        "Size": r["size"],
        "State": r["state"],
        "Iterations done": "" if r["iteration"] is None else
        (str(r["iteration"]) if r["state"] == "done" else f"{r['iteration']} (last checkpoint)"),
        "PSNR": "" if r["psnr"] is None else f"{r['psnr']:.2f}",
        "Hours left": "" if r["hours_left"] is None else f"{r['hours_left']:.1f}",
        "Cost basis": r["basis"],
    } for r in rows])
    summary = (f"{done} of {len(rows)} cells done" + (f"; the others need about {sum(left):.0f} h more on the "
               f"machine that ran the latest finished cell, one cell at a time" if left else "") + ".")
    return ["## Coverage of Table 1", summary,
            table.to_markdown(index=False, disable_numparse=True, colalign=["left", "right", "left", "left",
                                                                            "right", "right", "right", "left"])]
