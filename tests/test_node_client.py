"""A client in another language: tests/node/client.test.mjs (Node.js with
@grpc/grpc-js and @grpc/proto-loader, loading protos/ at run time) against a
real server started here. Installs the npm packages (`npm ci`, from the
committed package-lock.json) when tests/node/node_modules is missing.

Without node and npm the test is skipped, saying so; with
FLOWTRACK_REQUIRE_NODE_TEST=1 (set by .ci/run when node is present) it fails
instead, so CI cannot skip it silently."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ServerThread

# slow: node and npm (the quick loop, `pytest -m "not slow"`, leaves it out)
pytestmark = pytest.mark.slow

NODE_DIR = Path(__file__).resolve().parent / "node"
REQUIRED = os.environ.get("FLOWTRACK_REQUIRE_NODE_TEST") == "1"


def _missing(why: str) -> None:
    if REQUIRED:
        pytest.fail(f"{why}, but FLOWTRACK_REQUIRE_NODE_TEST=1")
    pytest.skip(f"{why}: the Node.js client test did not run")


def test_node_client_records_events_reads_stats_and_streams_the_report(server: ServerThread) -> None:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        _missing("node or npm not found on PATH")
    assert node is not None and npm is not None
    # Both backends' runs of this test may start at once (pytest-xdist
    # workers), and `npm ci` first removes node_modules: one installs while
    # holding the lock, the other waits and finds it installed.
    with open(NODE_DIR / ".npm-ci.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
            installed = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"],
                cwd=NODE_DIR,
                capture_output=True,
                text=True,
                timeout=300,
            )
            if installed.returncode != 0:
                _missing(f"npm ci failed (exit {installed.returncode}): {installed.stderr.strip()[-2000:]}")
    env = {**os.environ, "FLOWTRACK_NODE_TEST_ADDRESS": server.address}
    ran = subprocess.run(
        [node, "--test", "--test-reporter=tap", "client.test.mjs"],
        cwd=NODE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = ran.stdout + ran.stderr
    assert ran.returncode == 0, output
    # It ran (and was not skipped): one test, passed.
    assert "# pass 1" in output and "# skipped 0" in output and "# fail 0" in output, output
