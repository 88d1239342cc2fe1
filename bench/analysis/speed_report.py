"""reports/speed.md from a pytest-benchmark JSON file and an operator profile."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from bench.errors import BenchError
from bench.records import read_json

# The rows of the main table: the anchor (the authors' code, bench/authors.py) and the two paths.
TIMED = ("authors", "reference", "fast")


def _ms(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.1f}"


def _ratio(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}x"


def load_benchmarks(path: Path) -> dict:
    data = read_json(path, "benchmark file")
    if not data.get("benchmarks"):
        raise BenchError(f"{path} holds no benchmarks; run 'make speed'")
    return data


def speed_table(data: dict) -> pd.DataFrame:
    """One row per size: median ms/iter of each path (and of the authors' code where it was timed),
    the ratios, GFLOP/s of each."""
    rows: dict[int, dict] = {}
    for bench in data["benchmarks"]:
        info = bench["extra_info"]
        if info["path"] not in TIMED:
            continue  # opt-in variants: see variant_rows
        ms = bench["stats"]["median"] * 1e3
        row = rows.setdefault(info["size"], {"size": f"{info['size']}x{info['size']}"})
        row[f"{info['path']}_ms"] = ms
        row[f"{info['path']}_gflops"] = info["gflop_per_iter"] / (ms / 1e3)
        row[f"{info['path']}_rounds"] = bench["stats"]["rounds"]
        row[f"{info['path']}_how"] = (f"{info['precision']}, channels_last {info['channels_last']}, fused Adam {info['fused_adam']}"
                                      + (", Winograd 3x3 convolutions" if info.get("winograd") else "")
                                      + (", 1x1 convolutions as matmuls" if info.get("matmul_1x1") else "")
                                      + (", heap kept" if info.get("keep_heap") else ""))
    missing = [s for s, r in rows.items() if not {"reference_ms", "fast_ms"} <= r.keys()]
    if missing:
        raise BenchError(f"benchmark file lacks a reference or fast result at size {missing}")
    frame = pd.DataFrame([rows[s] for s in sorted(rows)])
    frame["ratio"] = frame["reference_ms"] / frame["fast_ms"]
    if "authors_ms" not in frame:
        frame["authors_ms"] = math.nan
    frame["fast_vs_authors"] = frame["authors_ms"] / frame["fast_ms"]
    frame["reference_vs_authors"] = frame["authors_ms"] / frame["reference_ms"]
    return frame


def variant_rows(data: dict, frame: pd.DataFrame) -> list[str]:
    """One line per opt-in variant (e.g. torch.compile): its median time against the fast path's."""
    fast_ms = dict(zip(frame["size"], frame["fast_ms"]))
    lines = []
    for bench in data["benchmarks"]:
        info = bench["extra_info"]
        if info["path"] in TIMED:
            continue
        size = f"{info['size']}x{info['size']}"
        ms = bench["stats"]["median"] * 1e3
        lines.append(
            f"- `{info['path']}` at {size}: {ms:.1f} ms/iter, {fast_ms[size] / ms:.2f}x the fast path's speed "
            f"(median of {bench['stats']['rounds']} rounds after 2 warm-up rounds, which include compilation)"
        )
    return lines


def markdown_speed(frame: pd.DataFrame) -> str:
    table = pd.DataFrame(
        {
            "Size": frame["size"],
            "Authors' code ms/iter": frame["authors_ms"].map(_ms),
            "Reference ms/iter": frame["reference_ms"].map(_ms),
            "Fast ms/iter": frame["fast_ms"].map(_ms),
            "Fast vs authors": frame["fast_vs_authors"].map(_ratio),
            "Fast vs reference": frame["ratio"].map(_ratio),
            "Reference vs authors": frame["reference_vs_authors"].map(_ratio),
            "Fast GFLOP/s": frame["fast_gflops"].map("{:.0f}".format),
            "Rounds": [f"{r}" for r in frame["fast_rounds"]],
        }
    )
    return table.to_markdown(index=False, disable_numparse=True, colalign=["left"] + ["right"] * 8)


def markdown_profile(rows: list[dict]) -> str:
    table = pd.DataFrame(
        {
            "Operator": [r["operator"] for r in rows],
            "ms/step": [f"{r['ms_per_step']:.1f}" for r in rows],
            "Share": [f"{100 * r['share']:.1f}%" for r in rows],
            "Calls/step": [f"{r['calls_per_step']:.0f}" for r in rows],
        }
    )
    return table.to_markdown(index=False, disable_numparse=True, colalign=["left", "right", "right", "right"])


def kind_label(data: dict) -> str:
    """The CPU kind of a benchmark file, with the instruction-set cap it ran under, if any."""
    info = data["benchmarks"][0]["extra_info"]
    caps = info.get("isa_caps") or {}
    kind = info.get("cpu_kind", "kind not recorded")
    return kind + (f"; capped: {', '.join(f'{k}={v}' for k, v in caps.items())}" if caps else "")


def kind_section(data: dict) -> list[str]:
    """One benchmark file's machine, commit and paths, then its table and opt-in variants."""
    frame = speed_table(data)
    machine = data.get("machine_info", {})
    commit = data.get("commit_info", {})
    cpu = machine.get("cpu", {})
    how = frame.iloc[0]
    lines = [
        f"- Machine: {cpu.get('brand_raw', machine.get('processor', 'unknown'))} ({kind_label(data)}), "
        f"{cpu.get('count', '?')} logical CPUs; {machine.get('node', '')}; Python {machine.get('python_version', '?')}",
        f"- Commit: {commit.get('id', 'unknown')[:12]}{'-dirty' if commit.get('dirty') else ''} ({commit.get('time', '')}); "
        f"measured {data.get('datetime', '')}",
        f"- Reference path: {how['reference_how']}. Fast path: {how['fast_how']}.",
        f"- Timing: {_timing(data)}",
        "",
        markdown_speed(frame),
    ]
    variants = variant_rows(data, frame)
    if variants:
        lines += ["", "Opt-in switches, kept off by default unless faster:", "", *variants]
    return lines


def _timing(data: dict) -> str:
    """How the file's cases were timed: each in a process of its own, or (files written before that)
    all in the benchmark's one process, where they shared a heap."""
    isolated = all(b.get("extra_info", {}).get("isolated") for b in data.get("benchmarks", []))
    return ("each case in a process of its own (`bench/isolated.py`), one after another." if isolated else
            "all cases in one process, sharing its heap (written before the cases had a process each: "
            "the authors' code's time, and so each ratio to it, moved by up to half with what the other "
            "cases left in the heap; docs/speed.md).")


def render_speed(data: dict, profiles: dict[str, list[dict]], profile_size: int, others: tuple[dict, ...] = ()) -> str:
    """The report: ``data``'s kind with its operator profiles, then each of ``others`` (benchmark files of other
    CPU kinds, or of this one under an instruction-set cap) with its own table."""
    lines = [
        "# dip-bench: speed of one training iteration",
        "",
        "- Authors' code: their network and loop as written, re-implemented in `bench/authors.py` (fp32, contiguous, eager,",
        "  plain Adam, the loss read on the host every step), timed in the same run as both paths; without the two PSNRs",
        "  their closure computes per step, so each ratio to it is a lower bound.",
        "- One iteration = perturbed input, forward, masked MSE, backward, Adam step (the paper network, 2,217,573 parameters);",
        "  median over rounds after 2 warm-up rounds (pytest-benchmark, `make speed`); raw numbers in the JSON files named below.",
        "- Every ratio is taken within one run (one machine, one `make speed`): never across the sections.",
        "",
        f"## {kind_label(data)}",
        "",
        *kind_section(data),
    ]
    for path, rows in profiles.items():
        lines += [
            "",
            f"### Where the time goes: {path} path, {profile_size}x{profile_size} (torch.profiler, self time)",
            "",
            markdown_profile(rows),
        ]
    for other in others:
        lines += ["", f"## {kind_label(other)}", "", *kind_section(other)]
    return "\n".join(lines) + "\n"
