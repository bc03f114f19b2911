"""Interop on the file backend: a lock taken from Python excludes `interlock run` / `interlock
hold` and `fcntl.flock` on the same name, and the other way round."""

from __future__ import annotations

import fcntl
import os
import subprocess

import interlock


def run(interlock_bin, url, *args, **kwargs):
    return subprocess.run([interlock_bin, *args], env=dict(os.environ, INTERLOCK_URL=url), **kwargs)


def test_python_excludes_interlock_run_and_back(locks, url, interlock_bin):
    m = locks.mutex("deploy")
    with m as g:
        r = run(interlock_bin, url, "run", "-n", "deploy", "--", "true")
        assert r.returncode == 1  # -n: held elsewhere
    r = run(interlock_bin, url, "run", "-n", "deploy", "--", "sh", "-c", 'echo "$INTERLOCK_TOKEN"', capture_output=True, text=True)
    assert r.returncode == 0
    assert int(r.stdout) > g.fencing_token

    hold = subprocess.Popen(
        [interlock_bin, "hold", "deploy"],
        env=dict(os.environ, INTERLOCK_URL=url),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = hold.stdout.readline().strip()
        assert line.startswith("token=")
        held_token = int(line.split("=")[1])
        assert m.acquire(blocking=False) is None
        hold.stdin.close()  # `interlock hold` releases when its stdin closes
        assert hold.wait(timeout=30) == 0
        g2 = m.acquire(timeout=10)
        assert g2.fencing_token > held_token
        g2.release()
    finally:
        if hold.poll() is None:
            hold.kill()
            hold.wait()


def test_python_excludes_fcntl_flock_and_back(locks, lock_dir):
    m = locks.mutex("report")
    with m:
        fd = os.open(lock_dir / "report", os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                raise AssertionError("fcntl.flock got a lock interlock holds")
            except BlockingIOError:
                pass
        finally:
            os.close(fd)
    fd = os.open(lock_dir / "report", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert m.acquire(blocking=False) is None
        try:
            m.acquire(timeout=0.1)
            raise AssertionError("acquired a lock fcntl.flock holds")
        except interlock.Timeout:
            pass
        fcntl.flock(fd, fcntl.LOCK_UN)
        g = m.acquire(timeout=10)  # a peer's LOCK_UN (no close) is seen by the bounded re-check
        g.release()
    finally:
        os.close(fd)


def test_shared_side_matches_flock_shared(locks, lock_dir):
    rw = locks.rwlock("cfg")
    with rw.read():
        fd = os.open(lock_dir / "cfg", os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # readers share
            assert rw.write().acquire(blocking=False) is None
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
