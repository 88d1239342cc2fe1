"""Executors for real: the smoke profile through submitit's local executor (parallel subprocesses)
against an inline run; a Slurm submission against a fake ``sbatch``/``srun`` on PATH that records the
script and then runs it as a cluster would; ``status`` and ``report`` on runs with failed and missing
cells."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.checkpoints import save_checkpoint
from bench.cli import main
from bench.errors import BenchError
from bench.executors.jobs import last_error_line, record_submission
from bench.executors.local import JobOnDevices, job_cuda_devices
from bench.executors.options import ExecutorOptions
from bench.regression import torch_threads
from bench.rundir import RunDir, try_lock
from dip.trainer import Trainer
from tests.conftest import REPO_ROOT
from tests.test_report import fixture_record, typed

RESULT_FIELDS = ("psnr", "psnr_pasted", "final_loss", "curve", "mask_sha256", "config")


def bench(*argv: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *argv], cwd=REPO_ROOT, env=env or os.environ.copy(),
                          capture_output=True, text=True, timeout=timeout)


def results_of(results: Path) -> dict[str, dict]:
    records = {p.stem: json.loads(p.read_text()) for p in results.glob("*_seed*.json")}
    assert all(r["status"] == "complete" for r in records.values())
    return {stem: {f: r[f] for f in RESULT_FIELDS} for stem, r in records.items()}


def bench_status(results: Path, capsys) -> tuple[int, list[str]]:
    """``python -m bench status RESULTS`` run in this process: its exit code and its lines."""
    capsys.readouterr()
    code = main(["status", str(results)])
    return code, capsys.readouterr().out.splitlines()


def test_the_local_executor_runs_the_smoke_profile_in_parallel_jobs_with_inline_results(data_dir, tmp_path, capsys):
    """One thread per process, both ways: the two jobs then share this 2-core machine without
    oversubscribing it (and a result depends on the thread count, so both runs use the same). The jobs
    are subprocesses (submitit's); the inline run, the status and the re-run are in this process (each
    subprocess costs seconds of imports, and CI's time is counted)."""
    inline, local = tmp_path / "inline", tmp_path / "local"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # 6 of the smoke profile's 400 iterations: bit-identity does not need more, and CI time does (on a
    # CPU without bf16 the fast path runs fp32: this test took 138 s at 100 iterations, 69 s at 30, on a
    # 2-core AVX2 EPYC; most of what is left is the jobs' start-up).
    common = ["run", "--profile", "smoke", "--device", "cpu", "--iterations", "6", "--no-progress", "--data-dir", str(data_dir)]
    with torch_threads(1):
        assert main([*common, "--results-dir", str(inline)]) == 0
    done = bench(*common, "--results-dir", str(local), "--executor", "local", "--jobs", "2", env=env)
    assert done.returncode == 0, done.stderr
    assert results_of(local) == results_of(inline)  # every PSNR, curve and loss, bit for bit
    assert sorted(results_of(local)) == ["cman_seed0", "house_seed0", "peppers_seed0"]
    manifest = json.loads((local / "jobs" / "submitted.json").read_text())
    assert sorted(j["cell"] for j in manifest["jobs"]) == ["cman_seed0", "house_seed0", "peppers_seed0"]
    assert len({j["job_id"] for j in manifest["jobs"]}) == 3 and all(Path(j["stderr"]).exists() for j in manifest["jobs"])
    code, lines = bench_status(local, capsys)
    assert code == 0 and lines[-1].strip().endswith(f"3 done (3 cells in {local})")
    with torch_threads(1):
        assert main([*common, "--results-dir", str(local), "--executor", "local", "--jobs", "2"]) == 0
    captured = capsys.readouterr()
    assert "3 of 3 cells already have complete records" in captured.out + captured.err


FAKE_SBATCH = """#!/bin/sh
# A stand-in for sbatch: keeps the submitted script and answers as sbatch does, with job ids 4242, 4243, ...
n=$(ls "$FAKE_SLURM_DIR" | grep -c '^script')
cp "$1" "$FAKE_SLURM_DIR/script$n.sh"
echo "Submitted batch job $((4242 + n))"
"""

# A stand-in for srun inside a job: fills in srun's file-name patterns for this array task and runs
# the command with its output in those files.
FAKE_SRUN = r"""#!/bin/bash
while [ $# -gt 0 ]; do
  case "$1" in
    --unbuffered) shift ;;
    --output) out=$2; shift 2 ;;
    --error) err=$2; shift 2 ;;
    *) break ;;
  esac
done
fill() { local p=$1; p=${p//%A/$SLURM_ARRAY_JOB_ID}; p=${p//%a/$SLURM_ARRAY_TASK_ID}; p=${p//%j/$SLURM_JOB_ID}; echo "${p//%t/0}"; }
"$@" >>"$(fill "$out")" 2>>"$(fill "$err")"
"""


@pytest.fixture
def fake_slurm(tmp_path):
    """PATH with a fake sbatch and srun; returns (env, directory where submitted scripts land)."""
    bin_dir, scripts = tmp_path / "bin", tmp_path / "submitted"
    bin_dir.mkdir()
    scripts.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("srun", FAKE_SRUN)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod((bin_dir / name).stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_SLURM_DIR": str(scripts)}
    return env, scripts


def run_slurm_job(script: Path, job_id: int, env: dict, task: int | None = None) -> None:
    """What Slurm does with a submitted job (or one task of an array): run the script with its variables set."""
    slurm = {"SLURM_JOB_ID": str(job_id if task is None else job_id + 100 + task), "SLURM_NTASKS": "1",
             "SLURM_JOB_NUM_NODES": "1", "SLURM_NODEID": "0", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
             "SLURM_JOB_NODELIST": "node1"}
    if task is not None:
        slurm |= {"SLURM_ARRAY_JOB_ID": str(job_id), "SLURM_ARRAY_TASK_ID": str(task)}
    subprocess.run(["bash", str(script)], env={**env, **slurm}, check=True, timeout=300, capture_output=True)


def test_slurm_submission_script_and_jobs_run_as_on_a_cluster(fake_slurm, data_dir, tmp_path, capsys, monkeypatch):
    """Submitted from this process with the fake sbatch on PATH (as a subprocess, each submission and
    status would cost seconds of imports); the jobs run as Slurm would run them, in subprocesses."""
    env, scripts = fake_slurm
    monkeypatch.setenv("PATH", env["PATH"])
    monkeypatch.setenv("FAKE_SLURM_DIR", env["FAKE_SLURM_DIR"])
    results = tmp_path / "results"
    command = ["run", "--profile", "smoke", "--images", "house,cman", "--iterations", "3", "--device", "cpu",
               "--data-dir", str(data_dir), "--results-dir", str(results), "--executor", "slurm",
               "--slurm-partition", "gpu", "--slurm-time", "90", "--gpus-per-job", "2",
               "--slurm-param", "account=lab", "--slurm-param", "qos=high"]
    capsys.readouterr()
    assert main(command) == 0
    assert "submitted 2 jobs (Slurm array 4242, one per cell)" in capsys.readouterr().out
    script = (scripts / "script0.sh").read_text()
    jobs = results / "jobs"
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=90", "#SBATCH --gpus-per-node=2", "#SBATCH --account=lab",
                 "#SBATCH --qos=high", "#SBATCH --array=0-1%2", "#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=1",
                 "#SBATCH --job-name=dip-bench-smoke", f"#SBATCH --output={jobs}/%A_%a_0_log.out"):
        assert line in script.splitlines(), line
    assert f"srun --unbuffered --output {jobs}/%A_%a_%t_log.out" in script
    assert f"{sys.executable} -u -m submitit.core._submit {jobs}" in script
    assert [line.split()[1] for line in bench_status(results, capsys)[1][:2]] == ["pending", "pending"]

    run_slurm_job(scripts / "script0.sh", 4242, env, task=0)  # house trains
    # cman's task is killed by the scheduler: what slurmstepd writes into the job's error log
    (jobs / "4242_1_0_log.err").write_text("slurmstepd: error: *** JOB 4343 ON node1 CANCELLED AT 2026-11-24T10:00:00 DUE TO TIME LIMIT ***\n")
    status = bench_status(results, capsys)[1]
    assert status[0].split()[:2] == ["cman_seed0", "failed"] and "DUE TO TIME LIMIT" in status[0] and "4242_1_0_log.err" in status[0]
    assert status[1].split()[:2] == ["house_seed0", "done"]

    assert main(command) == 0  # re-submission: the finished cell is skipped
    assert "submitted 1 job (Slurm job 4243, one per cell)" in capsys.readouterr().out
    assert f"#SBATCH --output={jobs}/%j_0_log.out" in (scripts / "script1.sh").read_text()  # one job, no array
    run_slurm_job(scripts / "script1.sh", 4243, env)
    assert bench_status(results, capsys)[1][-1].strip().endswith(f"2 done (2 cells in {results})")

    inline = tmp_path / "inline"
    assert main(["run", "--profile", "smoke", "--images", "house,cman", "--iterations", "3", "--device", "cpu",
                 "--data-dir", str(data_dir), "--results-dir", str(inline), "--no-progress"]) == 0
    assert results_of(results) == results_of(inline)


def test_status_and_report_with_failed_running_stopped_pending_and_missing_cells(data_dir, tmp_path, capsys, monkeypatch):
    results = tmp_path / "results"
    tiny = ["run", "--profile", "smoke", "--device", "cpu", "--iterations", "3", "--no-progress", "--data-dir", str(data_dir),
            "--results-dir", str(results), "--on-divergence", "fail"]
    assert main([*tiny, "--images", "house"]) == 0
    step = Trainer.optimizer_step

    def poisoned(self):  # a NaN weight after the first step, as an overflow would leave it
        step(self)
        with torch.no_grad():
            self.params[0].view(-1)[0] = float("nan")

    monkeypatch.setattr(Trainer, "optimizer_step", poisoned)
    assert main([*tiny, "--images", "peppers"]) == 1  # a failed record of the same configuration as house's
    monkeypatch.undo()
    jobs = results / "jobs"
    jobs.mkdir()
    (jobs / "hill.err").write_text("Traceback (most recent call last):\n  ...\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n")
    entries = [{"cell": c, "image": c.split("_")[0], "name": c, "seed": 0, "job_id": j, "stdout": str(jobs / f"{j}.out"),
                "stderr": str(jobs / err)} for c, j, err in (("hill_seed0", "77_0", "hill.err"), ("man_seed0", "77_1", "nolog.err"))]
    record_submission(results, "slurm", entries)
    manifest = json.loads((jobs / "submitted.json").read_text())
    manifest["planned"] = ["barbara_seed0", "boat_seed0", "cman_seed0", "hill_seed0", "house_seed0", "man_seed0", "peppers_seed0"]
    (jobs / "submitted.json").write_text(json.dumps(manifest))
    config = typed([fixture_record("cman", 0, 0.0)])[0].config  # not read back: status reads the iteration only
    save_checkpoint(results / "checkpoints" / "cman_seed0.pt", config, {"loop": {"next_iteration": 1200}})
    capsys.readouterr()
    with try_lock(RunDir(results).lock("boat_seed0")) as held:  # another process trains boat
        assert held
        assert main(["status", str(results)]) == 0
    lines = {line.split()[0]: line.split(None, 2)[1:] for line in capsys.readouterr().out.splitlines()[:-1]}
    assert lines["house_seed0"][0] == "done" and lines["house_seed0"][1].startswith("PSNR ")
    assert lines["peppers_seed0"] == ["failed", "training diverged: non-finite loss at iteration 1"]
    assert lines["hill_seed0"][0] == "failed" and lines["hill_seed0"][1].startswith("torch.OutOfMemoryError: CUDA out of memory")
    assert lines["boat_seed0"][0] == "running"
    assert lines["cman_seed0"] == ["stopped", "checkpoint at iteration 1200; run or submit the same command again to resume"]
    assert lines["man_seed0"][0] == "pending"
    assert lines["barbara_seed0"][0] == "missing"

    assert main(["report", "--results-dir", str(results), "--out", str(tmp_path / "merged.md")]) == 0
    report = (tmp_path / "merged.md").read_text()
    assert "| House " in report and "## † Diverged cells" in report
    assert "- Peppers seed 0: **failed**, no result: training diverged: non-finite loss at iteration 1" in report
    assert "Boat" not in report.split("## † Diverged cells")[0]  # a cell without a record has no row


@pytest.mark.parametrize(
    "options, message",
    [
        ({"executor": "inline", "jobs": 2}, "--jobs takes a positive number, with --executor local"),
        ({"executor": "local", "jobs": 0}, "--jobs takes a positive number"),
        ({"executor": "local", "slurm_partition": "gpu"}, "need --executor slurm"),
        ({"executor": "slurm", "slurm_time": 0}, "--slurm-time must be positive"),
        ({"executor": "slurm", "slurm_params": ("account",)}, "--slurm-param expects KEY=VALUE"),
    ],
)
def test_bad_executor_options_are_refused(options, message):
    with pytest.raises(BenchError, match=message):
        ExecutorOptions(**options)


def test_slurm_without_srun_is_a_one_line_error(data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun, no sbatch
    code = main(["run", "--profile", "smoke", "--device", "cpu", "--executor", "slurm", "--data-dir", str(data_dir),
                 "--results-dir", str(tmp_path / "results")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: --executor slurm: Could not detect \"srun\"") and err.count("\n") == 1


def test_the_reason_in_a_job_log(tmp_path):
    log = tmp_path / "log.err"
    log.write_text("warming up\nerror: house: image size 100x100 does not fit\nTraceback (most recent call last):\nbench.errors.BenchError: x\n")
    assert last_error_line(log) == "error: house: image size 100x100 does not fit"
    log.write_text("Traceback (most recent call last):\n  File x\nRuntimeError: CUDA error: an illegal memory access\n")
    assert last_error_line(log) == "RuntimeError: CUDA error: an illegal memory access"
    assert last_error_line(tmp_path / "none.err") == "no log"


def test_a_refused_sbatch_is_a_clear_error(data_dir, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text('#!/bin/sh\necho "sbatch: error: invalid partition specified: nope" >&2\nexit 1\n')
    (bin_dir / "srun").write_text("#!/bin/sh\n")
    for name in ("sbatch", "srun"):
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    done = bench("run", "--profile", "smoke", "--device", "cpu", "--executor", "slurm", "--slurm-partition", "nope",
                 "--data-dir", str(data_dir), "--results-dir", str(tmp_path / "results"), env=env)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == "error: sbatch failed: sbatch: error: invalid partition specified: nope"
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(("parent", "slots", "expected"), [
    (None, [(0,), (1,)], ["0", "1"]),  # no parent list: torch's indices are the physical ones
    ("2,3", [(0,), (1,)], ["2", "3"]),  # not physical GPUs 0 and 1
    ("3,1", [(0,)], ["3"]),  # in the parent's order, which is torch's
    ("GPU-8f6a1c2e-1b2c,GPU-0b7d9e41-3d4e", [(0,), (1,)], ["GPU-8f6a1c2e-1b2c", "GPU-0b7d9e41-3d4e"]),
    ("MIG-5c1e2f3a-5f6a", [(0,)], ["MIG-5c1e2f3a-5f6a"]),
    (" 2 , 3 ", [(0,), (1,)], ["2", "3"]),
    ("", [(), ()], ["", ""]),  # "": no GPU visible, so CPU jobs
    ("2,3", [()], [""]),  # a CPU run hides the GPUs from its jobs, as submitit did
])
def test_each_local_job_gets_the_parents_visible_gpu_at_its_torch_index(parent, slots, expected):
    assert job_cuda_devices(slots, parent) == expected


@pytest.mark.parametrize(("parent", "slots", "listed", "needed"), [("2", [(0,), (1,)], 1, 2), ("", [(0,)], 0, 1)])
def test_a_parent_list_shorter_than_the_jobs_need_is_a_one_line_error(parent, slots, listed, needed):
    with pytest.raises(BenchError) as error:
        job_cuda_devices(slots, parent)
    assert str(error.value) == (f"CUDA_VISIBLE_DEVICES={parent!r} lists {listed} GPUs, fewer than the {needed} the "
                                "local jobs use; list one entry (an index or a UUID) per GPU to use")


def test_a_local_job_sets_its_gpus_before_it_runs_and_keeps_them_when_requeued(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # what submitit gives the job; restored after the test
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    job = JobOnDevices(lambda: os.environ["CUDA_VISIBLE_DEVICES"], "GPU-8f6a1c2e-1b2c")
    assert job() == "GPU-8f6a1c2e-1b2c"
    assert job.checkpoint().function is job


def test_a_local_job_that_sees_no_gpu_of_its_own_refuses_to_run_on_the_cpu(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as if CUDA had read "" before the job set it
    with pytest.raises(BenchError, match=r"^the job sees no GPU with CUDA_VISIBLE_DEVICES=3 \(CUDA initialised "):
        JobOnDevices(lambda: "ran", "3")()
    assert JobOnDevices(lambda: "ran", "")() == "ran"  # a CPU job needs no GPU
