"""Fixtures shared by the interlock pytest suite.

Every test gets its own lock directory (a file backend nobody else uses), so tests never meet
each other's locks, and nothing is left behind in the user's default directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

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
