"""Fixtures shared by the interlock pytest suite.

Every test gets its own lock directory (a file backend nobody else uses), so tests never meet
each other's locks, and nothing is left behind in the user's default directory.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

import interlock

# INTERLOCK_TEST_REQUIRE=1 (scripts/test.sh, CI): a missing tool fails instead of skipping.
REQUIRE = os.environ.get("INTERLOCK_TEST_REQUIRE") == "1"


def need(condition: bool, what: str) -> None:
    """Skips (locally) or fails (under INTERLOCK_TEST_REQUIRE=1) when `what` is missing."""
    if condition:
        return
    if REQUIRE:
        pytest.fail(f"{what} is required (INTERLOCK_TEST_REQUIRE=1)")
    pytest.skip(f"{what} is missing; install it to run this test")


@pytest.fixture
def lock_dir(tmp_path):
    d = tmp_path / "locks"
    d.mkdir(mode=0o700)
    return d


@pytest.fixture
def url(lock_dir):
    return f"file://{lock_dir}"


@pytest.fixture
def locks(url):
    return interlock.connect(url)


def python_child(code: str, *args: str, **kwargs) -> subprocess.Popen:
    """Starts `code` in a new Python process, text pipes on stdin and stdout."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"{what} is not listening on {port} after {timeout} s")


def stop(proc: subprocess.Popen) -> None:
    """Stops a process we started, by its pid."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def uwsgi_home() -> list:
    """uwsgi's arguments to embed this test run's Python environment: `--virtualenv` when the
    tests run in a virtual environment (where the package is installed), else nothing. uwsgi's
    own Python must be the environment's version."""
    return ["--virtualenv", sys.prefix] if sys.prefix != sys.base_prefix else []


@pytest.fixture
def interlock_bin() -> str:
    """The `interlock` binary: $INTERLOCK_BIN (scripts/test.sh sets it), else the workspace's
    target/debug/interlock (`cargo build -p interlock-cli`)."""
    path = os.environ.get("INTERLOCK_BIN") or str(Path(__file__).resolve().parents[2] / "target" / "debug" / "interlock")
    need(os.access(path, os.X_OK), f"the interlock binary ({path}; run `cargo build -p interlock-cli`)")
    return path


@pytest.fixture(scope="session")
def redis_url():
    """A private redis-server on a free loopback port (never the system one), for the session."""
    server = shutil.which("redis-server")
    need(server is not None, "redis-server")
    port = free_port()
    d = tempfile.mkdtemp(prefix="interlock-py-redis-")
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", d],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, proc, "redis-server")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop(proc)
        shutil.rmtree(d, ignore_errors=True)
