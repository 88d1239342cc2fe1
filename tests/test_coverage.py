"""The coverage of Table 1 in a paper-protocol report: done, under way, missing, and the cost left."""

from bench.analysis.report import render
from bench.analysis.tables import coverage_section
from bench.checkpoints import save_checkpoint
from bench.coverage import coverage
from bench.records import write_json_atomic
from bench.rundir import RunDir
from tests.test_report import fixture_record, on_avx2_epyc, paper_budget, typed


def paper_records() -> list[dict]:
    house = fixture_record("house", 0, 32.5, full=256, ms=600.0)
    cman = fixture_record("cman", 0, 29.0, full=256, ms=400.0)
    return paper_budget([house, cman])


def test_done_stopped_and_missing_cells_with_the_cost_left(tmp_path):
    records = paper_records()
    run_dir = RunDir(tmp_path)
    for r in records:
        write_json_atomic(run_dir.record(f"{r['image']}_seed0"), r)
    save_checkpoint(run_dir.checkpoint("peppers_seed0"), typed(records)[0].config, {"loop": {"next_iteration": 2750}})
    rows = {r["name"]: r for r in coverage(tmp_path, typed(records))}
    assert len(rows) == 11
    assert rows["House"]["state"] == "done" and rows["House"]["psnr"] == 32.5 and rows["House"]["iteration"] == 11000
    # 8250 iterations left at the median of the two 256x256 records (500 ms/iter)
    assert rows["Peppers"]["state"] == "stopped" and rows["Peppers"]["iteration"] == 2750
    assert rows["Peppers"]["hours_left"] == 8250 * 500.0 / 3.6e6
    assert rows["Peppers"]["basis"] == "median of this run's 2 256x256 records"
    # no 512x512 record: scaled by pixels from 256x256, and said so
    assert rows["Barbara"]["state"] == "missing" and rows["Barbara"]["hours_left"] == 11000 * 2000.0 / 3.6e6
    assert rows["Barbara"]["basis"] == "256x256's 500 ms/iter x 4 (pixels; not measured)"
    section = coverage_section(list(rows.values()))
    assert section[1] == f"2 of 11 cells done; the others need about {sum(r['hours_left'] or 0 for r in rows.values()):.0f} h " \
                         "more on the machine that ran the latest finished cell, one cell at a time."
    peppers = next(line for line in section[2].splitlines() if line.startswith("| Peppers"))
    assert [c.strip() for c in peppers.split("|")[1:-1]] == [
        "Peppers", "0", "256x256", "stopped", "2750 (last checkpoint)", "", "1.1", "median of this run's 2 256x256 records"]


def test_the_cost_left_is_that_of_the_machine_that_ran_the_latest_cell(tmp_path):
    house, cman = paper_records()
    cman = on_avx2_epyc(cman)  # finished after House, on another CPU kind, at 400 ms/iter
    rows = {r["name"]: r for r in coverage(tmp_path, typed([house, cman]))}
    assert rows["Peppers"]["hours_left"] == 11000 * 400.0 / 3.6e6
    assert rows["Peppers"]["basis"] == "median of this run's 1 256x256 record on AMD EPYC (AVX2)"
    assert rows["Barbara"]["basis"] == "256x256's 400 ms/iter on AMD EPYC (AVX2) x 4 (pixels; not measured)"


def test_the_report_shows_coverage_only_when_given():
    assert "Coverage of Table 1" not in render(typed(paper_records()))
