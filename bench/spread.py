"""How far rounding alone moves the regression check's numbers: the measurement its tolerances come from.

Each CPU variant is this machine with its instruction sets capped (``ONEDNN_MAX_CPU_ISA``,
``ATEN_CPU_CAPABILITY``) or another thread count, which makes oneDNN and ATen take other kernels and
other summation orders, as another CPU kind would. For each variant the ``fingerprint`` and the
``smoke`` profiles run in a subprocess (the caps act at start-up); the default variant also runs the
smoke profile over several seeds and on the reference path. From these:

- fingerprint tolerance, per series and point: ``FINGERPRINT_SAFETY`` x the largest deviation of any
  variant from the default (curve points: the largest up to that iteration), at least
  ``FINGERPRINT_FLOOR_DB``;
- outcome tolerance: after 400 chaotic steps a variant lands like another seed, so the difference of
  two runs has a standard deviation of about sqrt(2) x the seed spread. Per image: ``OUTCOME_Z`` x
  sqrt(2) x the largest per-image seed std; for the mean over images, the same with the std of the
  per-seed mean. Each is at least ``OUTCOME_MARGIN`` x the largest difference any variant showed.

``python -m bench spread`` (``make spread``) writes ``reports/regression-spread.json`` and ``.md`` with
the records of every run beside them.
"""

from __future__ import annotations

import math
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from bench.analysis import check, fingerprint
from bench.analysis.check import cpu_kind_label
from bench.data import REPO_ROOT
from bench.errors import BenchError
from bench.record import Record
from bench.records import load_records, write_json_atomic, write_text_atomic

# name -> environment added to the subprocess. "default" is the machine as it is.
VARIANTS: dict[str, dict[str, str]] = {
    "default": {},
    "onednn-avx512-core-bf16": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"},
    "onednn-avx512-core": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
    "1-thread": {"OMP_NUM_THREADS": "1"},
}
SEEDS = "0-4"  # the smoke profile's seed spread, default variant
FINGERPRINT_SAFETY = 10.0
FINGERPRINT_FLOOR_DB = 1e-5
OUTCOME_Z = 3.5
OUTCOME_MARGIN = 1.5


def run_profile(profile: str, env: dict[str, str], results: Path, extra: list[str]) -> list[dict]:
    """``python -m bench run --profile PROFILE`` in a subprocess with ``env`` added; its records."""
    shutil.rmtree(results, ignore_errors=True)
    command = [sys.executable, "-m", "bench", "run", "--profile", profile, "--device", "cpu", "--no-progress",
               "--results-dir", str(results), *extra]
    done = subprocess.run(command, cwd=REPO_ROOT, env={**os.environ, **env}, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise BenchError(f"{profile} under {env or 'no caps'} failed (exit {done.returncode}): {last}")
    return load_records(results)


def measure(out_dir: Path, variants: dict[str, dict[str, str]] = VARIANTS, log=print) -> dict:
    """Run every variant; the measured deviations and the tolerances derived from them."""
    fingerprints, smoke = {}, {}
    for name, env in variants.items():
        log(f"{name}: fingerprint")
        fingerprints[name] = fingerprint.fingerprint(run_profile("fingerprint", env, out_dir / name / "fingerprint", []))
        log(f"{name}: smoke")
        smoke[name] = run_profile("smoke", env, out_dir / name / "smoke", ["--seeds", SEEDS] if name == "default" else [])
    log("default: smoke on the reference path")
    reference = run_profile("smoke", {}, out_dir / "default" / "smoke-reference", ["--path", "reference"])
    return summarise(fingerprints, smoke, reference, variants)


def seed_spread(records: list[Record]) -> tuple[dict[str, float], float]:
    """Per-image sample std of PSNR over seeds, and the std over seeds of the mean over images."""
    images = sorted({r.image for r in records})
    seeds = sorted({r.seed for r in records})
    psnr = {(r.image, r.seed): r.psnr for r in records}
    per_image = {i: statistics.stdev([psnr[i, s] for s in seeds]) for i in images}
    per_seed_mean = [statistics.fmean(psnr[i, s] for i in images) for s in seeds]
    return per_image, statistics.stdev(per_seed_mean)


def summarise(fingerprints: dict[str, dict], smoke: dict[str, list[Record]], reference: list[Record],
              variants: dict[str, dict[str, str]]) -> dict:
    base_fp = fingerprints["default"]
    deviations = {name: fingerprint.deviations(fp, base_fp) for name, fp in fingerprints.items() if name != "default"}
    per_image_std, mean_std = seed_spread(smoke["default"])
    seed0 = {name: check.per_image_psnr([r for r in records if r.seed == 0]) for name, records in smoke.items()}
    seed0["reference-path"] = check.per_image_psnr(reference)
    deltas = {name: {i: psnr[i] - seed0["default"][i] for i in psnr} for name, psnr in seed0.items() if name != "default"}
    largest_image = max(abs(d) for per in deltas.values() for d in per.values())
    largest_mean = max(abs(statistics.fmean(per.values())) for per in deltas.values())
    per_image_tol = max(OUTCOME_Z * math.sqrt(2) * max(per_image_std.values()), OUTCOME_MARGIN * largest_image)
    mean_tol = max(OUTCOME_Z * math.sqrt(2) * mean_std, OUTCOME_MARGIN * largest_mean)
    basis = (f"{FINGERPRINT_SAFETY:g} x the largest deviation from the default measured across "
             f"{', '.join(deviations)} (reports/regression-spread.md), at least {FINGERPRINT_FLOOR_DB:g} dB")
    outcome_basis = (f"max({OUTCOME_Z:g} x sqrt(2) x seed std (seeds {SEEDS}), {OUTCOME_MARGIN:g} x the largest "
                     f"difference across CPU variants and the reference path) (reports/regression-spread.md)")
    return {
        "variants": variants,
        "fingerprint_deviations": deviations,
        "outcome": {
            "seeds": SEEDS,
            "seed_std_per_image": per_image_std,
            "seed_std_of_mean": mean_std,
            "psnr_seed0": seed0,
            "delta_vs_default": deltas,
        },
        "tolerance": {
            "fingerprint": fingerprint.tolerances(list(deviations.values()), FINGERPRINT_SAFETY, FINGERPRINT_FLOOR_DB),
            "fingerprint_basis": basis,
            "outcome": {"per_image_db": per_image_tol, "mean_db": mean_tol, "basis": outcome_basis},
        },
        "provenance": check.provenance_summary(smoke["default"]),
    }


def parity_tolerance_db(spread: dict, image: str) -> float:
    """How far the fast path's PSNR may fall from the reference path's on ``image`` after the smoke budget:
    the outcome rule applied to that image's own effect, max(OUTCOME_Z x sqrt(2) x its seed std,
    OUTCOME_MARGIN x |its reference-path Δ|), rather than to the largest of any image and variant."""
    outcome = spread["outcome"]
    return max(OUTCOME_Z * math.sqrt(2) * outcome["seed_std_per_image"][image],
               OUTCOME_MARGIN * abs(outcome["delta_vs_default"]["reference-path"][image]))


def render_spread(spread: dict) -> str:
    """Markdown: what each variant moved, and the tolerances that follow."""
    prov, out, tol = spread["provenance"], spread["outcome"], spread["tolerance"]
    kind = cpu_kind_label(prov["cpu_amx"], prov["cpu_avx512_bf16"], prov.get("cpu_capability", "?"))
    lines = [
        "# How far rounding moves the regression check",
        "",
        f"- Machine: {prov['cpu_model']} ({kind}), torch {prov['torch']}, {prov['torch_threads']} threads by default",
        f"- Commit {(prov['commit'] or 'unknown')[:12]}{'-dirty' if prov['dirty'] else ''}, {prov['timestamp']}; "
        "records of every run under `regression-spread/<variant>/`",
        "- Variants (the environment each run had added):",
    ]
    lines += [f"  - `{name}`: {' '.join(f'{k}={v}' for k, v in env.items()) or 'as the machine is'}"
              for name, env in spread["variants"].items()]
    lines += ["", "## Fingerprint: largest deviation from the default, dB (over the images)", "",
              "| variant | loss it. 0 | loss it. 1 | loss it. 5 | loss it. 23 | PSNR it. 23 | final PSNR | static |",
              "|:--|--:|--:|--:|--:|--:|--:|--:|"]
    for name, dev in spread["fingerprint_deviations"].items():
        cells = [dev["loss"][0], dev["loss"][1], dev["loss"][5], dev["loss"][-1], dev["psnr"][-1], dev["final"][0],
                 max(dev["static"])]
        lines.append(f"| `{name}` | " + " | ".join(f"{c:.1e}" for c in cells) + " |")
    fp_tol = tol["fingerprint"]
    lines += ["", f"Tolerance: {tol['fingerprint_basis']}: loss {fp_tol['loss'][0]:.1e} dB at iteration 0, "
              f"{fp_tol['loss'][1]:.1e} at 1, {fp_tol['loss'][-1]:.1e} at 23; final PSNR {fp_tol['final'][0]:.1e}; "
              f"static {max(fp_tol['static']):.1e}.", "",
              "## Outcome: smoke profile (400 iterations), PSNR in dB", "",
              "| image | seed std (seeds " + out["seeds"] + ") | " + " | ".join(f"Δ `{n}`" for n in out["delta_vs_default"]) + " |",
              "|:--|--:|" + "--:|" * len(out["delta_vs_default"])]
    for image, std in out["seed_std_per_image"].items():
        deltas = " | ".join(f"{per[image]:+.2f}" for per in out["delta_vs_default"].values())
        lines.append(f"| {image} | {std:.2f} | {deltas} |")
    means = " | ".join(f"{statistics.fmean(per.values()):+.2f}" for per in out["delta_vs_default"].values())
    lines += [f"| mean | {out['seed_std_of_mean']:.2f} | {means} |", "",
              "Δ: seed 0 under the variant minus seed 0 on the default machine (`reference-path`: fp32, plain Adam).",
              "", f"Tolerance: {tol['outcome']['basis']}: ±{tol['outcome']['per_image_db']:.2f} dB per image, "
              f"±{tol['outcome']['mean_db']:.2f} dB for the mean over the images."]
    return "\n".join(lines) + "\n"


def write_spread(spread: dict, runs_dir: Path, out_md: Path) -> None:
    """The JSON and markdown, and the records of every run copied beside them."""
    records_dir = out_md.with_suffix("")
    shutil.rmtree(records_dir, ignore_errors=True)
    for source in sorted(runs_dir.glob("*/*/*_seed*.json")):
        target = records_dir / source.relative_to(runs_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    write_json_atomic(out_md.with_suffix(".json"), spread)
    write_text_atomic(out_md, render_spread(spread))
