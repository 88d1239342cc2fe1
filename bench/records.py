"""One JSON record per (image, seed) cell, written atomically so that none is ever half-written."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from bench.errors import BenchError
from bench.rundir import RunDir

SCHEMA = 1
COMPLETE = "complete"
FAILED = "failed"  # a cell whose training diverged under --on-divergence fail: its reason, no results
_UMASK = os.umask(0)
os.umask(_UMASK)


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over ``path``.

    A reader (or a crash at any moment, SIGKILL included) sees the old file or the new one, never a
    partial one. A failed write (read-only or full disk) is a one-line BenchError; nothing is left.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise BenchError(f"cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644 & ~_UMASK)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise BenchError(f"cannot write {path}: {exc.strerror}") from None
        raise


def write_json_atomic(path: Path, payload: dict | list) -> None:
    """JSON, atomically; NaN and infinity are refused rather than written as invalid JSON."""
    write_text_atomic(path, json.dumps(payload, indent=1, allow_nan=False) + "\n")


def read_json(path: Path, what: str) -> dict:
    """A JSON object from ``path``; a missing, unreadable or malformed file is a one-line BenchError."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise BenchError(f"cannot read {what} {path}: {exc.strerror}") from None
    except ValueError:
        raise BenchError(f"{what} {path} is not valid JSON") from None
    if not isinstance(data, dict):
        raise BenchError(f"{what} {path} is not a JSON object")
    return data


def read_record(path: Path, status: str = COMPLETE) -> dict | None:
    """The record at ``path`` if it is a record of this schema with this status, else None."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("schema") != SCHEMA or record.get("status") != status:
        return None
    return record


def load_failures(results_dir: Path) -> list[dict]:
    """Every failed cell's record in ``results_dir`` (none if it does not exist), in file-name order."""
    return [r for p in RunDir(results_dir).record_paths() if (r := read_record(p, FAILED)) is not None]


def load_records(results_dir: Path) -> list[dict]:
    """Every complete record in ``results_dir``, in file-name order."""
    if not results_dir.is_dir():
        raise BenchError(f"results directory {results_dir} does not exist")
    records = [r for p in RunDir(results_dir).record_paths() if (r := read_record(p)) is not None]
    if not records:
        raise BenchError(f"no complete records in {results_dir}")
    return records
