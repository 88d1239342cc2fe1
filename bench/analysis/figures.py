"""The report's plots (matplotlib, no display). They hold numbers, not pixels, and are committed
beside the report; the per-cell pictures are :mod:`bench.panels`."""

from __future__ import annotations

import dataclasses
import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: CI and clusters have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bench.record import Record  # noqa: E402
from bench.records import write_bytes_atomic  # noqa: E402
from dip.metrics import psnr_pasted_from_loss  # noqa: E402


def _save(figure: plt.Figure, path: Path) -> Path:
    buffer = io.BytesIO()
    # No timestamp or software version in the file: the same numbers give the same bytes.
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    plt.close(figure)
    write_bytes_atomic(path, buffer.getvalue())
    return path


def _grid(n: int, columns: int = 4) -> tuple[plt.Figure, np.ndarray]:
    rows = math.ceil(n / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.4 * rows), squeeze=False, sharex=True)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return figure, axes.flat


def plot_curves(records: list[Record], path: Path) -> Path:
    """PSNR against iteration per image: mean over seeds of the raw output (band: min to max), its
    paste-back PSNR (derived from raw PSNR and loss, :func:`dip.metrics.psnr_pasted_from_loss`) and its EMA."""
    names = dict.fromkeys(r.label for r in records)
    figure, axes = _grid(len(names))
    for ax, name in zip(axes, names):
        mine = [r for r in records if r.label == name]
        curves = pd.concat([pd.DataFrame([dataclasses.asdict(p) for p in r.curve]).assign(seed=r.seed) for r in mine])
        curves["psnr_pasted"] = [psnr_pasted_from_loss(p, loss) for p, loss in zip(curves["psnr"], curves["loss"])]
        by_iter = curves.groupby("iteration")
        raw = by_iter["psnr"]
        ax.fill_between(raw.min().index, raw.min(), raw.max(), alpha=0.25, color="C0", linewidth=0)
        ax.plot(raw.mean().index, raw.mean(), color="C0", label="raw output")
        ax.plot(by_iter["psnr_pasted"].mean().index, by_iter["psnr_pasted"].mean(), color="C2", linewidth=1, label="paste-back")
        if curves["psnr_ema"].notna().all():
            ax.plot(by_iter["psnr_ema"].mean().index, by_iter["psnr_ema"].mean(), color="C1", linestyle="--", label="EMA")
        interp = [r.reference_psnr.interp_linear for r in mine if r.reference_psnr is not None]
        interp = [v for v in interp if v is not None]  # None: an exact (infinite-PSNR) interpolation
        if interp:
            ax.axhline(np.mean(interp), color="0.4", linestyle=":", label="interp. linear")
        ax.set_title(f"{name} (n={len(mine)})", fontsize=9)
        ax.tick_params(labelsize=7)
        settled = raw.mean().iloc[len(raw.mean()) // 10 :]  # the first steps' very low PSNRs would squash the plot
        floor = min([settled.min()] + ([np.mean(interp)] if interp else []))
        ax.set_ylim(bottom=max(0.0, floor - 3))
    axes[0].legend(fontsize=7, loc="lower right")
    figure.supxlabel("iteration", fontsize=9)
    figure.supylabel("PSNR (dB)", fontsize=9)
    figure.tight_layout()
    return _save(figure, path)


def plot_vs_reference(summary: pd.DataFrame, columns: dict[str, str], path: Path) -> Path:
    """Per-image PSNR of this run (mean, error bar: sample std over seeds) against reference rows.

    ``columns`` maps columns of the report's summary to legend labels (the rows to draw).
    """
    x = np.arange(len(summary))
    figure, ax = plt.subplots(figsize=(10, 4))
    markers = "sD^vx+*"
    for k, (column, label) in enumerate(columns.items()):
        if column in summary and summary[column].notna().any():
            ax.plot(x, summary[column], linestyle="none", marker=markers[k % len(markers)], label=label, alpha=0.8)
    std = summary["psnr_std"].fillna(0.0)
    ax.errorbar(x, summary["psnr_mean"], yerr=std, fmt="o", color="k", capsize=3, label="this run (mean ± std)")
    ax.set_xticks(x, summary["image"], rotation=30, fontsize=8)
    ax.set_ylabel("PSNR (dB)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=3, loc="best")
    figure.tight_layout()
    return _save(figure, path)
