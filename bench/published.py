"""The authors' published outputs scored at full size with our PSNR, next to the Table 1 values.

No training: this checks the PSNR convention (full image, raw output, data range 1) against the
numbers the paper printed. A gap here would be a metric or data problem, not a reproduction gap.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import torch

from bench.data import load_files, load_image, load_images
from bench.plan import PUBLISHED
from bench.provenance import provenance
from bench.records import write_json_atomic, write_text_atomic
from dip.metrics import psnr

TABLE_1 = {"deep_prior": "dip_paper", "papyan": "papyan"}  # published file kind -> ImageInfo field


def score_published(data_dir: Path) -> dict:
    """A record: per image, our PSNR of each published output against the ground truth, full size."""
    files = load_files()
    rows = []
    for info in load_images().values():
        truth = load_image(info, "GT", data_dir)
        row = {"image": info.key, "name": info.name, "size": [info.height, info.width]}
        for kind in PUBLISHED:
            row[f"{kind}_psnr"] = psnr(truth, load_image(info, kind, data_dir))
            row[f"{kind}_table1"] = getattr(info, TABLE_1[kind])
            row[f"{kind}_sha256"] = files[(info.stem, kind)].sha256
        rows.append(row)
    return {"what": "published outputs vs ground truth, full images, PSNR data range 1", "rows": rows,
            "provenance": provenance(torch.device("cpu"))}


def quantisation_loss_db(psnr_db: float) -> float:
    """PSNR lost when an output at ``psnr_db`` is rounded to 8 bits (independent uniform rounding error)."""
    mse = 10 ** (-psnr_db / 10)
    return 10 * math.log10(1 + (1 / 255) ** 2 / 12 / mse)


def render_published(record: dict) -> str:
    frame = pd.DataFrame(record["rows"])
    table = pd.DataFrame({"Image": frame["name"], "Size": [f"{w}x{h}" for h, w in frame["size"]]})
    means = {"Image": "**Mean**", "Size": ""}
    deltas = {}
    for kind, title in (("deep_prior", "DIP"), ("papyan", "Papyan et al.")):
        ours, table1 = frame[f"{kind}_psnr"], frame[f"{kind}_table1"]
        deltas[kind] = ours - table1
        table[f"{title}: Table 1"] = table1.map("{:.2f}".format)
        table[f"{title}: ours"] = ours.map("{:.2f}".format)
        table[f"{title}: Δ"] = deltas[kind].map("{:+.2f}".format)
        means |= {f"{title}: Table 1": f"{table1.mean():.2f}", f"{title}: ours": f"{ours.mean():.2f}",
                  f"{title}: Δ": f"{deltas[kind].mean():+.2f}"}
    table = pd.concat([table, pd.DataFrame([means])], ignore_index=True)
    prov = record["provenance"]
    dip_gap = deltas["deep_prior"].abs()
    worst = frame.loc[dip_gap.idxmax()]
    return "\n\n".join([
        "# Published outputs scored here, against Table 1",
        f"- The authors' published restorations (`*_deep_prior.png`, `*_papyan.png`, sha256 in the record) against "
        f"the ground truth, full images, our PSNR (raw output, data range 1). No training.\n"
        f"- Commit {(prov['commit'] or 'unknown')[:12]}{'-dirty' if prov['dirty'] else ''}, {prov['timestamp']}; "
        f"record: `published/record.json`",
        table.to_markdown(index=False, disable_numparse=True, colalign=["left", "left"] + ["right"] * 6),
        f"Largest DIP gap: {worst['name']} ({worst['deep_prior_psnr'] - worst['deep_prior_table1']:+.2f} dB). "
        f"The published PNGs are 8-bit; rounding a float output to 256 levels adds an MSE of (1/255)²/12, which "
        f"at {worst['name']}'s Table 1 value would cost {quantisation_loss_db(worst['deep_prior_table1']):.2f} dB: "
        "that much of the gap is the file format, the rest is not explained here.",
    ]) + "\n"


def write_published(record: dict, out: Path) -> Path:
    write_json_atomic(out.parent / out.stem / "record.json", record)
    write_text_atomic(out, render_published(record))
    return out

