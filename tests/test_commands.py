"""Every user-visible command from its command line (issue 25, item 7): what `make bench`, `make check`,
`make power` and the studies run, through bench.cli.main's own parsing, into files under tmp_path.

Where a command's real work takes minutes (timing, the regression check's training, the spread's
subprocesses), the function doing that work is replaced by one returning a known result, and what is
asserted is the command's own part: its flags, what it writes where, what it prints and its exit status.
Everything else trains for real, on a tiny network for a few steps.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

import bench.mutations
import bench.paths
import bench.regression
import bench.speed
from bench.cli import main
from bench.mutations import MUTATIONS, Mutation
from bench.paths import SPREAD_PATH
from bench.records import read_json
from bench.speed import RatioMeasurement
from bench.spread import render_spread
from tests.conftest import REPO_ROOT
from tests.test_report import RECORDS, typed

TINY_RUN = ["run", "--profile", "smoke", "--device", "cpu", "--images", "house", "--iterations", "2",
            "--channels-down", "8", "--channels-up", "8", "--no-progress"]


@pytest.fixture
def reports_dir(tmp_path, monkeypatch) -> Path:
    """reports/ moved under tmp_path: --publish and report without --out write there, not into the checkout."""
    reports = tmp_path / "reports"
    monkeypatch.setattr(bench.paths, "REPORTS_DIR", reports)
    return reports


# ---------------------------------------------------------------------------------------------------
# run --publish and report: what `make bench` writes


def test_run_publish_writes_the_profiles_report_and_a_snapshot_of_its_records(reports_dir, data_dir, tmp_path, capsys):
    results = tmp_path / "results"
    assert main([*TINY_RUN, "--data-dir", str(data_dir), "--results-dir", str(results), "--publish"]) == 0
    report = (reports_dir / "smoke.md").read_text()
    assert report.startswith("# dip-bench: profile `smoke`") and re.search(r"^\| House +\| 64x64 crop", report, re.MULTILINE)
    snapshot = reports_dir / "smoke" / "records" / "house_seed0.json"
    assert json.loads(snapshot.read_text()) == json.loads((results / "house_seed0.json").read_text())
    assert f"Report written to {reports_dir / 'smoke.md'}" in capsys.readouterr().out


def test_report_without_out_writes_where_publish_does(reports_dir, data_dir, tmp_path, capsys):
    """`report` with no --out is `run --publish` after the fact: the same report, the same snapshot."""
    results = tmp_path / "results"
    assert main([*TINY_RUN, "--data-dir", str(data_dir), "--results-dir", str(results), "--publish"]) == 0
    published = (reports_dir / "smoke.md").read_text()
    shutil.rmtree(reports_dir)
    capsys.readouterr()
    assert main(["report", "--results-dir", str(results)]) == 0
    assert (reports_dir / "smoke.md").read_text() == published
    assert sorted(p.name for p in (reports_dir / "smoke" / "records").iterdir()) == ["house_seed0.json"]
    assert capsys.readouterr().out.rstrip().endswith(f"Report written to {reports_dir / 'smoke.md'}")


def test_report_of_a_directory_without_records_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["report", "--results-dir", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


# ---------------------------------------------------------------------------------------------------
# speed --gate: what make check runs after the regression check


def fake_ratio(monkeypatch, reference_s: float, fast_s: float, fast_precision: str) -> list[dict]:
    """measure_ratio replaced by a known measurement; returns the calls' arguments."""
    calls = []

    def measured(size, rounds, steps, device, authors):
        calls.append({"size": size, "rounds": rounds, "steps": steps, "device": device, "authors": authors})
        return RatioMeasurement(size, reference_s, fast_s, rounds, steps, "fp32", fast_precision)

    monkeypatch.setattr(bench.speed, "measure_ratio", measured)
    return calls


@pytest.mark.parametrize(("fast_s", "precision", "code", "verdict"), [
    (0.5, "bf16", 0, "OK speed-up 2.00x >= 1.8x"),
    (0.625, "bf16", 1, "FAIL speed-up 1.60x is below the required 1.8x"),
    (1.0, "fp32", 0, "OK speed-up 1.00x >= 0.8x"),  # no fast bf16: the gate only catches a slower fast path
    (1.5, "fp32", 1, "FAIL speed-up 0.67x is below the required 0.8x"),
])
def test_the_speed_gate_takes_its_threshold_from_the_fast_paths_precision(fast_s, precision, code, verdict,
                                                                          monkeypatch, capsys):
    calls = fake_ratio(monkeypatch, 1.0, fast_s, precision)
    assert main(["speed", "--size", "64", "--rounds", "2", "--steps", "1", "--device", "cpu", "--gate"]) == code
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"64x64: reference (fp32) 1000 ms/iter, fast ({precision}) {fast_s * 1e3:.0f} ms/iter")
    assert lines[-1] == verdict
    assert calls == [{"size": 64, "rounds": 2, "steps": 1, "device": "cpu", "authors": False}]


def test_min_ratio_overrides_the_gate_and_bad_sizes_are_refused(monkeypatch, capsys):
    fake_ratio(monkeypatch, 1.0, 0.5, "bf16")
    assert main(["speed", "--size", "64", "--min-ratio", "2.5"]) == 1
    assert capsys.readouterr().out.splitlines()[-1] == "FAIL speed-up 2.00x is below the required 2.5x"
    assert main(["speed", "--size", "63"]) == 2
    assert capsys.readouterr().err.startswith("error: image size 63x63 does not fit")
    assert main(["speed", "--rounds", "0"]) == 2


# ---------------------------------------------------------------------------------------------------
# check --part outcome, --record, --json: the regression check's command line, its training replaced


@pytest.fixture
def outcome_records(monkeypatch) -> list[dict]:
    """The check's fresh run replaced by fixed records (House, Barbara and C.man of the report fixture);
    mutate the list (JSON dicts) to change what the next check sees."""
    records = [dict(r) for r in RECORDS]

    def fresh_run(part, data_dir, work_dir, images=(), path=None):
        assert part == "outcome" and (images, path) in [((), None), (("house",), "reference")]
        # the reference path's House: the fast path's mean House PSNR (30.5), so the parity Δ is 0
        return typed(records) if path is None else typed([{**RECORDS[0], "psnr": 30.5}])

    monkeypatch.setattr(bench.regression, "fresh_run", fresh_run)
    return records


def test_check_record_then_check_then_a_regression(outcome_records, data_dir, tmp_path, capsys):
    goldens = tmp_path / "goldens"
    goldens.mkdir()
    common = ["check", "--part", "outcome", "--goldens-dir", str(goldens), "--data-dir", str(data_dir)]
    assert main([*common, "--record"]) == 0
    golden = read_json(goldens / "smoke.json", "golden")
    assert golden["tolerance"] == read_json(SPREAD_PATH, "spread")["tolerance"]["outcome"]  # from the spread report
    assert golden["psnr"] == {"barbara": 28.5, "cman": 26.25, "house": 30.5}
    assert "outcome: new golden written to" in capsys.readouterr().out

    assert main([*common, "--json", str(tmp_path / "ok.json")]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("OK ")
    (ok,) = read_json(tmp_path / "ok.json", "results")["results"]
    assert ok["part"] == "outcome" and ok["ok"] is True and ok["margin"] == 0.0

    per_image = golden["tolerance"]["per_image_db"]
    outcome_records[2]["psnr"] = 28.5 - per_image - 0.5  # Barbara falls by more than its tolerance
    assert main([*common, "--json", str(tmp_path / "bad.json")]) == 1
    out = capsys.readouterr().out
    assert "FAIL " in out and "barbara" in out.lower()
    (bad,) = read_json(tmp_path / "bad.json", "results")["results"]
    assert bad["ok"] is False and bad["margin"] > 1


def test_check_with_images_of_the_outcome_part_is_refused(data_dir, capsys):
    assert main(["check", "--part", "outcome", "--images", "house", "--data-dir", str(data_dir)]) == 2
    assert capsys.readouterr().err == ("error: --images applies to the fingerprint part only (the outcome's mean is "
                                       "over all its images)\n")


def test_the_check_trains_with_the_goldens_thread_count(monkeypatch, data_dir, tmp_path):
    """The goldens were reduced in the order of 2 threads (their provenance): a machine with another
    default trains the check with the golden's count, and gets its own back afterwards."""
    import torch

    seen = []

    def fresh_run(part, data_dir, work_dir, images=()):
        seen.append(torch.get_num_threads())
        raise bench.regression.CellsFailed("stop here")

    monkeypatch.setattr(bench.regression, "fresh_run", fresh_run)
    golden = read_json(bench.regression.golden_path("fingerprint"), "golden")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = bench.regression.run_check("fingerprint", data_dir, tmp_path)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert seen == [golden["provenance"]["torch_threads"]] and not result.ok


# ---------------------------------------------------------------------------------------------------
# The studies and the analysis commands


def test_estimate_measures_the_profile_and_prints_its_cost(data_dir, capsys):
    argv = ["estimate", "--profile", "smoke", "--device", "cpu", "--images", "house,cman", "--channels-down", "8",
            "--channels-up", "8"]
    assert main(argv) == 0
    line = capsys.readouterr().out.strip()
    match = re.fullmatch(r"profile smoke: about .+ on this machine \((\d+) s; measured 64x64: (\d+) ms/iter\)", line)
    assert match, line
    # two images x 1 seed x 400 iterations at the measured ms/iter (both printed rounded: 0.5 + 0.8 x 0.5)
    assert abs(int(match[1]) - 0.8 * int(match[2])) <= 0.9


def test_compare_writes_the_committed_parity_report_from_its_records(tmp_path, capsys):
    """reports/quick-parity.md is `compare` of the committed quick-1seed (fast) and quick-reference records."""
    reports = REPO_ROOT / "reports"
    out = tmp_path / "parity.md"
    argv = ["compare", "--results-dir", str(reports / "quick-1seed" / "records"),
            "--against", str(reports / "quick-reference" / "records"), "--out", str(out)]
    assert main(argv) == 0
    assert out.read_text() == (reports / "quick-parity.md").read_text()
    assert capsys.readouterr().out.rstrip().endswith(f"Comparison written to {out}")
    assert main([*argv, "--labels", "one"]) == 2
    assert capsys.readouterr().err == "error: --labels needs two names separated by a comma, got 'one'\n"


def test_published_scores_the_authors_outputs_as_the_committed_report_does(data_dir, tmp_path, capsys):
    out = tmp_path / "published.md"
    assert main(["published", "--data-dir", str(data_dir), "--out", str(out)]) == 0

    def table(text: str) -> list[str]:
        return [line for line in text.splitlines() if line.startswith("|")]

    assert table(out.read_text()) == table((REPO_ROOT / "reports" / "published.md").read_text())
    assert len(table(out.read_text())) == 2 + 11 + 1  # header, rule, 11 images, the mean
    assert capsys.readouterr().out.rstrip().endswith(f"Written to {out}")


def test_ablate_runs_its_variants_and_writes_their_report(data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("bench.commands.studies.RUNS_DIR", tmp_path / "runs")
    out = tmp_path / "ablations.md"
    argv = ["ablate", "--profile", "smoke", "--variants", "upsample-nearest", "--iterations", "2", "--device", "cpu",
            "--channels-down", "8", "--channels-up", "8", "--crop", "64", "--data-dir", str(data_dir),
            "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    text = out.read_text()
    assert "upsample-nearest" in text and "paper" in text
    runs = sorted(p.parent.name for p in (tmp_path / "runs").rglob("*_seed*.json"))
    assert len(runs) == 2 * 3 * 3  # the baseline and the variant, 3 images x 3 seeds each
    assert capsys.readouterr().out.rstrip().endswith(f"Ablation report written to {out}")
    assert main([*argv[:4], "nope", *argv[5:]]) == 2
    assert capsys.readouterr().err.startswith("error: unknown ablation 'nope'")


def test_spread_writes_its_json_and_markdown(data_dir, tmp_path, monkeypatch, capsys):
    committed = read_json(SPREAD_PATH, "spread")
    monkeypatch.setattr("bench.spread.measure", lambda work_dir: committed)
    out = tmp_path / "spread.md"
    assert main(["spread", "--out", str(out), "--work-dir", str(tmp_path / "work"), "--data-dir", str(data_dir)]) == 0
    assert read_json(out.with_suffix(".json"), "spread") == committed
    assert out.read_text() == render_spread(committed)
    assert capsys.readouterr().out.strip() == f"Spread written to {out} and {out.with_suffix('.json')}"


def blind_check(tree, part, data_dir, work_dir) -> dict:
    """Both parts of the check, replaced by a check that sees nothing: only the unit tests can catch."""
    return {"exit": 0, "result": {"ok": True, "margin": 0.25, "worst": "nothing moved"}, "error": ""}


def test_power_runs_a_mutations_unit_tests_in_the_mutated_copy(data_dir, tmp_path, monkeypatch, capsys):
    """adam-beta2-0.99 through `power`: the parts replaced, its named unit test run for real in the
    mutated copy (it fails there, so the mutation is caught), and in the unmodified copy (it passes)."""
    monkeypatch.setattr(bench.mutations, "check_in", blind_check)
    out = tmp_path / "power.md"
    argv = ["power", "--mutations", "adam-beta2-0.99", "--out", str(out), "--work-dir", str(tmp_path / "w"),
            "--data-dir", str(data_dir)]
    assert main(argv) == 0
    assert capsys.readouterr().out.splitlines() == ["unmodified ...", "adam-beta2-0.99 ...",
                                                    f"Power report written to {out}: 1 of 1 mutations caught"]
    rows = {r["name"]: r for r in read_json(out.with_suffix(".json"), "power")["mutations"]}
    assert rows["unmodified"]["caught"] and rows["unmodified"]["parts"]["tests"]["exit"] == 0
    assert rows["adam-beta2-0.99"]["caught_by"] == ["tests"]
    assert "test_the_optimiser_is_torchs_adam_with_its_defaults" in out.read_text()


def test_power_fails_when_a_mutation_is_missed(data_dir, tmp_path, monkeypatch, capsys):
    """A mutation whose named test does not see it: exit 1, its name in the last line. Its test's run is
    replaced by one that passes (the test above runs the named tests for real in the copies)."""
    (beta2,) = [m for m in MUTATIONS if m.name == "adam-beta2-0.99"]
    unseen = Mutation("beta2-unseen", beta2.area, beta2.path, beta2.old, beta2.new, beta2.story,
                      tests=("tests/test_masks.py::test_bernoulli_mask_is_deterministic_per_seed_and_image",))
    monkeypatch.setattr(bench.mutations, "MUTATIONS", (unseen,))
    monkeypatch.setattr(bench.mutations, "check_in", blind_check)
    monkeypatch.setattr(bench.mutations, "unit_tests_in", lambda tree, tests, data_dir: {
        "exit": 0, "result": {"ok": True, "failed": [], "named": len(tests)}, "error": ""})
    out = tmp_path / "power.md"
    assert main(["power", "--mutations", "beta2-unseen", "--out", str(out), "--work-dir", str(tmp_path / "w"),
                 "--data-dir", str(data_dir)]) == 1
    assert capsys.readouterr().out.strip().endswith("0 of 1 mutations caught; missed: beta2-unseen")


def test_speed_report_renders_a_benchmark_file_with_a_profile(tmp_path, capsys):
    """The committed reports/speed-intel-amx.json through speed-report, profiled at 64x64 on the CPU."""
    out = tmp_path / "speed.md"
    assert main(["speed-report", "--json", str(REPO_ROOT / "reports" / "speed-intel-amx.json"), "--out", str(out),
                 "--profile-size", "64", "--device", "cpu"]) == 0
    text = out.read_text()
    sizes = {b["extra_info"]["size"] for b in read_json(REPO_ROOT / "reports" / "speed-intel-amx.json", "speed")["benchmarks"]}
    assert all(re.search(rf"^\| {s}x{s} ", text, re.MULTILINE) for s in sizes), text
    assert capsys.readouterr().out.rstrip().endswith(f"Speed report written to {out}")
    (tmp_path / "empty.json").write_text(json.dumps({"benchmarks": []}))
    assert main(["speed-report", "--json", str(tmp_path / "empty.json"), "--out", str(out)]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'empty.json'} holds no benchmarks; run 'make speed'\n"

