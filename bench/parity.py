"""Two runs of the same protocol side by side (e.g. fast path vs reference path), per image."""

from __future__ import annotations

import pandas as pd

from bench.check import per_image_psnr
from bench.config import execution_path
from bench.data import load_images
from bench.report import commit_labels, config_diff, shared_config


def median_ms(records: list[dict], image: str) -> float:
    return float(pd.Series([r["timing"]["median_ms_per_iter"] for r in records if r["image"] == image]).median())


def side_by_side(a: list[dict], b: list[dict], label_a: str, label_b: str) -> str:
    """Markdown: per image, PSNR of each run, their difference, ms/iter of each and the speed-up of a over b."""
    psnr_a, psnr_b = per_image_psnr(a), per_image_psnr(b)
    rows = []
    for key, info in load_images().items():
        if key not in psnr_a or key not in psnr_b:
            continue
        ms_a, ms_b = median_ms(a, key), median_ms(b, key)
        rows.append(
            {
                "Image": info.name,
                f"PSNR {label_a}": f"{psnr_a[key]:.2f}",
                f"PSNR {label_b}": f"{psnr_b[key]:.2f}",
                "Δ PSNR": f"{psnr_a[key] - psnr_b[key]:+.2f}",
                f"ms/iter {label_a}": f"{ms_a:.1f}",
                f"ms/iter {label_b}": f"{ms_b:.1f}",
                "Speed-up": f"{ms_b / ms_a:.2f}x",
            }
        )
    table = pd.DataFrame(rows)
    deltas = [psnr_a[k] - psnr_b[k] for k in psnr_a if k in psnr_b]
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
        f"- Mean Δ PSNR {sum(deltas) / len(deltas):+.2f} dB, largest |Δ| {max(abs(d) for d in deltas):.2f} dB over {len(deltas)} images",
    ]
    markdown = table.to_markdown(index=False, disable_numparse=True, colalign=["left"] + ["right"] * 6)
    return "\n".join(header) + "\n\n" + markdown + "\n"
