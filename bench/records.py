"""Records on disk: one JSON file per (image, seed) cell, written atomically so that none is ever
half-written, and read back as :class:`bench.record.Record` (validated; older schemas migrated)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from bench.errors import BenchError
from bench.record import COMPLETE, FAILED, SCHEMA, Record, RecordError
from bench.rundir import RunDir

__all__ = ["COMPLETE", "FAILED", "SCHEMA", "Record", "load_failures", "load_records", "read_json", "read_record",
           "write_record"]
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


def write_record(path: Path, record: Record) -> None:
    """``record`` as JSON at ``path``, atomically."""
    write_json_atomic(path, record.to_dict())


def parse_record(data: dict, path: Path) -> Record:
    """``data`` (read from ``path``) as a Record; a malformed or newer-schema one is a one-line BenchError."""
    try:
        return Record.from_dict(data)
    except RecordError as exc:
        raise RecordError(f"{path} is not a record this dip-bench can read: {exc}") from None


def read_record(path: Path, status: str = COMPLETE) -> Record | None:
    """The record at ``path`` if there is one with this status; None if there is none (or it has the other
    status). A file that is not a valid record (malformed, or of a newer schema) is a one-line BenchError:
    never taken for a result, and never silently overwritten."""
    if not path.is_file():
        return None
    record = parse_record(read_json(path, "record"), path)
    return record if record.status == status else None


def load_failures(results_dir: Path) -> list[Record]:
    """Every failed cell's record in ``results_dir`` (none if it does not exist), in file-name order."""
    return [r for p in RunDir(results_dir).record_paths() if (r := read_record(p, FAILED)) is not None]


def load_records(results_dir: Path) -> list[Record]:
    """Every complete record in ``results_dir``, in file-name order."""
    if not results_dir.is_dir():
        raise BenchError(f"results directory {results_dir} does not exist")
    records = [r for p in RunDir(results_dir).record_paths() if (r := read_record(p)) is not None]
    if not records:
        raise BenchError(f"no complete records in {results_dir}")
    return records
