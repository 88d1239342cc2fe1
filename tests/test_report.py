"""The report and the regression check, from fixture records (no training)."""

import copy
import os
import re
import sys
from pathlib import Path

import pytest

from bench.analysis.check import compare, make_baseline
from bench.analysis.report import render, write_report
from bench.analysis.summary import seed_means, shared_config
from bench.errors import BenchError
from bench.record import Record
from bench.records import SCHEMA, read_record, write_json_atomic

GOLDEN = Path(__file__).parent / "fixtures" / "report_quick_golden.md"

CONFIG = {
    "profile": "quick",
    "crop": 128,
    "mask": "bernoulli",
    "keep": 0.5,
    "device": "cpu",
    "recipe": {"iterations": 600, "lr": 0.001, "backtracking": True, "precision": "bf16", "channels_last": True},
}
PROVENANCE = {
    "commit": "0123456789abcdef0123456789abcdef01234567",
    "dirty": False,
    "timestamp": "2026-11-24T05:00:00+00:00",
    "torch": "2.13.0+cpu",
    "device_name": "Test CPU",
    "cpu_capability": "AVX512",
    "torch_threads": 2,
}


def fixture_record(image: str, seed: int, psnr: float, full: int = 512, ms: float = 90.0, backtracks: int = 0) -> dict:
    return {
        "schema": SCHEMA,
        "status": "complete",
        "image": image,
        "seed": seed,
        "size": [128, 128],
        "full_size": [full, full],
        "psnr": psnr,
        "psnr_pasted": psnr + 1.5,
        "backtracks": backtracks,
        "timing": {"median_ms_per_iter": ms},
        "config": {**copy.deepcopy(CONFIG), "image": image, "seed": seed},
        "provenance": dict(PROVENANCE),
    }


def typed(records: list[dict]) -> list[Record]:
    """Fixture records (JSON dicts, easy to vary) as the analysis reads them."""
    return [Record.from_dict(r) for r in records]


RECORDS = [
    fixture_record("house", 0, 30.0, full=256, ms=88.0),
    fixture_record("house", 1, 31.0, full=256, ms=92.0, backtracks=1),
    fixture_record("barbara", 0, 28.5, ms=91.0),
    fixture_record("cman", 0, 26.25, full=256, ms=90.0),
]


def test_report_matches_golden_file():
    """UPDATE_GOLDEN=1 rewrites the golden and fails: a rewritten golden compared with itself proves nothing,
    so the run that writes it is never a pass (review the diff, then run again without it)."""
    text = render(typed(RECORDS))
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(text, encoding="utf-8")
        pytest.fail(f"UPDATE_GOLDEN is set: rewrote {GOLDEN}; review its diff and run again without UPDATE_GOLDEN")
    assert text == GOLDEN.read_text(encoding="utf-8")


def test_updating_the_golden_writes_it_and_never_passes(tmp_path, monkeypatch):
    golden = tmp_path / "golden.md"
    monkeypatch.setattr(sys.modules[__name__], "GOLDEN", golden)
    monkeypatch.setenv("UPDATE_GOLDEN", "1")
    with pytest.raises(pytest.fail.Exception, match=f"^UPDATE_GOLDEN is set: rewrote {re.escape(str(golden))}; review"):
        test_report_matches_golden_file()
    assert golden.read_text(encoding="utf-8") == render(typed(RECORDS))


def test_report_content():
    text = render(typed(RECORDS))
    house = next(line for line in text.splitlines() if line.startswith("| House"))
    cells = [c.strip() for c in house.split("|")]
    assert cells[6] == "30.50 ± 0.71"  # mean and sample std of 30.0 and 31.0
    assert cells[7] == "2"  # n
    assert cells[8] == "30.00 to 31.00"  # several seeds somewhere: their range is shown
    assert cells[9] == "-8.66"  # 30.50 - 39.16 (Table 1)
    assert cells[11] == "90.0"  # median of the per-seed ms/iter
    assert "Not comparable to Table 1" in text
    # Table 1 order: Barbara before House before C.man
    assert text.index("| Barbara") < text.index("| House") < text.index("| C.man")


def paper_budget(records: list[dict], **config) -> list[dict]:
    records = copy.deepcopy(records)
    for r in records:
        r["config"]["crop"] = 0
        r["config"]["recipe"]["iterations"] = 11000
        r["config"].update(config)
        r["size"] = r["full_size"]
    return records


def test_full_paper_runs_carry_no_disclaimer():
    assert "Not comparable" not in render(typed(paper_budget(RECORDS)))
    # the authors' masks and a subset of the images are the protocol too
    assert "Not comparable" not in render(typed(paper_budget(RECORDS[:1], mask="paper", keep=0.5)))


def test_full_paper_runs_with_another_keep_fraction_or_lr_are_not_comparable():
    assert "differs from the paper's in: keep 0.7;" in render(typed(paper_budget(RECORDS, keep=0.7)))
    records = paper_budget(RECORDS)
    for r in records:
        r["config"]["recipe"]["lr"] = 0.01
    assert "differs from the paper's in: lr 0.01;" in render(typed(records))


def test_mixed_configurations_are_refused():
    records = copy.deepcopy(RECORDS)
    records[2]["config"]["recipe"]["iterations"] = 20
    with pytest.raises(BenchError, match="differ in recipe.iterations"):
        shared_config(typed(records))


def on_avx2_epyc(record: dict) -> dict:
    """``record`` as the fast path resolves it on another CPU kind: fp32 with Winograd, contiguous."""
    record = copy.deepcopy(record)
    record["config"]["recipe"] |= {"precision": "fp32", "channels_last": False, "fused_adam": True, "winograd": True}
    record["provenance"] |= {"device_name": "AMD EPYC", "cpu_capability": "AVX2", "timestamp": "2026-11-25T05:00:00+00:00"}
    return record


def test_a_campaign_across_cpu_kinds_is_one_report_that_says_how_each_cell_ran():
    records = copy.deepcopy(RECORDS)
    records[3] = on_avx2_epyc(records[3])
    with pytest.raises(BenchError, match="differ in recipe.channels_last, recipe.fused_adam, recipe.precision, recipe.winograd"):
        shared_config(typed(records))  # strict by default: a regression check compares like with like
    text = render(typed(records))
    assert "- Path: fast (per cell, see the Execution column: bf16, channels_last; fp32, fused Adam, Winograd 3x3)" in text
    assert "- Device: per cell, see the Device column: Test CPU; AMD EPYC (cpu)" in text
    cman = next(line for line in text.splitlines() if line.startswith("| C.man"))
    house = next(line for line in text.splitlines() if line.startswith("| House"))
    assert [c.strip() for c in cman.split("|")[-3:-1]] == ["fp32, fused Adam, Winograd 3x3", "AMD EPYC"]
    assert [c.strip() for c in house.split("|")[-3:-1]] == ["bf16, channels_last", "Test CPU"]


def test_one_report_never_mixes_the_fast_and_the_reference_path():
    records = copy.deepcopy(RECORDS)
    records[3]["config"]["recipe"] |= {"precision": "fp32", "channels_last": False}
    with pytest.raises(BenchError, match=r"^records ran on different execution paths \(house: fast, barbara: fast, "
                                         r"cman: reference\); report each path apart$"):
        render(typed(records))


def test_a_protocol_change_is_refused_even_across_cpu_kinds():
    records = copy.deepcopy(RECORDS)
    records[3] = on_avx2_epyc(records[3])
    records[3]["config"]["recipe"]["lr"] = 0.01
    with pytest.raises(BenchError, match=r"\(house vs cman differ in recipe.lr\)"):
        render(typed(records))


def test_write_report_snapshots_its_records(tmp_path):
    out = write_report(typed(RECORDS), tmp_path / "quick.md", tmp_path / "quick" / "records")
    assert out.read_text(encoding="utf-8") == render(typed(RECORDS))
    snapshot = sorted(p.name for p in (tmp_path / "quick" / "records").iterdir())
    assert snapshot == ["barbara_seed0.json", "cman_seed0.json", "house_seed0.json", "house_seed1.json"]
    assert read_record(tmp_path / "quick" / "records" / "house_seed1.json") == typed(RECORDS)[1]


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    write_json_atomic(tmp_path / "a.json", {"x": 1})
    with pytest.raises(ValueError):
        write_json_atomic(tmp_path / "a.json", {"x": float("nan")})  # refused, old file intact
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
    assert (tmp_path / "a.json").read_text() == '{\n "x": 1\n}\n'


def test_incomplete_or_foreign_records_are_one_line_errors(tmp_path):
    (tmp_path / "half.json").write_text('{"schema": 1, "status": "compl')
    write_json_atomic(tmp_path / "old.json", {**RECORDS[0], "schema": 0})
    with pytest.raises(BenchError, match="half.json is not valid JSON"):
        read_record(tmp_path / "half.json")
    with pytest.raises(BenchError, match="old.json is not a record this dip-bench can read: no schema version"):
        read_record(tmp_path / "old.json")
    assert read_record(tmp_path / "missing.json") is None


def test_check_passes_within_tolerance_and_lists_each_failure():
    baseline = make_baseline(typed(RECORDS))
    assert baseline["psnr"] == {"house": 30.5, "barbara": 28.5, "cman": 26.25}
    assert compare(typed(RECORDS), baseline, 0.1) == []
    drifted = copy.deepcopy(RECORDS)
    drifted[2]["psnr"] = 27.0
    drifted[3]["psnr"] = 27.5
    failures = compare(typed(drifted), baseline, 0.5)
    assert failures == [
        "barbara: 27.00 dB vs baseline 28.50 dB (Δ -1.50, tolerance ±0.5)",
        "cman: 27.50 dB vs baseline 26.25 dB (Δ +1.25, tolerance ±0.5)",
    ]


def test_check_reports_missing_images_and_config_changes():
    baseline = make_baseline(typed(RECORDS))
    assert compare(typed(RECORDS[:3]), baseline, 0.5) == ["cman: no record in this run (baseline 26.25 dB)"]
    changed = copy.deepcopy(RECORDS)
    for r in changed:
        r["config"]["recipe"]["lr"] = 0.01
    assert compare(typed(changed), baseline, 0.5) == ["configuration differs from the baseline's in: recipe.lr"]
    with pytest.raises(BenchError, match="tolerance"):
        compare(typed(RECORDS), baseline, -1)


def test_side_by_side_comparison_of_two_paths():
    from bench.analysis.compare import side_by_side

    fast = copy.deepcopy(RECORDS)
    reference = copy.deepcopy(RECORDS)
    for r in fast:
        r["config"]["recipe"]["fused_adam"] = True
    for r in reference:
        r["psnr"] -= 0.25
        r["timing"]["median_ms_per_iter"] *= 2.5
        r["config"]["recipe"].update(precision="fp32", channels_last=False, fused_adam=False)
    text = side_by_side(typed(fast), typed(reference), "fast", "reference")
    assert "differ only in: recipe.channels_last, recipe.fused_adam, recipe.precision" in text
    assert "- fast: method dip-bench; path fast, bf16" in text and "- reference: method dip-bench; path reference, fp32" in text
    house = next(line for line in text.splitlines() if line.startswith("| House"))
    cells = ["House", "30.50 ± 0.71", "30.25 ± 0.71", "+0.25", "90.0", "225.0", "2.50x"]
    assert [c.strip() for c in house.split("|")[1:-1]] == cells
    assert "Mean Δ PSNR +0.25 dB, largest |Δ| 0.25 dB over 3 images" in text


def test_bad_baseline_files_are_one_line_errors(tmp_path):
    from bench.analysis.check import load_baseline

    with pytest.raises(BenchError, match="cannot read baseline"):
        load_baseline(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(BenchError, match="is not valid JSON"):
        load_baseline(tmp_path / "bad.json")
    (tmp_path / "empty.json").write_text("{}")
    with pytest.raises(BenchError, match="lacks 'config' and 'psnr'"):
        load_baseline(tmp_path / "empty.json")


def test_extra_table_appears_when_records_computed_it():
    records = copy.deepcopy(RECORDS)
    for i, r in enumerate(records):
        r["reference_psnr"] = {"interp_linear": 25.0 + i, "interp_nearest": 22.0, "deep_prior_published": 33.0, "papyan_published": 31.0}
        r |= {"psnr_best": r["psnr"] + 0.5, "best_iteration": 400 + 100 * i, "psnr_ema": r["psnr"] + 0.25}
    text = render(typed(records))
    assert "## Second estimates and reference rows computed here" in text
    extra = text[text.index("## Second estimates"):]
    header = next(line for line in extra.splitlines() if line.startswith("| Image"))
    assert [c.strip() for c in header.split("|")[1:-1]] == [
        "Image", "Best (oracle stop)", "at iter.", "EMA of output", "Interp. nearest", "Interp. linear", "DIP published", "Papyan published"]
    house = next(line for line in extra.splitlines() if line.startswith("| House"))
    # house has seeds 0 and 1: PSNR 30 and 31 -> best 31.0, at iterations 400 and 500 -> median 450
    assert [c.strip() for c in house.split("|")[1:-1]] == ["House", "31.00", "450", "30.75", "22.00", "25.50", "33.00", "31.00"]
    assert "## Second estimates" not in render(typed(RECORDS))  # older records: no such table


def test_single_seed_runs_have_no_range_column():
    assert "Min to max" not in render(typed([r for r in RECORDS if r["seed"] == 0]))


def test_mean_row_gives_the_spread_of_the_table_mean_over_seeds():
    records = RECORDS + [fixture_record("barbara", 1, 29.5), fixture_record("cman", 1, 27.25, full=256)]
    # per-seed means over the 3 images: seed 0 (30 + 28.5 + 26.25) / 3 = 28.25, seed 1 (31 + 29.5 + 27.25) / 3 = 29.25
    assert list(seed_means(typed(records))) == [28.25, 29.25]
    mean_row = next(line for line in render(typed(records)).splitlines() if line.startswith("| **Mean**"))
    assert [c.strip() for c in mean_row.split("|")][6] == "28.75 ± 0.71"
    # A seed that not every image has does not enter the table-level spread.
    assert list(seed_means(typed(RECORDS))) == [28.25]


def test_other_runs_become_columns_only_if_only_the_recipe_differs():
    records = copy.deepcopy(RECORDS)
    for r in records:
        r["reference_psnr"] = {"interp_linear": 25.0, "interp_nearest": 22.0, "deep_prior_published": 33.0, "papyan_published": 31.0}
        r |= {"psnr_best": r["psnr"], "best_iteration": 500, "psnr_ema": r["psnr"]}
    seed_run = copy.deepcopy(records)
    for r in seed_run:
        r["psnr"] += 1.0
        r["config"]["recipe"]["lr"] = 0.01
        r["config"]["recipe_name"] = "seed"
    text = render(typed(records), {"Seed recipe": typed(seed_run)})
    house = next(line for line in text[text.index("## Second"):].splitlines() if line.startswith("| House"))
    assert house.split("|")[-2].strip() == "31.50 ± 0.71"  # 30 + 1 and 31 + 1
    assert "differs from this run's only in: recipe.lr, recipe_name" in text
    cropped = copy.deepcopy(seed_run)
    for r in cropped:
        r["config"]["crop"] = 64
    with pytest.raises(BenchError, match="'Seed recipe' cannot be a column of this report: it differs in crop"):
        render(typed(records), {"Seed recipe": typed(cropped)})


def test_files_outside_the_manifest_have_no_table_1_values():
    own = fixture_record("file-photo", 0, 27.0)
    own["name"] = "photo.png"
    text = render(typed(RECORDS[:1] + [{**own, "config": {**own["config"], "image": "file-photo"}}]))
    row = next(line for line in text.splitlines() if line.startswith("| photo.png"))
    cells = [c.strip() for c in row.split("|")]
    assert cells[3:6] == ["—", "—", "—"] and cells[6] == "27.00" and cells[8] == "—"


def test_panels_are_linked_when_they_exist(tmp_path):
    results = tmp_path / "runs" / "quick"
    (results / "panels").mkdir(parents=True)
    (results / "panels" / "house_seed0.png").write_bytes(b"png")
    records = [{**r, "panel": f"panels/{r['image']}_seed{r['seed']}.png"} for r in RECORDS]
    out = write_report(typed(records), tmp_path / "reports" / "quick.md", results_dir=results)
    text = out.read_text(encoding="utf-8")
    assert "- House: [seed 0](../runs/quick/panels/house_seed0.png)" in text
    assert "seed 1](" not in text and "Barbara: [" not in text  # missing panels are not linked


def test_panels_outside_the_reports_repository_are_not_linked(tmp_path):
    """A report in a git work tree published from a results directory outside it (a campaign under
    ~/dip-runs) says where the panels are instead of a link that is dead for everyone else."""
    repo, results = tmp_path / "repo", tmp_path / "dip-runs" / "paper"
    (repo / ".git").mkdir(parents=True)
    (results / "panels").mkdir(parents=True)
    (results / "panels" / "house_seed0.png").write_bytes(b"png")
    records = [{**r, "panel": f"panels/{r['image']}_seed{r['seed']}.png"} for r in RECORDS]
    text = write_report(typed(records), repo / "reports" / "paper.md", results_dir=results).read_text(encoding="utf-8")
    assert "](../../dip-runs" not in text and "House: [" not in text
    assert "The panels are in the run directory's `panels/` folder, outside this repository: not linked." in text
    inside = write_report(typed(records), repo / "reports" / "quick.md", results_dir=repo / "runs")
    assert "## Panels" not in inside.read_text(encoding="utf-8")  # inside the tree, no panel exists: no section


def test_published_outputs_match_table_1_with_our_psnr(data_dir):
    from bench.published import quantisation_loss_db, render_published, score_published

    record = score_published(data_dir)
    rows = {r["image"]: r for r in record["rows"]}
    assert len(rows) == 11
    for row in rows.values():  # our metric on the authors' own files reproduces their table within 0.2 dB
        assert abs(row["deep_prior_psnr"] - row["deep_prior_table1"]) < 0.2
        assert abs(row["papyan_psnr"] - row["papyan_table1"]) < 0.2
    assert "| House       | 256x256 |          39.16 |       39.00 |" in render_published(record)
    assert quantisation_loss_db(39.16) == pytest.approx(10 * __import__("math").log10(1 + 10**3.916 / 255**2 / 12))


def test_a_run_of_several_own_files_shares_one_configuration():
    a, b = fixture_record("file-a", 0, 27.0), fixture_record("file-b", 0, 28.0)
    a["config"] |= {"image": "file-a", "file": "/x/a.png", "file_sha256": "1" * 64}
    b["config"] |= {"image": "file-b", "file": "/x/b.png", "file_sha256": "2" * 64}
    assert shared_config(typed([a, b])).file is None
