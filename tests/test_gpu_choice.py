"""`make bench` and `python -m bench run` pick the paper profile where torch sees a CUDA device, and the
brief profile elsewhere: `nvidia-smi` on the PATH is no sign of one (a CPU build of torch, or a driver too
old for the installed wheel, would run the paper profile on the CPU for days). No torch is run: the
Makefile's python is a stand-in, and the python side's torch.cuda.is_available is patched."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

import bench.commands.run
from bench.cli import build_parser
from tests.conftest import REPO_ROOT

# Stands in for the venv's python: answers the Makefile's torch question ("version available") with
# $TORCH_ANSWER and prints every other command instead of running it.
FAKE_PYTHON = """#!/bin/sh
if [ "$1" = -c ]; then echo "$TORCH_ANSWER"; else echo "python $*"; fi
"""
CPU_TORCH_NOTE = ("nvidia-smi found but torch 2.13.0+cpu sees no CUDA device (CPU build, or a driver too old for "
                  "it): running the brief profile; see README")
BRIEF_RUN = "python -m bench run --profile brief --publish"
PAPER_RUN = "python -m bench run --profile paper --recipe seed --publish"


def make_bench(tmp_path: Path, torch_answer: str, nvidia_smi: bool) -> list[str]:
    """The lines `make -s bench` prints with the fake python, on a PATH holding only it, echo (which make
    runs without a shell for a bare `@echo`) and, if asked, an nvidia-smi."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "echo").symlink_to(shutil.which("echo"))
    tools = {"python": FAKE_PYTHON, **({"nvidia-smi": "#!/bin/sh\n"} if nvidia_smi else {})}
    for name, text in tools.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    done = subprocess.run([shutil.which("make"), "-s", "--no-print-directory", "bench", f"PY={bin_dir / 'python'}"],
                          cwd=REPO_ROOT, env={"PATH": str(bin_dir), "TORCH_ANSWER": torch_answer},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_bench_runs_brief_and_says_why_where_nvidia_smi_exists_but_torch_sees_no_gpu(tmp_path):
    lines = make_bench(tmp_path, "2.13.0+cpu False", nvidia_smi=True)
    assert lines[:2] == [CPU_TORCH_NOTE, BRIEF_RUN]
    assert PAPER_RUN not in lines


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_bench_runs_the_paper_profile_where_torch_sees_a_gpu(tmp_path):
    lines = make_bench(tmp_path, "2.13.0+cu130 True", nvidia_smi=True)
    assert lines[0] == PAPER_RUN
    assert CPU_TORCH_NOTE not in lines and BRIEF_RUN not in lines


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_bench_runs_brief_without_a_note_on_a_machine_without_nvidia_smi(tmp_path):
    lines = make_bench(tmp_path, "2.13.0+cpu False", nvidia_smi=False)
    assert lines[0] == BRIEF_RUN


def test_python_run_without_profile_picks_paper_where_torch_sees_a_gpu(monkeypatch, capsys):
    monkeypatch.setattr(bench.commands.run.torch.cuda, "is_available", lambda: True)
    assert bench.commands.run.choose_profile(build_parser().parse_args(["run"])) == "paper"
    assert capsys.readouterr().out == ""


def test_python_run_without_profile_picks_brief_where_only_nvidia_smi_is_there(tmp_path, monkeypatch, capsys):
    (tmp_path / "nvidia-smi").write_text("#!/bin/sh\n")
    (tmp_path / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setattr(bench.commands.run.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(bench.commands.run.torch, "__version__", "2.13.0+cpu")
    monkeypatch.setattr(bench.commands.run, "measure_ms_per_iter", lambda config: {(256, 256): 250.0, (512, 512): 1000.0})
    assert bench.commands.run.choose_profile(build_parser().parse_args(["run"])) == "brief"
    assert capsys.readouterr().out.startswith("torch 2.13.0+cpu sees no CUDA device: running the 'brief' profile")


def test_python_run_with_device_cpu_picks_brief_even_where_torch_sees_a_gpu(monkeypatch, capsys):
    monkeypatch.setattr(bench.commands.run.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(bench.commands.run, "measure_ms_per_iter", lambda config: {(256, 256): 250.0, (512, 512): 1000.0})
    assert bench.commands.run.choose_profile(build_parser().parse_args(["run", "--device", "cpu"])) == "brief"
    assert capsys.readouterr().out.startswith("--device cpu: running the 'brief' profile")
