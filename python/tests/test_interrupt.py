"""Ctrl-C during a wait: KeyboardInterrupt cancels it and leaves nothing held; on the file backend
the wait queued in the kernel ends when the lock comes to it."""

from __future__ import annotations

import signal
import subprocess
import time

import interlock

from conftest import python_child


def test_sigint_cancels_a_wait_and_leaves_nothing(locks, url):
    holder = locks.mutex("busy").acquire()
    child = python_child(
        """
        import sys, traceback, interlock
        locks = interlock.connect(sys.argv[1])
        m = locks.mutex("busy")
        try:
            print("waiting", flush=True)
            m.acquire()
            print("acquired?!", flush=True)
        except KeyboardInterrupt as e:
            # Where the interrupt landed: inside interlock's acquire, not before it.
            print("interrupted in", traceback.extract_tb(e.__traceback__)[-1].name, flush=True)
        sys.stdin.readline()               # the parent released its lock
        g = m.acquire(blocking=False)      # nothing of the cancelled wait is in the way
        print("free" if g is not None else "held", flush=True)
        """,
        url,
    )
    try:
        assert child.stdout.readline().strip() == "waiting"
        time.sleep(1)  # let it block in acquire()
        child.send_signal(signal.SIGINT)
        assert child.stdout.readline().strip() == "interrupted in acquire"
        holder.release()
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "free"
        assert child.wait(timeout=30) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    # And the child's interrupted wait left no lock behind.
    g = locks.mutex("busy").acquire(blocking=False)
    assert g is not None


def test_an_interrupted_file_wait_stays_queued_in_the_kernel_until_the_lock_comes(locks, url, interlock_bin):
    # What docs/python.md says of Ctrl-C on the file backend: the child holds nothing, but its
    # wait in the kernel stays queued (status counts it) until the lock comes to it, and is then
    # unlocked at once (the ghost hold): the lock is free again, with the child still alive.
    holder = locks.mutex("queued").acquire()
    child = python_child(
        """
        import sys, interlock
        m = interlock.connect(sys.argv[1]).mutex("queued")
        try:
            print("waiting", flush=True)
            m.acquire()
        except KeyboardInterrupt:
            print("interrupted", flush=True)
        sys.stdin.readline()
        """,
        url,
    )

    def status() -> str:
        done = subprocess.run([interlock_bin, "status", "-u", url, "queued"], capture_output=True, text=True, timeout=30)
        return done.stdout.strip()

    try:
        assert child.stdout.readline().strip() == "waiting"
        time.sleep(1)
        child.send_signal(signal.SIGINT)
        assert child.stdout.readline().strip() == "interrupted"
        assert "1 waiting" in status()
        holder.release()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not status().startswith("queued: free"):
            time.sleep(0.05)
        assert status().startswith("queued: free")
        g = locks.mutex("queued").acquire(blocking=False)
        assert g is not None
        g.release()
        child.stdin.write("done\n")
        child.stdin.flush()
        assert child.wait(timeout=30) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
