"""`make campaign`: the paper profile on a CPU over many sessions, outside the checkout."""

import os
import shutil
import subprocess

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def make(*args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k != "DIP_RUNS_DIR"}
    return subprocess.run(["make", "--no-print-directory", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          env=clean | env, timeout=60)


@pytest.mark.parametrize("target", ["campaign", "campaign-report"])
def test_a_campaign_needs_a_runs_directory_outside_the_checkout(target):
    done = make(target)
    assert done.returncode == 2
    assert done.stderr.splitlines()[0].startswith("error: set DIP_RUNS_DIR to")


def test_the_campaign_checkpoints_every_250_iterations_into_two_results_directories(tmp_path):
    commands = make("-n", "campaign", DIP_RUNS_DIR=str(tmp_path)).stdout.splitlines()[1:]
    assert len(commands) == 3
    fast, reference, large = commands
    for command in commands:
        assert "-m bench run --profile paper --seeds 0 --checkpoint-every 250" in command
    assert fast.endswith('--images house,cman,peppers,montage --results-dir "$DIP_RUNS_DIR/paper"')
    assert reference.endswith('--images house --path reference --results-dir "$DIP_RUNS_DIR/paper-reference"')
    assert large.endswith('--images barbara,boat,lena,couple,fingerprint,hill,man --results-dir "$DIP_RUNS_DIR/paper"')
