"""Shared fixtures. The images come from a data directory: $DIP_DATA_DIR, else ../shared (CI's layout)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "datasets" / "dip-restoration-50p"


def _find_data_dir() -> Path | None:
    for candidate in (os.environ.get("DIP_DATA_DIR"), SHARED_DATA):
        if candidate and (Path(candidate) / "house_GT.png").exists():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The verified image directory. In CI a missing one is a failure, not a skip."""
    found = _find_data_dir()
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("CI needs the images: set DIP_DATA_DIR or provide ../shared/datasets/dip-restoration-50p")
        pytest.skip("no image data directory (set DIP_DATA_DIR)")
    return found


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch):
    """Tests never download from the pinned URLs: any mirror must be set by the test itself."""
    monkeypatch.delenv("DIP_DATA_URL", raising=False)
