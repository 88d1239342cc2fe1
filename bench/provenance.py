"""Where a number came from: code version, software, hardware. Attached to every record."""

from __future__ import annotations

import datetime
import functools
import os
import platform
import socket
import subprocess

import cpuinfo
import numpy as np
import torch

from bench.analysis.check import cpu_kind_label
from bench.data import REPO_ROOT

# Environment variables that cap the instruction sets oneDNN and ATen use (emulating another CPU kind).
# MKL_ENABLE_INSTRUCTIONS caps the BLAS behind matmul, which Winograd's GEMM stage runs on (dip/winograd.py).
ISA_CAP_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS")


def _run_git(*args: str) -> tuple[str | None, str | None]:
    """(git's stdout, None when it did not answer; why git refused, or None when it answered or could not
    run at all: not installed, not on PATH, timed out)."""
    try:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None, None
    if out.returncode != 0:
        return None, (out.stderr.strip().splitlines() or [f"exit code {out.returncode}"])[-1]
    return out.stdout.strip(), None


def _git(*args: str) -> str | None:
    return _run_git(*args)[0]


def checkout_problem() -> str | None:
    """Why this checkout's records would name no commit although it is a git checkout, or None.

    A git worktree whose main checkout moved or was re-created keeps its ``.git`` file, but git can no
    longer read it: every record would then say commit None, and a campaign's hours of training would
    carry no code version. Checked before a run trains, not when its records are written. Only a git that
    runs and refuses counts: without git on PATH the records name no commit, as on any machine without git."""
    if not (REPO_ROOT / ".git").exists() or os.environ.get("DIP_COMMIT", "").strip():
        return None
    _, reason = _run_git("rev-parse", "HEAD")
    if reason is None:
        return None
    return (f"{REPO_ROOT} has a .git, but git cannot name its commit ({reason}): every record would name no commit; "
            f"repair the checkout (a worktree whose main checkout moved: use a clone, docs/long-runs.md) or set DIP_COMMIT")


def git_state() -> dict:
    """Commit and whether tracked files differ from it (a dirty tree's numbers are not the commit's).

    A copy of the tree without its .git (as carried to a borrowed GPU machine) names its commit through
    $DIP_COMMIT, set by whoever made the copy; its dirtiness is then unknown (None)."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": os.environ.get("DIP_COMMIT", "").strip() or None, "dirty": None}
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


@functools.lru_cache(maxsize=1)
def _cpu_info() -> dict:
    """py-cpuinfo's description of this CPU (about 0.5 s to gather, so once per process); {} if it fails."""
    try:
        return cpuinfo.get_cpu_info()
    except Exception:  # an exotic platform py-cpuinfo cannot read: fall back to the platform module
        return {}


def cpu_model() -> str:
    return _cpu_info().get("brand_raw") or platform.processor() or platform.machine()


def cpu_vendor() -> str:
    """'GenuineIntel', 'AuthenticAMD', ... (the bf16 kernels, and so the last bits of a result, differ by kind)."""
    return _cpu_info().get("vendor_id_raw") or "unknown"


def isa_caps() -> dict[str, str]:
    """The instruction-set caps set in this process's environment (:data:`ISA_CAP_VARIABLES`)."""
    return {k: os.environ[k] for k in ISA_CAP_VARIABLES if k in os.environ}


def cpu_kind() -> str:
    """This CPU's vendor and kind, e.g. 'AuthenticAMD, AVX2, no fast bf16' (an instruction-set cap is not applied)."""
    kind = cpu_kind_label(bool(torch.cpu._is_amx_tile_supported()), bool(torch.cpu._is_avx512_bf16_supported()),
                          torch.backends.cpu.get_cpu_capability())
    return f"{cpu_vendor()}, {kind}"


def cpu_kind_slug() -> str:
    """This CPU's kind as a file name: 'intel-amx', 'amd-avx512-bf16' or e.g. 'amd-avx2' (``make speed``'s
    reports/speed-<kind>.json; an instruction-set cap is not applied: ``make speed-avx2`` names its own)."""
    vendor = {"GenuineIntel": "intel", "AuthenticAMD": "amd"}.get(cpu_vendor(), "cpu")
    if torch.cpu._is_amx_tile_supported():
        kind = "amx"
    elif torch.cpu._is_avx512_bf16_supported():
        kind = "avx512-bf16"
    else:
        kind = torch.backends.cpu.get_cpu_capability().lower().replace("_", "-")
    return f"{vendor}-{kind}"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def utc_timestamp() -> str:
    """Now, in UTC, to the second (ISO 8601): the form of every time in a record."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def provenance(device: torch.device) -> dict:
    return {
        **git_state(),
        "timestamp": utc_timestamp(),  # when the record was written: the cell's end
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
        "device": str(device),
        "device_name": device_name(device),
        "cpu_model": cpu_model(),
        "cpu_vendor": cpu_vendor(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        # The CPU kind, which decides the bf16 kernels and so the last bits of a trained PSNR.
        "cpu_amx": bool(torch.cpu._is_amx_tile_supported()),
        "cpu_avx512_bf16": bool(torch.cpu._is_avx512_bf16_supported()),
        "isa_caps": isa_caps(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
