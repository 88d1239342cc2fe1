"""Shared fixtures. The images come from a data directory: $DIP_DATA_DIR (CI sets it), else the
download cache datasets/cache (filled by a first `make bench`)."""

from __future__ import annotations

import functools
import http.server
import os
import threading
from pathlib import Path

import pytest
from hypothesis import settings

# In CI the property tests draw the same examples every time (a red CI is reproducible); locally
# they explore afresh on each run.
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

REPO_ROOT = Path(__file__).resolve().parents[1]
DOWNLOAD_CACHE = REPO_ROOT / "datasets" / "cache"


def _find_data_dir() -> Path | None:
    for candidate in (os.environ.get("DIP_DATA_DIR"), DOWNLOAD_CACHE):
        if candidate and (Path(candidate) / "house_GT.png").exists():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The verified image directory. In CI a missing one is a failure, not a skip."""
    found = _find_data_dir()
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("CI needs the images: set DIP_DATA_DIR to a directory holding them")
        pytest.skip(NO_DATA)
    return found


NO_DATA = "no image data directory (set DIP_DATA_DIR, or run `make bench` once to download the images)"


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter) -> None:
    """Say loudly when the tests that need the images were skipped: a green run without them has not run
    the end-to-end tests (training, the harness, the regression check), only the unit tests."""
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if NO_DATA in str(r.longrepr)]
    if skipped:
        terminalreporter.write_sep("!", f"{len(skipped)} tests SKIPPED for want of the images: the end-to-end tests "
                                        "did not run; set DIP_DATA_DIR (CI fails instead of skipping)", red=True, bold=True)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch):
    """Tests never download from the pinned URLs: any mirror must be set by the test itself."""
    monkeypatch.delenv("DIP_DATA_URL", raising=False)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def serve(tmp_path, monkeypatch):
    """serve({name: bytes}) starts an HTTP server on 127.0.0.1 with those files and points
    $DIP_DATA_URL (the download mirror) at it; the server stops after the test."""
    servers = []

    def start(files: dict[str, bytes]) -> http.server.ThreadingHTTPServer:
        served = tmp_path / f"served{len(servers)}"
        served.mkdir()
        for name, payload in files.items():
            (served / name).write_bytes(payload)
        handler = functools.partial(_QuietHandler, directory=str(served))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        monkeypatch.setenv("DIP_DATA_URL", f"http://127.0.0.1:{server.server_address[1]}/")
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()
