"""make gpu-session: the rehearsal end to end on the CPU with the network cut, and what can be checked
without training (refusals, a part's record surviving a later failure or a kill, the mode chosen for
the table, the archive's limit, the deadline)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time

import pytest
import torch

import bench.gpu_check as gc
import bench.gpu_session as gs
from bench.budget import DeadlineOutcome, DeadlineStop
from bench.cli import main
from bench.data import load_files
from bench.errors import BenchError
from bench.offline import module_problem, require_modules
from bench.runner import RunOutcome
from bench.session_archive import ARCHIVE_LIMIT_BYTES, Member, write_archive
from tests.conftest import REPO_ROOT
from tests.test_gpu_check import cuda_records

# Loaded first by the rehearsal's interpreter (PYTHONPATH): every socket use raises and leaves a mark.
NO_NETWORK = """
import pathlib, socket
def _cut(*args, **kwargs):
    pathlib.Path({mark!r}).write_text("network used")
    raise OSError("network cut by the test")
socket.socket.connect = _cut
socket.create_connection = _cut
socket.getaddrinfo = _cut
"""


def test_rehearsal_runs_every_step_offline_and_leaves_the_archive(tmp_path, data_dir):
    """The subprocess CI runs: exit 0, no network touched, the archive holds the records, a partial report
    with its coverage and the session's JSON, under the size limit, and never a checkpoint or a panel."""
    site, mark, out = tmp_path / "site", tmp_path / "network-used", tmp_path / "out"
    site.mkdir()
    (site / "sitecustomize.py").write_text(NO_NETWORK.format(mark=str(mark)))
    # One thread for OpenMP and OpenBLAS, as docs/gpu-session.md says for the rehearsal: on a shared CPU their
    # spinning threads made SciPy's interpolation floors (every record's reference rows) take seconds each.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO_ROOT)]), "DIP_DATA_DIR": str(data_dir),
           "DIP_DATA_URL": "http://192.0.2.1/never", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "bench", "gpu-session", "--rehearse", "--out", str(out), "--budget", "120"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    seconds = time.monotonic() - began
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert not mark.exists(), "the rehearsal used the network"
    print(f"rehearsal: {seconds:.1f} s wall")
    progress = [line for line in done.stdout.splitlines() if line.startswith("[")]
    assert [line.split("]")[0] for line in progress] == [f"[{k}/8" for k in range(1, 9)]
    assert all(" used, " in line and " left)" in line for line in progress)

    archive = out / gs.ARCHIVE_NAME
    assert archive.stat().st_size <= ARCHIVE_LIMIT_BYTES
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        read = {name: tar.extractfile(name).read().decode() for name in names if not name.endswith(".png")}
    root = gs.ARCHIVE_ROOT
    assert {f"{root}/gpu-session.json", f"{root}/gpu-check.json", f"{root}/table/report.md", f"{root}/gpu-session.log",
            f"{root}/ARCHIVE.txt", f"{root}/check/eager/house_seed0.json"} <= set(names)
    assert not [n for n in names if n.endswith((".pt", ".png")) and "/table/report/" not in n]
    assert not [n for n in names if "checkpoints" in n or "panels" in n]
    assert "## Coverage of Table 1" in read[f"{root}/table/report.md"]
    session = json.loads(read[f"{root}/gpu-session.json"])
    assert session["rehearsal"] and session["complete"] and len(session["parts"]) == len(gc.PARTS)
    assert json.loads(read[f"{root}/gpu-check.json"])["complete"]
    table = session["table"]
    assert table["mode"] == {"cells_per_gpu": 1, "cuda_graphs": False, "why": table["mode"]["why"]}  # eager on a CPU
    if table.get("stopped"):
        assert table["stopped_by"] == "the time budget"
    if "after iteration" in (table.get("stopped") or ""):  # inside a cell: it stopped after a step, with a checkpoint
        assert table["coverage"]["stopped"] >= 1
    assert "[7/8]" in read[f"{root}/gpu-session.log"]


def test_a_missing_image_is_one_line_before_anything_runs(tmp_path, data_dir, capsys):
    partial = tmp_path / "images"
    partial.mkdir()
    for entry in load_files().values():
        if entry.stem == "house":
            shutil.copy(data_dir / entry.file, partial / entry.file)
    out = tmp_path / "out"
    assert main(["gpu-session", "--rehearse", "--out", str(out), "--budget", "60", "--data-dir", str(partial)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing from" in err and "does not download" in err
    assert not out.exists()
    assert sorted(p.name for p in partial.iterdir()) == sorted(e.file for e in load_files().values() if e.stem == "house")


def test_an_earlier_sessions_output_is_never_mixed_in(tmp_path, data_dir, capsys):
    (tmp_path / gs.ARCHIVE_NAME).write_bytes(b"an earlier session's archive")
    assert main(["gpu-session", "--rehearse", "--out", str(tmp_path), "--budget", "60", "--data-dir", str(data_dir)]) == 2
    assert "already holds a session's output (gpu-session.tar.gz)" in capsys.readouterr().err
    assert (tmp_path / gs.ARCHIVE_NAME).read_bytes() == b"an earlier session's archive"


def test_a_budget_within_the_reserve_is_refused(tmp_path, data_dir, capsys):
    assert main(["gpu-session", "--rehearse", "--out", str(tmp_path / "o"), "--budget", "3", "--data-dir", str(data_dir)]) == 2
    assert "leaves nothing after the 5 s kept" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_a_gpu_it_points_at_the_rehearsal(tmp_path, data_dir, capsys):
    assert main(["gpu-session", "--out", str(tmp_path / "o"), "--budget", "60", "--data-dir", str(data_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "gpu-session needs a CUDA GPU" in err and "--rehearse" in err


# --- a session whose training is replaced by fixtures ---------------------------------------------

@pytest.fixture
def fixture_session(monkeypatch, data_dir):
    """The rehearsal's session with every part's training replaced by fixtures, and a table that stops
    at once: what remains is the session's own bookkeeping."""
    monkeypatch.setattr(gc, "smoke_records", lambda plan, data, results_dir, cuda_graphs=False, cells_per_gpu=1:
                        cuda_records(30.0, 25.0))
    monkeypatch.setattr(gc, "speed_at", lambda size, device, **timing: {
        "size": size, "fast_ms": 2.0, "fast_precision": "fp32", "fast_tflops": 1.0, "fraction_of_peak": None,
        "fast_vs_authors": 1.0, "fast_vs_reference": 1.0})
    monkeypatch.setattr(gc, "batched_speed_at", lambda size, cells, device, **timing: {
        "size": size, "cells": cells, "cuda_graphs": False, "alone_ms_per_cell": 2.0, "batched_ms_per_cell": 4.0,
        "speed_up": 0.5})
    monkeypatch.setattr(gs, "run_until", lambda config, data, results_dir, stop, log_every: DeadlineOutcome(
        RunOutcome([], []), "stopped by the time budget before House seed 0"))

    def start(out) -> int:
        return gs.gpu_session(gs.SessionOptions(out=out, budget_s=60.0, rehearse=True, data_dir=data_dir))
    return start


def test_a_failing_part_is_recorded_and_the_later_parts_still_run(fixture_session, monkeypatch, tmp_path):
    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered (injected)")
    monkeypatch.setattr(gc, "speed_at", broken)
    assert fixture_session(tmp_path) == 1
    check = json.loads((tmp_path / "gpu-check.json").read_text())
    assert check["cuda_vs_cpu"]["ok"] and check["complete"] and not check["ok"]
    assert check["speed"] == {"ok": False, "error": "RuntimeError: CUDA error: an illegal memory access was encountered (injected)"}
    assert check["batched_speed"]["speed_up"] == 0.5  # ran after the failure
    report = (tmp_path / "table" / "report.md").read_text()
    assert "no cell finished within the time budget" in report and "## Coverage of Table 1" in report
    assert "Traceback" in (tmp_path / gs.LOG_NAME).read_text()  # a crash's traceback goes to the log


def test_a_kill_during_a_later_part_keeps_the_earlier_parts_records(fixture_session, monkeypatch, tmp_path):
    """A KeyboardInterrupt (a second signal: stop at once) in the speed part, which no part catches: the
    parts before it are on disk and in the archive."""
    def killed(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(gc, "speed_at", killed)
    with pytest.raises(KeyboardInterrupt):
        fixture_session(tmp_path)
    check = json.loads((tmp_path / "gpu-check.json").read_text())
    assert not check["complete"] and check["cuda_vs_cpu"]["ok"] and "speed" not in check
    with tarfile.open(tmp_path / gs.ARCHIVE_NAME) as tar:
        archived = json.loads(tar.extractfile(f"{gs.ARCHIVE_ROOT}/gpu-check.json").read())
    assert archived["cuda_vs_cpu"] == check["cuda_vs_cpu"] and "speed" not in archived


def test_a_kill_during_the_table_leaves_an_archive_with_the_cells_finished(fixture_session, monkeypatch, tmp_path):
    """The archive is rewritten while the table trains (every second in the rehearsal): a cell's record
    written before a kill is in it, though the session never reached its end."""
    def one_cell_then_killed(config, data, results_dir, stop, log_every):
        results_dir.mkdir(parents=True, exist_ok=True)
        (results_dir / "house_seed0.json").write_text(json.dumps(cuda_records(30.0)[0].to_dict()))
        time.sleep(2.5)
        raise KeyboardInterrupt
    monkeypatch.setattr(gs, "run_until", one_cell_then_killed)
    monkeypatch.setattr(gs.GpuSession, "save", lambda self: None)  # only the refresh may write the archive now
    with pytest.raises(KeyboardInterrupt):
        fixture_session(tmp_path)
    with tarfile.open(tmp_path / gs.ARCHIVE_NAME) as tar:
        assert f"{gs.ARCHIVE_ROOT}/table/house_seed0.json" in tar.getnames()


def test_a_crash_in_the_table_still_leaves_its_report(fixture_session, monkeypatch, tmp_path):
    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB (injected)")
    monkeypatch.setattr(gs, "run_until", out_of_memory)
    assert fixture_session(tmp_path) == 1
    table = json.loads((tmp_path / gs.SESSION_RECORD).read_text())["table"]
    assert table["error"].startswith("RuntimeError: CUDA out of memory") and table["done"] == 0
    assert "## Coverage of Table 1" in (tmp_path / "table" / "report.md").read_text()
    with tarfile.open(tmp_path / gs.ARCHIVE_NAME) as tar:
        assert f"{gs.ARCHIVE_ROOT}/table/report.md" in tar.getnames()


# --- pieces ---------------------------------------------------------------------------------------

def results(**oks) -> dict[str, dict]:
    parts = {key: {"ok": ok} for key, ok in oks.items() if key != "speed_up"}
    return parts | {"batched_speed": {"speed_up": oks.get("speed_up")}}


def mode(parts: dict[str, dict], batch: int) -> tuple[int, bool]:
    chosen = gs.table_mode(parts, batch)
    return chosen.cells_per_gpu, chosen.cuda_graphs


def test_the_table_runs_in_the_fastest_mode_the_parts_showed_correct():
    everything = dict(graphs_vs_eager=True, batched_vs_single=True, batched_graphs_vs_single=True)
    assert mode(results(**everything, speed_up=3.0), 7) == (7, True)
    assert mode(results(**everything | {"batched_graphs_vs_single": False}, speed_up=3.0), 7) == (7, False)
    assert mode(results(**everything, speed_up=0.6), 7) == (1, True)  # batching measured slower
    assert mode(results(**everything), 7) == (1, True)  # batching not timed
    assert mode(results(graphs_vs_eager=False, batched_vs_single=None, speed_up=2.0), 7) == (1, False)
    assert mode(results(**everything, speed_up=3.0), 1) == (1, True)


def test_the_archive_leaves_out_what_does_not_fit_and_says_so(tmp_path):
    big = [Member(f"m{k}.bin", os.urandom(100_000)) for k in range(3)]  # random: gzip cannot shrink them
    summary = write_archive(tmp_path / "a.tar.gz", big, limit=250_000)
    assert summary.size_bytes <= 250_000 and summary.left_out == ["m1.bin", "m2.bin"]
    with tarfile.open(tmp_path / "a.tar.gz") as tar:
        assert tar.getnames() == ["ARCHIVE.txt", "m0.bin"]
        assert "Left out" in tar.extractfile("ARCHIVE.txt").read().decode()


def test_the_deadline_stops_the_run_like_a_signal_but_exits_0():
    now = [0.0]
    stop = DeadlineStop(10.0, clock=lambda: now[0])
    assert not stop() and stop.name == "the time budget"
    now[0] = 10.0
    assert stop() and stop.exit_code == 0 and stop.signum is None


def test_a_missing_or_old_module_is_one_line_naming_the_wheel():
    assert module_problem("no_such_module_here", "no-such-dist", None) == "module no_such_module_here is missing (install no-such-dist)"
    assert "is older than the 999.0" in module_problem("filelock", "filelock", "999.0")
    with pytest.raises(BenchError, match=r"^module no_such_module_here is missing .*make wheelhouse"):
        require_modules({"no_such_module_here": ("no-such-dist", None), "json": ("json", None)})
    require_modules()  # this environment has them all


def test_the_resume_command_is_a_valid_bench_run(tmp_path):
    from bench.cli import build_parser

    overrides = {"run.seeds": (0,), "run.device": "cuda", "run.cells_per_gpu": 7, "recipe.cuda_graphs": True}
    command = gs.resume_command(overrides, tmp_path / "table")
    assert command.startswith("python -m bench run --profile paper --seeds 0 --device cuda --cells-per-gpu 7 --cuda-graphs")
    args = build_parser().parse_args(command.split()[3:])
    assert vars(args)["run.cells_per_gpu"] == 7 and vars(args)["recipe.cuda_graphs"] is True
