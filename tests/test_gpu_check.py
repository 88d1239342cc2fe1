"""make gpu-check: what can be checked without a GPU (its refusal, its comparisons, its summary, its
record written part by part, and its runs trained afresh)."""

import json
import subprocess
import sys

import pytest
import torch

from bench.errors import BenchError
from bench.record import Record
from bench.gpu_check import (
    PARTS,
    CheckPlan,
    against_cpu_baseline,
    against_eager,
    part_line,
    require_cuda,
    smoke_records,
    summary_lines,
)
from tests.conftest import REPO_ROOT
from tests.test_report import fixture_record, typed

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")


@no_cuda
def test_refuses_cleanly_without_a_gpu():
    with pytest.raises(BenchError, match=r"^gpu-check needs a CUDA GPU, and torch .* sees none"):
        require_cuda()
    done = subprocess.run([sys.executable, "-m", "bench", "gpu-check", "--work-dir", "/nonexistent/gpu-check"],
                          cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "gpu-check needs a CUDA GPU" in done.stderr and "Traceback" not in done.stderr


def cuda_records(*psnrs: float) -> list[Record]:
    records = [fixture_record(image, 0, psnr) for image, psnr in zip(("house", "cman", "peppers"), psnrs)]
    for record in records:
        record["config"]["device"] = "cuda"
    return typed(records)


def baseline(*psnrs: float) -> dict:
    config = typed([fixture_record("house", 0, 0.0)])[0].config.shared().to_dict()
    return {"config": config, "psnr": dict(zip(("house", "cman", "peppers"), psnrs)),
            "tolerance": {"per_image_db": 1.0, "mean_db": 0.5}}


def test_cuda_is_compared_with_the_cpu_baseline_despite_the_device():
    golden = baseline(30.0, 25.0, 28.0)
    assert golden["config"]["device"] != "cuda"
    assert against_cpu_baseline(cuda_records(30.2, 24.9, 28.1), golden).ok
    far = against_cpu_baseline(cuda_records(31.5, 25.0, 28.0), golden)
    assert not far.ok and far.lines[0].startswith("house: 31.50 dB vs baseline 30.00 dB")


def test_graphs_and_batches_are_compared_with_eager_image_by_image():
    eager = cuda_records(30.0, 25.0, 28.0)
    close = against_eager(eager, cuda_records(30.5, 24.6, 28.0), per_image_db=1.0)
    assert close["ok"] and close["delta_db"]["house"] == pytest.approx(0.5)
    assert not against_eager(eager, cuda_records(30.0, 26.5, 28.0), per_image_db=1.0)["ok"]
    assert not against_eager(eager, cuda_records(30.0, 25.0), per_image_db=1.0)["ok"]  # a cell missing


def test_summary_names_each_part_and_the_fraction_of_peak():
    record = {
        "cuda_vs_cpu": {"ok": True, "lines": ["outcome: 3 images after 400 iterations; mean Δ +0.10 dB"]},
        "graphs_vs_eager": {"ok": False, "delta_db": {"house": 0.2, "cman": -1.5}, "tolerance_db": 1.0},
        "speed": {"size": 256, "fast_ms": 2.5, "fast_precision": "bf16", "fast_tflops": 46.0, "fraction_of_peak": 0.0465,
                  "fast_vs_authors": 12.0, "fast_vs_reference": 3.0},
        "batched_vs_single": {"ok": True, "delta_db": {"house": -0.1, "cman": 0.04}, "tolerance_db": 1.0},
        "batched_graphs_vs_single": {"ok": True, "delta_db": {"house": 0.3, "cman": 0.0}, "tolerance_db": 1.0},
        "batched_speed": {"size": 256, "cells": 4, "alone_ms_per_cell": 2.5, "batched_ms_per_cell": 1.25,
                          "speed_up": 2.0},
    }
    lines = summary_lines(record)
    assert lines[0] == "OK CUDA vs CPU baseline: outcome: 3 images after 400 iterations; mean Δ +0.10 dB"
    assert lines[1] == "FAIL CUDA graphs vs eager: largest |Δ| 1.50 dB (tolerance ±1.00)"
    assert lines[2] == "OK batched cells vs single cells: largest |Δ| 0.10 dB (tolerance ±1.00)"
    assert lines[3] == "OK batched cells as CUDA graphs vs single cells: largest |Δ| 0.30 dB (tolerance ±1.00)"
    assert lines[4] == ("speed 256x256: fast 2.5 ms/iter (bf16), 46.0 TFLOP/s, 4.7% of the card's peak; "
                        "12.00x the authors' code, 3.00x the reference path")
    assert lines[5] == "batched 4 cells at 256x256 (CUDA graphs): 1.2 ms per cell-iteration, alone 2.5: 2.00x"


def test_the_record_it_writes_is_the_record_it_summarises(monkeypatch, tmp_path):
    """Every part's runs replaced by fixtures (they need CUDA): the record gpu_check writes holds each
    part under the key its summary reads, and a failing part makes the whole check fail."""
    import bench.gpu_check as gc

    runs = {("eager", False, 1): (30.0, 25.0, 28.0), ("graphs", True, 1): (30.1, 25.0, 28.0),
            ("batched", False, 3): (29.9, 25.2, 28.0), ("batched-graphs", True, 3): (30.0, 27.5, 28.0)}
    monkeypatch.setattr(gc, "require_cuda", lambda: torch.device("cpu"))
    monkeypatch.setattr(gc, "read_json", lambda path, what: baseline(30.0, 25.0, 28.0))
    ticks = iter(range(1000))  # a clock that moves on every call: the returned record must still be the written one
    monkeypatch.setattr(gc, "provenance", lambda device: {"timestamp": next(ticks)})
    monkeypatch.setattr(gc, "smoke_records", lambda plan, data_dir, results_dir, cuda_graphs=False, cells_per_gpu=1:
                        cuda_records(*runs[(results_dir.name, cuda_graphs, cells_per_gpu)]))
    monkeypatch.setattr(gc, "speed_at", lambda size, device, **timing: {
        "size": size, "fast_ms": 2.0, "fast_precision": "bf16", "fast_tflops": 57.5, "fraction_of_peak": None,
        "fast_vs_authors": 10.0, "fast_vs_reference": 2.0})
    monkeypatch.setattr(gc, "batched_speed_at", lambda size, cells, device, **timing: {
        "size": size, "cells": cells, "alone_ms_per_cell": 2.0, "batched_ms_per_cell": 1.0, "speed_up": 2.0})
    seen = []
    record = gc.gpu_check(tmp_path / "data", tmp_path / "work", on_part=lambda part, result: seen.append(part.key))
    assert seen == [part.key for part in PARTS] and record["complete"]
    assert json.loads((tmp_path / "work" / "gpu-check.json").read_text()) == json.loads(json.dumps(record))
    lines = summary_lines(record)
    assert [line.split(":")[0] for line in lines] == [
        "OK CUDA vs CPU baseline", "OK CUDA graphs vs eager", "OK batched cells vs single cells",
        "FAIL batched cells as CUDA graphs vs single cells", "speed 256x256",
        "batched 4 cells at 256x256 (CUDA graphs)"]
    assert not record["ok"]  # C.man 2.5 dB off in the batched graphed run, tolerance 1.0


def test_each_part_is_on_disk_as_soon_as_it_finishes(monkeypatch, tmp_path):
    """A kill during the speed part (a KeyboardInterrupt: no part catches it) leaves the record of the
    comparisons before it, marked incomplete."""
    import bench.gpu_check as gc

    monkeypatch.setattr(gc, "require_cuda", lambda: torch.device("cpu"))
    monkeypatch.setattr(gc, "read_json", lambda path, what: baseline(30.0, 25.0, 28.0))
    monkeypatch.setattr(gc, "smoke_records", lambda *args, **kwargs: cuda_records(30.0, 25.0, 28.0))

    def killed(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(gc, "speed_at", killed)
    with pytest.raises(KeyboardInterrupt):
        gc.gpu_check(tmp_path / "data", tmp_path / "work")
    record = json.loads((tmp_path / "work" / "gpu-check.json").read_text())
    assert not record["complete"] and record["ok"]
    assert [key for key in record if key in {p.key for p in PARTS}] == [p.key for p in PARTS[:4]]


def test_a_failed_or_skipped_part_has_its_own_line():
    speed = next(p for p in PARTS if p.key == "speed")
    assert part_line(speed, {"ok": False, "error": "RuntimeError: CUDA error"}) == "FAIL speed: RuntimeError: CUDA error"
    graphs = next(p for p in PARTS if p.key == "graphs_vs_eager")
    assert part_line(graphs, {"ok": None, "skipped": "CUDA graphs need a CUDA device"}) == (
        "SKIP CUDA graphs vs eager: CUDA graphs need a CUDA device")


TINY_CPU_PLAN = CheckPlan(device="cpu", cuda_graphs=False,
                          smoke_overrides=(("run.images", ("house",)), ("recipe.iterations", 4), ("recipe.eval_every", 2)))


def test_each_check_trains_afresh_instead_of_reusing_an_earlier_checks_records(tmp_path, data_dir):
    """Defect 4: a record of an equal configuration (which holds no commit) left by an earlier check in
    the same work directory must not be taken as this check's result."""
    results = tmp_path / "eager"
    (first,) = smoke_records(TINY_CPU_PLAN, data_dir, results)
    stale = json.loads((results / "house_seed0.json").read_text())
    stale["psnr"] = 99.0  # what an earlier commit's check left behind
    (results / "house_seed0.json").write_text(json.dumps(stale))
    (again,) = smoke_records(TINY_CPU_PLAN, data_dir, results)
    assert again.psnr != 99.0 and again.psnr == pytest.approx(first.psnr, abs=1e-6)
