"""Two runs of the same protocol side by side (e.g. fast path vs reference path), per image."""

from __future__ import annotations

import pandas as pd

from bench.analysis.summary import commit_labels, config_diff, shared_config, summarise
from dip.execution import execution_path


def side_by_side(a: list[dict], b: list[dict], label_a: str, label_b: str) -> str:
    """Markdown: per image, PSNR of each run, their difference, ms/iter of each and the speed-up of a over b."""
    # The report's per-image summary (mean PSNR over seeds, median ms/iter), joined in Table 1's order.
    both = summarise(a).merge(summarise(b), on="image", suffixes=("_a", "_b"))
    deltas = both["psnr_mean_a"] - both["psnr_mean_b"]
    table = pd.DataFrame(
        {
            "Image": both["image"],
            f"PSNR {label_a}": both["psnr_mean_a"].map("{:.2f}".format),
            f"PSNR {label_b}": both["psnr_mean_b"].map("{:.2f}".format),
            "Δ PSNR": deltas.map("{:+.2f}".format),
            f"ms/iter {label_a}": both["ms_per_iter_a"].map("{:.1f}".format),
            f"ms/iter {label_b}": both["ms_per_iter_b"].map("{:.1f}".format),
            "Speed-up": (both["ms_per_iter_b"] / both["ms_per_iter_a"]).map("{:.2f}x".format),
        }
    )
    config_a, config_b = shared_config(a), shared_config(b)
    recipe_a, recipe_b = config_a["recipe"], config_b["recipe"]
    commits = commit_labels(a + b)
    header = [
        f"# {label_a} vs {label_b}: profile `{config_a['profile']}`",
        "",
        f"- {label_a}: path {execution_path(recipe_a)}, {recipe_a['precision']}, channels_last {recipe_a['channels_last']}, fused Adam {recipe_a['fused_adam']}",
        f"- {label_b}: path {execution_path(recipe_b)}, {recipe_b['precision']}, channels_last {recipe_b['channels_last']}, fused Adam {recipe_b['fused_adam']}",
        f"- Configurations differ only in: {', '.join(config_diff(config_a, config_b)) or 'nothing'}",
        f"- Device: {a[0]['provenance']['device_name']}; commits: {', '.join(commits)}",
        f"- Mean Δ PSNR {deltas.mean():+.2f} dB, largest |Δ| {deltas.abs().max():.2f} dB over {len(deltas)} images",
    ]
    markdown = table.to_markdown(index=False, disable_numparse=True, colalign=["left"] + ["right"] * 6)
    return "\n".join(header) + "\n\n" + markdown + "\n"
