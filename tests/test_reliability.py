"""Faults tried for real, on `python -m bench run` in subprocesses: SIGKILL and SIGTERM mid-run, two
runs into one results directory, a read-only and a full results directory, a damaged data cache. The
run a fault hits is a subprocess; the runs around it (the uninterrupted result, a resume, the data
cache's runs) are in the test's process, with the subprocesses' thread count: each subprocess costs
seconds of imports, and CI's time is counted.

One tiny configuration throughout (House, 64x64 crop, 20 iterations, checkpoints every 5): about
3 s of training per uninterrupted run on a 2-core CPU without fast bf16 (AVX2 EPYC), on top of about
6 s of start-up (imports) and report that every run costs. 40 iterations gave these tests nothing more
and CI half a minute less.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench.cli import main
from bench.regression import torch_threads
from tests.conftest import REPO_ROOT

ITERATIONS = 20
CHECKPOINT_EVERY = 5
TINY = ["--profile", "smoke", "--device", "cpu", "--images", "house", "--seeds", "0", "--crop", "64", "--iterations", str(ITERATIONS),
        "--checkpoint-every", str(CHECKPOINT_EVERY), "--no-progress"]
RECORD = "house_seed0.json"
CHECKPOINT = Path("checkpoints") / "house_seed0.pt"
# What a resumed run must reproduce exactly (timing, provenance and resumed_at may differ).
RESULT_FIELDS = ("psnr", "psnr_pasted", "psnr_ema", "psnr_best", "final_loss", "curve", "backtracks", "mask_sha256")


def bench_argv(results: Path, data_dir: Path, *extra: str) -> list[str]:
    return ["run", *TINY, "--data-dir", str(data_dir), "--results-dir", str(results), *extra]


def bench_command(results: Path, data_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "bench", *bench_argv(results, data_dir, *extra)]


def run_here(capsys, results: Path, data_dir: Path, *extra: str, threads: int = 2) -> tuple[int, str, str]:
    """The run of :func:`bench_command`, in this process with the thread count :func:`start` gives its
    subprocesses (a result depends on it): (exit code, stdout, stderr)."""
    capsys.readouterr()
    with torch_threads(threads):
        code = main(bench_argv(results, data_dir, *extra))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def start(command: list[str], threads: int = 2) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            pytest.fail(f"the run ended (rc {process.returncode}) before {path.name} appeared:\n{process.stderr.read()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"{path.name} did not appear within {timeout} s")
        time.sleep(0.05)


def result_of(results: Path) -> dict:
    record = json.loads((results / RECORD).read_text())
    assert record["status"] == "complete"
    return {field: record[field] for field in RESULT_FIELDS}


def leftovers(results: Path) -> list[str]:
    """JSON files in ``results`` that are not complete records: partial or temporary writes."""
    return [p.name for p in results.rglob("*.json*") if json.loads(p.read_text() or "{}").get("status") != "complete"]


@pytest.fixture(scope="module")
def uninterrupted(data_dir, tmp_path_factory) -> dict:
    """The result of the tiny run without any fault, in a subprocess as the faulted runs are: what every
    recovered run must equal."""
    results = tmp_path_factory.mktemp("uninterrupted")
    rc, out, err = finish(start(bench_command(results, data_dir)))
    assert rc == 0, err
    return result_of(results)


def test_a_run_paused_then_killed_with_sigkill_resumes_from_its_checkpoint_to_the_same_result(uninterrupted, data_dir,
                                                                                            tmp_path, capsys):
    """How a campaign shares a 2-core machine, then a kill: paused (SIGSTOP) mid-training nothing moves,
    continued (SIGCONT) the same process trains on and saves its next checkpoint; killed with SIGKILL it
    leaves nothing that looks finished, and the next run resumes from the checkpoint to the result of a run
    never paused or killed. (One process for both faults: each subprocess costs seconds of imports.)"""
    results = tmp_path / "results"
    process = start(bench_command(results, data_dir))
    wait_for(results / CHECKPOINT, process)
    process.send_signal(signal.SIGSTOP)
    paused = (results / CHECKPOINT).stat().st_mtime_ns  # checkpoints are replaced whole (a rename)
    paused_at = torch.load(results / CHECKPOINT, weights_only=True)["state"]["loop"]["next_iteration"]
    time.sleep(1.5)
    assert process.poll() is None and not (results / RECORD).exists()  # stopped: nothing moves
    assert (results / CHECKPOINT).stat().st_mtime_ns == paused
    process.send_signal(signal.SIGCONT)
    deadline = time.monotonic() + 120
    while (results / CHECKPOINT).stat().st_mtime_ns == paused:  # continued: the same process saves its next one
        assert process.poll() is None and time.monotonic() < deadline, "no checkpoint after SIGCONT"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    rc, _, _ = finish(process)
    assert rc == -signal.SIGKILL
    assert not (results / RECORD).exists() and leftovers(results) == []  # nothing that looks finished
    assert not list(results.rglob("*.tmp"))  # and no temporary file left behind as a record

    rc, out, err = run_here(capsys, results, data_dir)
    assert rc == 0, err
    assert "resuming from its checkpoint at iteration" in out + err
    record = json.loads((results / RECORD).read_text())
    assert record["resumed_at"] and paused_at < record["resumed_at"][0] < ITERATIONS
    assert result_of(results) == uninterrupted
    assert not (results / CHECKPOINT).exists()  # gone once the record is written


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_saves_a_checkpoint_and_says_how_to_resume(signum, uninterrupted, data_dir, tmp_path, capsys):
    results = tmp_path / "results"
    process = start(bench_command(results, data_dir))
    wait_for(results / CHECKPOINT, process)  # training is under way
    process.send_signal(signum)
    rc, _, err = finish(process)
    assert rc == 128 + signum  # 143 for SIGTERM, 130 for SIGINT: a scheduler sees the run did not finish
    last = err.strip().splitlines()[-1]
    stopped = re.search(rf"stopped by {signal.Signals(signum).name} after iteration (\d+) of {ITERATIONS} of House seed 0", last)
    assert stopped and "run the same command again to resume" in last and "Traceback" not in err
    iteration = int(stopped[1])
    saved = torch.load(results / CHECKPOINT, weights_only=True)
    # saved at the stop, not only at the last multiple of CHECKPOINT_EVERY
    assert saved["state"]["loop"]["next_iteration"] == iteration
    assert not (results / RECORD).exists() and leftovers(results) == []

    rc, out, err = run_here(capsys, results, data_dir)
    assert rc == 0, err
    record = json.loads((results / RECORD).read_text())
    assert record["resumed_at"] == [iteration]
    # the cell's start is the first run's, kept in the checkpoint; the record's timestamp is the second's end
    assert record["started"] == saved["started"] and record["started"] <= record["provenance"]["timestamp"]
    assert result_of(results) == uninterrupted


def test_a_second_stop_signal_interrupts_at_once(data_dir, tmp_path):
    """Two stop signals: the first asks for a stop after the current step, the second interrupts inside
    it (exit 130), with no record and the last checkpoint still whole. Two different signals, sent back to
    back: one signal sent twice may reach Python as one."""
    results = tmp_path / "results"
    process = start(bench_command(results, data_dir, "--iterations", "100000"))
    wait_for(results / CHECKPOINT, process)
    process.send_signal(signal.SIGTERM)
    process.send_signal(signal.SIGINT)
    rc, _, err = finish(process, timeout=60)
    assert rc == 130, err
    assert err.strip().splitlines()[-1] == "interrupted: complete records are kept; run the same command again to continue"
    assert "Traceback" not in err and "stopped by" not in err
    assert not (results / RECORD).exists() and leftovers(results) == []
    assert torch.load(results / CHECKPOINT, weights_only=True)["state"]["loop"]["next_iteration"] % CHECKPOINT_EVERY == 0


def test_a_stop_signal_while_waiting_for_another_processs_cell_stops_the_wait(data_dir, tmp_path):
    """A run that finds its cell locked by another process waits for it; SIGTERM then ends the wait at
    once (exit 143, a message naming the cell), trains nothing and writes nothing."""
    from filelock import FileLock

    results = tmp_path / "results"
    (results / ".locks").mkdir(parents=True)
    held = FileLock(results / ".locks" / "house_seed0.lock", timeout=0, thread_local=False)
    with held:  # this test process is "the other process" training House
        process = start(bench_command(results, data_dir))
        waiting = "House seed 0: another process is training it; waiting for it to finish"
        assert process.stdout.readline().strip() == waiting  # the run's first line, once it is waiting
        process.send_signal(signal.SIGTERM)
        rc, _, err = finish(process, timeout=60)
    assert rc == 143, err
    assert err.strip().splitlines()[-1] == (
        "stopped by SIGTERM while waiting for House seed 0 (trained by another process); complete records are kept; "
        "run the same command again to continue")
    assert "Traceback" not in err and not (results / RECORD).exists() and not (results / CHECKPOINT).exists()


def test_two_runs_into_one_results_directory_train_each_cell_once(data_dir, tmp_path):
    results = tmp_path / "results"
    command = bench_command(results, data_dir, "--images", "house,cman,peppers", "--iterations", "15")
    first, second = start(command, threads=1), start(command, threads=1)
    (rc1, out1, err1), (rc2, out2, err2) = finish(first), finish(second)
    assert rc1 == 0 and rc2 == 0, err1 + err2
    trained = re.findall(r"^(\S+) +seed 0: PSNR ", out1 + out2, flags=re.MULTILINE)
    assert sorted(trained) == ["C.man", "House", "Peppers"]  # each cell by one process, none twice
    records = [json.loads((results / f"{key}_seed0.json").read_text()) for key in ("house", "cman", "peppers")]
    assert all(r["status"] == "complete" and r["curve"][-1]["iteration"] == 14 for r in records)
    assert leftovers(results) == []


def in_mount_namespace(mount_options: str, target: Path, command: list[str]) -> subprocess.CompletedProcess:
    """Run ``command`` with a fresh tmpfs (``mount_options``) over ``target``, seen by that process only."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1)")
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("user namespaces are not available here")
    target.mkdir(parents=True, exist_ok=True)
    script = f'mount -t tmpfs -o {mount_options} tmpfs "$0" && exec "$@"'
    return subprocess.run(["unshare", "-rm", "sh", "-c", script, str(target), *command],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "mount_options, message",
    [("ro", "is not writable (tried writing a file there)"), ("size=256k", "MiB free; this run needs about")],
)
def test_an_unusable_results_directory_is_refused_before_training(mount_options, message, data_dir, tmp_path):
    results = tmp_path / "results"
    done = in_mount_namespace(mount_options, results, bench_command(results, data_dir))
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and message in done.stderr and done.stderr.count("\n") == 1
    assert "PSNR" not in done.stdout  # refused before the first step


def test_a_data_cache_file_damaged_after_download_is_fetched_again(data_dir, serve, tmp_path, capsys):
    files = [f"house_{kind}.png" for kind in ("GT", "masked", "deep_prior", "papyan")]
    serve({name: (data_dir / name).read_bytes() for name in files})
    cache, results = tmp_path / "cache", tmp_path / "results"
    cache.mkdir()  # empty: every file is downloaded, so dip-bench owns this cache
    rc, _, err = run_here(capsys, results, cache, "--iterations", "2")
    assert rc == 0, err
    assert "downloading house_GT.png" in err  # (the masked input too only under --mask paper)
    truncated = cache / "house_GT.png"
    truncated.write_bytes(truncated.read_bytes()[:500])
    rc, _, err = run_here(capsys, results, cache, "--iterations", "2", "--seeds", "1")
    assert rc == 0, err
    assert "house_GT.png: sha256 does not match the manifest (truncated or altered since download); fetching it again" in err
    assert truncated.read_bytes() == (data_dir / "house_GT.png").read_bytes()
