"""Two runs of the same protocol side by side (fast path vs reference path, one method against another), per image."""

from __future__ import annotations

import pandas as pd

from bench.analysis.summary import commit_labels, config_diff, method_label, shared_config, summarise
from bench.analysis.tables import psnr_cell
from bench.record import Record, RecordConfig
from dip.execution import execution_path


def _run_line(label: str, config: RecordConfig) -> str:
    recipe = config.recipe
    return (f"- {label}: method {method_label(config)}; path {execution_path(recipe.to_dict())}, {recipe.precision}, "
            f"channels_last {recipe.channels_last}, fused Adam {recipe.fused_adam}")


def side_by_side(a: list[Record], b: list[Record], label_a: str, label_b: str) -> str:
    """Markdown: per image, PSNR of each run (mean ± sample std over seeds), their difference, ms/iter of
    each and the speed-up of a over b."""
    # The report's per-image summary (mean PSNR over seeds, median ms/iter), joined in Table 1's order.
    both = summarise(a).merge(summarise(b), on="image", suffixes=("_a", "_b"))
    deltas = both["psnr_mean_a"] - both["psnr_mean_b"]
    table = pd.DataFrame(
        {
            "Image": both["image"],
            f"PSNR {label_a}": [psnr_cell(m, s) for m, s in zip(both["psnr_mean_a"], both["psnr_std_a"])],
            f"PSNR {label_b}": [psnr_cell(m, s) for m, s in zip(both["psnr_mean_b"], both["psnr_std_b"])],
            "Δ PSNR": deltas.map("{:+.2f}".format),
            f"ms/iter {label_a}": both["ms_per_iter_a"].map("{:.1f}".format),
            f"ms/iter {label_b}": both["ms_per_iter_b"].map("{:.1f}".format),
            "Speed-up": (both["ms_per_iter_b"] / both["ms_per_iter_a"]).map("{:.2f}x".format),
        }
    )
    config_a, config_b = shared_config(a), shared_config(b)
    commits = commit_labels(a + b)
    header = [
        f"# {label_a} vs {label_b}: profile `{config_a.profile}`",
        "",
        _run_line(label_a, config_a),
        _run_line(label_b, config_b),
        f"- Configurations differ only in: {', '.join(config_diff(config_a.to_dict(), config_b.to_dict())) or 'nothing'}",
        f"- Device: {a[0].provenance.device_name}; commits: {', '.join(commits)}",
        f"- Mean Δ PSNR {deltas.mean():+.2f} dB, largest |Δ| {deltas.abs().max():.2f} dB over {len(deltas)} images",
        "- PSNR: mean ± sample std over seeds",
    ]
    markdown = table.to_markdown(index=False, disable_numparse=True, colalign=["left"] + ["right"] * 6)
    return "\n".join(header) + "\n\n" + markdown + "\n"
