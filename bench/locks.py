"""One process trains a cell at a time: an exclusive flock on ``<results>/.locks/<image>_seed<k>.lock``.

The kernel releases a flock when its process ends, however it ends (SIGKILL included), so a killed
run never leaves a stale lock behind. Lock files are left in place: deleting a lock file that another
process may be about to lock would let two processes hold "the" lock at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

LOCKS_DIR = ".locks"


def lock_path(record_path: Path) -> Path:
    return record_path.parent / LOCKS_DIR / record_path.with_suffix(".lock").name


@contextlib.contextmanager
def try_lock(path: Path) -> Iterator[bool]:
    """Yield True holding the lock at ``path``, or False at once if another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
