"""Checkpoints of the cells in training (where: bench.rundir), written atomically.

A checkpoint holds the cell's resolved configuration beside the training state; one of another
configuration (a changed flag) or one that cannot be read is set aside with a note, never trusted.
The file goes once the cell's record is written.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch

from bench.record import RecordConfig
from bench.records import write_bytes_atomic

FORMAT = 1


def save_checkpoint(path: Path, config: RecordConfig, state: dict, *, started: str | None = None) -> None:
    """``started``: when the cell's training began (UTC, ISO 8601), kept across resumes for its record."""
    buffer = io.BytesIO()
    # The config as JSON text: torch.load(weights_only=True) takes it back without trusting pickles.
    torch.save({"format": FORMAT, "config": json.dumps(config.to_dict(), sort_keys=True), "state": state,
                "started": started},
               buffer)
    write_bytes_atomic(path, buffer.getvalue())


def load_checkpoint(path: Path, config: RecordConfig, device: torch.device) -> tuple[dict | None, str | None]:
    """(state, None) if ``path`` holds a readable checkpoint of exactly ``config``; else (None, a note
    saying why it is not used, or None if there is no checkpoint). The state's "started" is the time
    the cell began (None in a checkpoint that did not record it). A checkpoint's configuration is read
    as a record's is (bench.record: written before methods existed, it is the built-in method's)."""
    if not path.exists():
        return None, None
    try:
        saved = torch.load(path, map_location=device, weights_only=True)
        same = saved["format"] == FORMAT and RecordConfig.from_dict(json.loads(saved["config"]), schema=1) == config
        state = saved["state"] | {"started": saved.get("started")}
    except Exception as exc:  # truncated, corrupt or foreign file: whatever torch.load raises
        return None, f"checkpoint {path} is unreadable ({type(exc).__name__}); starting that cell afresh"
    if not same:
        return None, f"checkpoint {path} is of another configuration; starting that cell afresh"
    return state, None


def checkpoint_iteration(path: Path) -> int | None:
    """The iteration a checkpoint resumes at, or None if it cannot be read (the run that resumes
    will say so and start afresh)."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(saved["state"]["loop"]["next_iteration"])
    except Exception:  # truncated, corrupt or foreign file: whatever torch.load raises
        return None
