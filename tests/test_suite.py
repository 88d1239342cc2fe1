"""The suite's own behaviour without the images: loud locally, a failure in CI (tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import DOWNLOAD_CACHE, REPO_ROOT

NEEDS_DATA = "tests/test_masks.py::test_paper_mask_reads_the_published_masked_input"


def pytest_without_images(ci: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CI"} | {"DIP_DATA_DIR": "/nonexistent"} | ({"CI": "1"} if ci else {})
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", NEEDS_DATA],
                          check=False, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif((DOWNLOAD_CACHE / "house_GT.png").exists(), reason="the download cache holds the images")
def test_a_local_run_without_images_says_loudly_what_it_skipped():
    done = pytest_without_images(ci=False)
    assert done.returncode == 0, done.stdout
    assert "1 tests SKIPPED for want of the images: the end-to-end tests did not run" in done.stdout


@pytest.mark.skipif((DOWNLOAD_CACHE / "house_GT.png").exists(), reason="the download cache holds the images")
def test_ci_without_images_fails():
    done = pytest_without_images(ci=True)
    assert done.returncode == 1 and "CI needs the images: set DIP_DATA_DIR" in done.stdout, done.stdout
