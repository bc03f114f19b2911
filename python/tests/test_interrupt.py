"""Ctrl-C during a wait: KeyboardInterrupt cancels it and leaves nothing behind."""

from __future__ import annotations

import signal
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
