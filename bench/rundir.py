"""The layout of a results directory, owned here and nowhere else.

    <results>/<image>_seed<k>.json          a cell's record (complete, or failed with its reason)
    <results>/panels/<image>_seed<k>.png    truth | masked | restored | error, one per cell
    <results>/checkpoints/<image>_seed<k>.pt   the training state of a cell in progress
    <results>/.locks/<image>_seed<k>.lock   held by the process training the cell
    <results>/jobs/                         executor logs and submitted.json (which job ran which cell)
    <results>/report.md                     the run's report

A cell is named by its stem, ``<image>_seed<k>``. Locks are flocks taken through ``filelock``: the
kernel releases them when their process ends, however it ends (SIGKILL included), so a killed run
leaves no stale lock. Lock files are kept: deleting one that another process may be about to lock
would let two processes hold "the" lock at once.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

PANELS = "panels"
CHECKPOINTS = "checkpoints"
LOCKS = ".locks"
JOBS = "jobs"
MANIFEST = "submitted.json"


def cell_stem(image: str, seed: int) -> str:
    return f"{image}_seed{seed}"


def stem_order(stem: str) -> tuple[str, int]:
    """Sort key: image, then seed as a number (seed 10 after seed 9)."""
    image, _, seed = stem.rpartition("_seed")
    return image, int(seed) if seed.isdigit() else -1


@dataclass(frozen=True)
class RunDir:
    """Every path of one results directory."""

    root: Path

    def record(self, stem: str) -> Path:
        return self.root / f"{stem}.json"

    def panel(self, stem: str) -> Path:
        return self.root / PANELS / f"{stem}.png"

    def checkpoint(self, stem: str) -> Path:
        return self.root / CHECKPOINTS / f"{stem}.pt"

    def lock(self, stem: str) -> Path:
        return self.root / LOCKS / f"{stem}.lock"

    @property
    def jobs(self) -> Path:
        return self.root / JOBS

    @property
    def manifest(self) -> Path:
        return self.jobs / MANIFEST

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    def record_paths(self) -> list[Path]:
        """The records here (complete or failed), in file-name order."""
        return sorted(self.root.glob("*_seed*.json"))

    def read_manifest(self) -> dict:
        """The executors' manifest: cells planned and jobs submitted (empty when none was written)."""
        return json.loads(self.manifest.read_text()) if self.manifest.exists() else {"planned": [], "jobs": []}

    def known_stems(self) -> list[str]:
        """Every cell with a record, checkpoint or lock here, or planned or submitted by an executor."""
        stems = {p.stem for p in self.root.glob("*_seed*.json")}
        stems |= {p.stem for p in (self.root / CHECKPOINTS).glob("*_seed*.pt")}
        stems |= {p.stem for p in (self.root / LOCKS).glob("*_seed*.lock")}
        manifest = self.read_manifest()
        stems |= set(manifest["planned"]) | {job["cell"] for job in manifest["jobs"]}
        return sorted(stems, key=stem_order)


@contextlib.contextmanager
def try_lock(path: Path) -> Iterator[bool]:
    """Yield True holding the lock at ``path``, or False at once if another holder has it (another
    process, or another lock object in this one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # No soft fallback: a marker file would outlive a killed process and block the cell for good.
    lock = FileLock(path, timeout=0, preserve_lock_file=True, fallback_to_soft=False, thread_local=False)
    try:
        lock.acquire()
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


def is_locked(path: Path) -> bool:
    """Whether another holder has the lock at ``path`` now (a lock file nobody holds is not locked)."""
    if not path.exists():
        return False
    with try_lock(path) as held:
        return not held
