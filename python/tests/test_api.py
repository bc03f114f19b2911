"""The API: acquisition forms, guards, primitives, context managers, decorators, errors."""

from __future__ import annotations

import threading
import time

import pytest

import interlock


def test_mutex_context_manager_gives_the_guard(locks):
    m = locks.mutex("jobs")
    with m as guard:
        assert isinstance(guard, interlock.Guard)
        assert isinstance(guard.fencing_token, int)
        assert guard.lost is False
        assert guard.held is True
        assert guard.name == "jobs" and guard.kind == "mutex"
        assert m.acquire(blocking=False) is None
    assert guard.held is False
    again = m.acquire(blocking=False)
    assert again is not None
    again.release()


def test_fencing_tokens_increase(locks):
    m = locks.mutex("fence")
    tokens = []
    for _ in range(5):
        with m as g:
            tokens.append(g.fencing_token)
    assert tokens == sorted(tokens) and len(set(tokens)) == 5


def test_acquire_forms(locks):
    m = locks.mutex("forms")
    g = m.acquire()
    assert m.acquire(blocking=False) is None
    t0 = time.monotonic()
    with pytest.raises(interlock.Timeout) as e:
        m.acquire(timeout=0.2)
    assert time.monotonic() - t0 >= 0.19
    assert isinstance(e.value, TimeoutError)
    assert str(e.value) == 'timed out after 200ms waiting for lock "forms"'
    with pytest.raises(interlock.Timeout):
        m.acquire(timeout=0)
    g.release()
    g2 = m.acquire(timeout=5)
    g2.release()


def test_acquire_arguments_as_threading_lock(locks):
    m = locks.mutex("args")
    with pytest.raises(ValueError, match="non-blocking"):
        m.acquire(blocking=False, timeout=1)
    with pytest.raises(ValueError, match="non-negative"):
        m.acquire(timeout=-2)
    with pytest.raises(ValueError):
        m.acquire(timeout=float("nan"))
    g = m.acquire(timeout=None)  # None waits forever, as -1
    g.release()


def test_blocking_takes_ints_as_threading_lock(locks):
    # threading.Lock.acquire takes `blocking` by its truth value (integers only before Python
    # 3.13), and refuses a timeout with a non-blocking call with ValueError.
    m = locks.mutex("ints")
    g = m.acquire(blocking=1)
    assert g is not None
    assert m.acquire(blocking=0) is None
    assert m.acquire(0) is None
    assert m.acquire(blocking=0, timeout=-1) is None
    assert m.acquire(blocking=[]) is None
    with pytest.raises(ValueError, match="non-blocking"):
        m.acquire(blocking=0, timeout=1)
    with pytest.raises(ValueError, match="non-blocking"):
        m.acquire(blocking=False, timeout=0)
    with pytest.raises(interlock.Timeout):
        m.acquire(2, timeout=0.05)
    g.release()
    g = m.acquire(blocking=1, timeout=5)
    g.release()


def test_guard_context_manager_and_double_release(locks):
    m = locks.mutex("twice")
    with m.acquire(timeout=10) as guard:
        assert guard.held
    assert not guard.held
    with pytest.raises(interlock.NotHeld) as e:
        guard.release()
    assert isinstance(e.value, RuntimeError)
    assert str(e.value) == 'lock "twice" is not held: this guard was already released'
    g = m.acquire()
    g.release()
    with pytest.raises(interlock.NotHeld):
        g.release()
    # An explicit release inside `with guard:` is fine: the exit sees it released.
    with m.acquire() as g3:
        g3.release()
    assert m.acquire(blocking=False) is not None


def test_dropping_a_guard_releases_it(locks):
    m = locks.mutex("drop")
    g = m.acquire()
    del g
    g = m.acquire(blocking=False)
    assert g is not None


def test_rwlock(locks):
    rw = locks.rwlock("config")
    with rw.read() as r1, rw.read() as r2:
        assert r1.kind == "read" and r2.kind == "read"
        assert rw.write().acquire(blocking=False) is None
    w = rw.write().acquire()
    assert w.kind == "write"
    assert rw.read().acquire(blocking=False) is None
    w.release()


def test_semaphore(locks):
    s = locks.semaphore("gpu", permits=2)
    assert s.permits == 2
    a = s.acquire()
    b = s.acquire()
    assert s.acquire(blocking=False) is None
    a.release()
    with s:
        assert s.acquire(blocking=False) is None
    b.release()
    for too_few in (0, -1):
        with pytest.raises(interlock.InvalidArgument, match="at least 1 permit"):
            locks.semaphore("gpu", too_few)
    # Not an int: said so, not "at least 1 permit" for 2.0.
    for not_int in (2.0, "2", None, True):
        with pytest.raises(interlock.InvalidArgument, match="permits are an int"):
            locks.semaphore("gpu", not_int)
    # Beyond what the core counts (a u32): InvalidArgument too, not OverflowError.
    for too_many in (2**32, 2**64, 10**30):
        with pytest.raises(interlock.InvalidArgument, match="at most 4294967295 permits"):
            locks.semaphore("gpu", too_many)
    assert locks.semaphore("big", 2**32 - 1).permits == 2**32 - 1
    # Holders that disagree on the permits count: the second is refused.
    with s:
        with pytest.raises(interlock.PermitsMismatch):
            locks.semaphore("gpu", 3).acquire(blocking=False)


def test_decorator(locks):
    m = locks.mutex("nightly-report")

    @m
    def report(x):
        assert m.acquire(blocking=False) is None
        return x * 2

    assert report(21) == 42
    assert report.__name__ == "report"
    assert m.acquire(blocking=False) is not None


def test_not_reentrant_says_so(locks):
    m = locks.mutex("reent")
    with m:
        with pytest.raises(interlock.WouldDeadlock):
            with m:
                pass
        with pytest.raises(interlock.WouldDeadlock):
            locks.mutex("reent").acquire()
        # With a timeout it is an ordinary wait for another holder.
        with pytest.raises(interlock.Timeout):
            m.acquire(timeout=0.05)
        # Other threads just wait.
        seen = []
        t = threading.Thread(target=lambda: seen.append(m.acquire(blocking=False)))
        t.start()
        t.join()
        assert seen == [None]


def test_nested_distinct_locks(locks):
    a, b = locks.mutex("a"), locks.mutex("b")
    with a as ga:
        with b as gb:
            assert ga.held and gb.held
        assert not gb.held and ga.held
    assert not ga.held


def test_bad_names(locks):
    for bad, why in [("", "must not be empty"), ("a\0b", "NUL"), ("x" * 1025, "1024")]:
        with pytest.raises(interlock.InvalidName, match=why) as e:
            locks.mutex(bad)
        assert isinstance(e.value, ValueError)
    # Any other non-empty UTF-8 name is fine, and stays inside the directory.
    with locks.mutex("../../etc/passwd"), locks.mutex("é/ü"):
        pass


def test_bad_urls():
    with pytest.raises(interlock.InvalidUrl, match="unknown scheme"):
        interlock.connect("gopher://x")
    with pytest.raises(interlock.InvalidUrl):
        interlock.connect("no scheme")
    with pytest.raises(interlock.InvalidUrl, match="unknown option"):
        interlock.connect("memory://?bogus=1")


def test_errors_never_show_a_password():
    with pytest.raises(interlock.Error) as e:
        interlock.connect("redis://user:s3cret@127.0.0.1:1/0?connect_timeout=2s")
    assert "s3cret" not in str(e.value)
    assert "s3cret" not in repr(e.value)
    with pytest.raises(interlock.InvalidUrl) as e:
        interlock.connect("memory://u:s3cret@?bogus=1")
    assert "s3cret" not in str(e.value)
    # Options whose names look secret: refused as unknown, their values never shown.
    for url in (
        "memory://?password=s3cret",
        "memory://?lease=1s&auth_token=s3cret",
        "redis://127.0.0.1:1/0?API_KEY=s3cret",
        "file:///tmp/x?Passwd=s3cret",
        "redis://127.0.0.1:1/0?secret=s3:cret@x",
    ):
        with pytest.raises(interlock.InvalidUrl, match="unknown option") as e:
            interlock.connect(url)
        assert "s3" not in str(e.value) and "s3" not in repr(e.value), str(e.value)
    with pytest.raises(interlock.InvalidUrl) as e:
        interlock.connect("memory://?password=s3cret")
    assert str(e.value).startswith("invalid lock URL `memory://?password=***`: unknown option `password`")


def test_unavailable_is_a_connection_error():
    with pytest.raises(interlock.Unavailable) as e:
        interlock.connect("redis://127.0.0.1:1/0?connect_timeout=2s")
    assert isinstance(e.value, ConnectionError)
    assert str(e.value).startswith("redis: unavailable: ")


def test_default_url(monkeypatch, lock_dir):
    monkeypatch.delenv("INTERLOCK_URL", raising=False)
    assert interlock.default_url() == "file://"
    monkeypatch.setenv("INTERLOCK_URL", "  ")
    assert interlock.default_url() == "file://"
    monkeypatch.setenv("INTERLOCK_URL", f"file://{lock_dir}")
    locks = interlock.connect()
    assert locks.url == f"file://{lock_dir}" and locks.backend == "file"
    with locks.mutex("env"):
        assert (lock_dir / "env").exists()


def test_memory_backend_and_close():
    locks = interlock.connect("memory://py-close")
    assert locks.backend == "memory"
    with locks.mutex("x"):
        pass
    locks.close()
    with pytest.raises(interlock.Unavailable):
        locks.mutex("x").acquire()


def test_threads_are_independent_holders(locks, lock_dir):
    counter = lock_dir / "counter"
    counter.write_text("0")
    m = locks.mutex("counter")

    def work():
        for _ in range(50):
            with m:
                n = int(counter.read_text())
                time.sleep(0.0001)
                counter.write_text(str(n + 1))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert int(counter.read_text()) == 400


def test_waits_release_the_gil(locks):
    # While the main thread waits for the lock, another Python thread keeps running.
    m = locks.mutex("gil")
    g = m.acquire()
    ticks = []
    stop = threading.Event()

    def ticker():
        while not stop.is_set():
            ticks.append(1)
            time.sleep(0.001)

    t = threading.Thread(target=ticker)
    t.start()
    with pytest.raises(interlock.Timeout):
        m.acquire(timeout=0.3)
    stop.set()
    t.join()
    g.release()
    assert len(ticks) > 10
