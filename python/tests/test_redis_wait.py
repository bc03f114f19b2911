"""A Python waiter that gives up (Ctrl-C's KeyboardInterrupt, a timeout) just before its
interpreter exits leaves nothing queued on Redis: the exit lets the wait's undo land, and the next
waiter gets the lock from the release at once, not after the gone waiter's lease (30 s here)."""

from __future__ import annotations

import signal
import threading
import time

import interlock

from conftest import need, python_child

try:
    import redis
except ImportError:  # scripts/test.sh installs it (the interop tests use it)
    redis = None

CHILD = """
import sys, interlock
locks = interlock.connect(sys.argv[1] + "?lease=30s")
m = locks.mutex(sys.argv[2])
print("waiting", flush=True)
{wait}
"""


def wait_until(cond, what, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.02)


def gone_waiter_then_next(redis_url, wait, end=None):
    need(redis is not None, "redis-py (pip install redis)")
    name = f"py-gone-{time.monotonic_ns()}"
    locks = interlock.connect(redis_url)
    r = redis.Redis.from_url(redis_url)
    queued = lambda: r.zcard("{%s}:q" % name)  # noqa: E731  (the waiters of lock `name`, see docs/backends/redis.md)
    holder = locks.mutex(name).acquire()
    child = python_child(CHILD.format(wait=wait), redis_url, name)
    try:
        assert child.stdout.readline().strip() == "waiting"
        wait_until(lambda: queued() == 1, "the child is queued")
        if end is not None:
            end(child)
        child.wait(timeout=20)
        assert queued() == 0, f"the gone waiter is still queued; its stderr: {child.stderr.read()}"

        got = []
        other = interlock.connect(redis_url)

        def next_waiter():
            got.append(other.mutex(name).acquire(timeout=20))
            got.append(time.monotonic())

        t = threading.Thread(target=next_waiter)
        t.start()
        wait_until(lambda: queued() == 1, "the next waiter is queued")
        released = time.monotonic()
        holder.release()
        t.join(timeout=30)
        took = got[1] - released
        print(f"the next waiter got the lock {took:.3f} s after the release")
        assert took < 6, took
        got[0].release()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_keyboard_interrupt_of_a_waiter_leaves_nothing_queued(redis_url):
    # Uncaught, the KeyboardInterrupt ends the interpreter right away.
    gone_waiter_then_next(redis_url, "m.acquire()", lambda child: child.send_signal(signal.SIGINT))


def test_a_waiter_that_times_out_and_exits_leaves_nothing_queued(redis_url):
    gone_waiter_then_next(
        redis_url,
        "try:\n    m.acquire(timeout=1)\nexcept interlock.Timeout:\n    sys.exit(0)",
    )
