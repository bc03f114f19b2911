"""Fork safety: a lock held when the process forks stays the parent's; the child reconnects;
no descriptor of the lock directory survives into a child, so a lock never outlives its holder
in a child that never uses interlock.

Each case forks from a fresh helper process (never from the pytest process itself, which has
threads of its own), with os.fork (Python's at-fork hooks run), with libc's fork() called
directly (no Python hook runs: what uwsgi does; the library's own pthread_atfork handler runs
for both), and through multiprocessing's fork start method.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import interlock

from conftest import python_child

# Prelude of the helper processes: `fork()` is os.fork, or libc's fork when argv[2] == "libc"
# (then no Python at-fork hook runs in the child, as under uwsgi); `lock_fds()` lists this
# process's descriptors open on files of the lock directory; `blocked_in_kernel()` counts this
# process's flock requests waiting in the kernel.
PRELUDE = """
import ctypes, os, sys, time, interlock
url, how = sys.argv[1], sys.argv[2]
lock_dir = url[len("file://"):]
def fork():
    if how == "libc":
        return ctypes.CDLL(None, use_errno=True).fork()
    return os.fork()
def lock_fds():
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(lock_dir + "/"):
            out.append(os.path.basename(target))
    return sorted(out)
def report(*words):
    print(*words, flush=True)
def blocked_in_kernel():
    me = str(os.getpid())
    with open("/proc/locks") as f:
        return sum(1 for l in f if l.split()[1:3] == ["->", "FLOCK"] and l.split()[5] == me)
"""


def helper(code: str, url: str, how: str, *more: str) -> subprocess.Popen:
    return python_child(PRELUDE + textwrap.dedent(code), url, how, *more)


def lines(p: subprocess.Popen, timeout: float = 60) -> list:
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, err
    return out.split()


@pytest.mark.parametrize("how", ["os", "libc"])
def test_a_guard_held_at_fork_is_not_held_by_the_child(url, how):
    p = helper(
        """
        locks = interlock.connect(url)
        m = locks.mutex("job")
        g = m.acquire()
        pid = fork()
        if pid == 0:
            try:
                # Before any use of interlock in the child: the library's fork handler closed
                # the inherited descriptors, with os.fork and with libc's fork alike.
                report("child-fds-before", len(lock_fds()))
                report("lost", g.lost, "held", g.held)
                try:
                    g.release()
                    report("release-ok")
                except interlock.LockLost as e:
                    report("release-LockLost", "parent" in str(e) or "forked" in str(e))
                # The parent still holds it: the child's release did not unlock it.
                report("child-try", m.acquire(blocking=False) is None and "held" or "free")
                report("child-fds-after", len(lock_fds()))
                # The child's connection is its own and works: another lock, and a timed wait.
                with locks.mutex("other") as o:
                    report("other", o.held)
                try:
                    m.acquire(timeout=0.2)
                except interlock.Timeout:
                    report("child-timeout")
            finally:
                sys.stdout.flush()
                os._exit(0)
        os.waitpid(pid, 0)
        report("parent-held", g.held, "lost", g.lost)
        g.release()
        report("parent-released")
        """,
        url,
        how,
    )
    out = lines(p)
    assert out == [
        "child-fds-before", "0",
        "lost", "True", "held", "False",
        "release-LockLost", "True",
        "child-try", "held",
        "child-fds-after", "0",
        "other", "True",
        "child-timeout",
        "parent-held", "True", "lost", "False",
        "parent-released",
    ]  # fmt: skip


@pytest.mark.parametrize("how", ["os", "libc"])
def test_the_lock_does_not_outlive_its_holder_in_a_child(locks, url, how):
    # The holder forks a child that lives on, then the holder is killed: the lock must be free at
    # once, although the child inherited the holder's lock descriptor.
    p = helper(
        """
        locks = interlock.connect(url)
        g = locks.mutex("job").acquire()
        pid = fork()
        if pid == 0:
            locks.mutex("unrelated")      # any use of interlock in the child (libc fork: no hook)
            report("child", os.getpid())
            time.sleep(60)
            os._exit(0)
        sys.stdin.readline()
        """,
        url,
        how,
    )
    child = None
    try:
        out = p.stdout.readline().split()
        assert out[0] == "child"
        child = int(out[1])
        assert locks.mutex("job").acquire(blocking=False) is None  # the holder has it
        p.kill()
        p.wait()
        g = locks.mutex("job").acquire(timeout=10)
        assert g is not None
        g.release()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        if child:
            os.kill(child, signal.SIGKILL)


def test_a_provider_made_before_fork_reconnects_in_the_child(url):
    p = helper(
        """
        import fcntl, threading
        locks = interlock.connect(url)
        m = locks.mutex("job")
        # The parent waits for the lock once before the fork (a descriptor of its own held by
        # fcntl.flock in a thread for a moment), so its runtime and its file watcher (a thread
        # of its own) are running when it forks: the child must use neither.
        fd = os.open(os.path.join(lock_dir, "job"), os.O_RDONLY | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        def unlock_later():
            time.sleep(0.3); os.close(fd)
        t = threading.Thread(target=unlock_later); t.start()
        with m:
            pass
        t.join()
        h = m.acquire()              # held by the parent across the fork
        pid = fork()
        if pid == 0:
            try:
                # A wait in the child on a lock the parent holds: it must wake when the parent
                # releases (the child's own runtime and file watcher, not the parent's).
                t0 = time.monotonic()
                g = m.acquire(timeout=20)
                report("child-got", g.fencing_token > h.fencing_token, round(time.monotonic() - t0) < 15)
                g.release()
            finally:
                os._exit(0)
        time.sleep(0.5)
        h.release()
        _, status = os.waitpid(pid, 0)
        report("status", status)
        """,
        url,
        "os",
    )
    assert lines(p) == ["child-got", "True", "True", "status", "0"]


def test_multiprocessing_fork_pool_counts_exactly(url, lock_dir):
    counter = lock_dir / "counter"
    counter.write_text("0")
    p = helper(
        """
        import multiprocessing
        locks = interlock.connect(url)           # made before the pool forks its workers
        m = locks.mutex("counter")
        path = os.path.join(lock_dir, "counter")
        def work(_):
            for _ in range(25):
                with m:
                    with open(path) as f:
                        n = int(f.read())
                    time.sleep(0.0005)
                    with open(path, "w") as f:
                        f.write(str(n + 1))
            return os.getpid()
        if __name__ == "__main__":
            with m:                              # held by the parent while the pool forks
                ctx = multiprocessing.get_context("fork")
                pool = ctx.Pool(8)
            pids = pool.map(work, range(8))
            pool.close(); pool.join()
            report("workers", len(set(pids)) > 1)
        """,
        url,
        "os",
    )
    assert lines(p, timeout=120) == ["workers", "True"]
    assert int(counter.read_text()) == 200


@pytest.mark.parametrize("how", ["os", "libc"])
def test_redis_guard_held_at_fork(redis_url, how):
    # On a network backend the child must not touch the parent's connection: the parent's lock
    # stays held and its release afterwards is clean (not LockLost).
    p = helper(
        """
        locks = interlock.connect(url)
        m = locks.mutex("job-" + how)
        g = m.acquire()
        pid = fork()
        if pid == 0:
            try:
                report("lost", g.lost)
                try:
                    g.release()
                except interlock.LockLost:
                    report("release-LockLost")
                report("child-try", m.acquire(blocking=False) is None and "held" or "free")
                with locks.mutex("other-" + how) as o:
                    report("other", o.held)
            finally:
                sys.stdout.flush()
                os._exit(0)
        os.waitpid(pid, 0)
        report("parent-lost", g.lost)
        g.release()
        g2 = m.acquire(blocking=False)
        report("after", g2 is not None and g2.fencing_token > g.fencing_token)
        """,
        redis_url,
        how,
    )
    assert lines(p) == [
        "lost", "True", "release-LockLost", "child-try", "held", "other", "True",
        "parent-lost", "False", "after", "True",
    ]  # fmt: skip


def lock_dir_fds(pid: int, lock_dir) -> list:
    """The descriptors of process `pid` open on files of `lock_dir`."""
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(f"{lock_dir}/"):
            out.append(target)
    return sorted(out)


@pytest.mark.parametrize("how", ["os", "libc"])
@pytest.mark.parametrize("when", ["cached", "held", "waiting"])
def test_a_killed_holder_leaves_no_lock_in_a_child_that_never_used_interlock(locks, url, lock_dir, how, when):
    # The holder forks a child that never touches interlock (a worker), then holds the lock:
    # with a descriptor it kept from earlier acquisitions (cached: the lock file's and the fencing
    # counter's), one it held at the fork (held), or one waiting in the kernel at the fork
    # (waiting). Killed with SIGKILL, the lock must be free at once while the child lives.
    # (waiting: the helper waits for our lock, and forks while its wait is in the kernel.)
    holder = locks.mutex("job").acquire() if when == "waiting" else None
    p = helper(
        """
        import threading
        locks = interlock.connect(url)
        m = locks.mutex("job")
        when = sys.argv[3]
        def fork_worker():
            pid = fork()
            if pid == 0:
                time.sleep(120)
                os._exit(0)
            report("child", pid)
        if when == "cached":
            for _ in range(2):
                with m:
                    pass
            fork_worker()
            g = m.acquire()
        elif when == "held":
            g = m.acquire()
            fork_worker()
        else:
            def fork_while_waiting():
                deadline = time.monotonic() + 20
                while blocked_in_kernel() == 0:
                    if time.monotonic() > deadline:
                        os._exit(3)  # the test then sees the output end, not a hang
                    time.sleep(0.01)
                fork_worker()
            t = threading.Thread(target=fork_while_waiting)
            t.start()
            g = m.acquire(timeout=60)
            t.join()
        report("held", g.fencing_token)
        sys.stdin.readline()
        """,
        url,
        how,
        when,
    )
    child = None
    try:
        out = p.stdout.readline().split()
        assert out and out[0] == "child", (out, p.stderr.read() if p.poll() is not None else "")
        child = int(out[1])
        if holder is not None:
            holder.release()
        out = p.stdout.readline().split()
        assert out[0] == "held", (out, p.stderr.read() if p.poll() is not None else "")
        assert locks.mutex("job").acquire(blocking=False) is None  # the helper has it
        p.kill()
        p.wait()
        assert os.path.exists(f"/proc/{child}"), "the child lives on"
        g = locks.mutex("job").acquire(blocking=False)
        assert g is not None, f"{when}/{how}: the lock outlived its SIGKILLed holder in its child"
        assert lock_dir_fds(child, lock_dir) == []
        g.release()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        if child:
            os.kill(child, signal.SIGKILL)


def test_a_killed_holder_leaves_no_lock_in_its_multiprocessing_pool_workers(locks, url, lock_dir):
    # A pool (fork start method) whose workers never use interlock, forked after the parent took
    # and released the lock (its descriptors kept) and while it holds another; the parent then
    # takes the lock again (with the kept descriptor) and is SIGKILLed: both locks are free at
    # once, though the workers live on.
    p = helper(
        """
        import multiprocessing
        locks = interlock.connect(url)
        m = locks.mutex("job")
        def worker_pid(_):
            time.sleep(0.05)
            return os.getpid()
        if __name__ == "__main__":
            for _ in range(2):
                with m:
                    pass
            other = locks.mutex("other").acquire()
            pool = multiprocessing.get_context("fork").Pool(2)
            workers = sorted(set(pool.map(worker_pid, range(8), chunksize=1)))
            g = m.acquire()
            report("held", *workers)
            sys.stdin.readline()
        """,
        url,
        "os",
    )
    workers = []
    try:
        out = p.stdout.readline().split()
        assert out and out[0] == "held", (out, p.stderr.read() if p.poll() is not None else "")
        workers = [int(w) for w in out[1:]]
        assert workers
        assert locks.mutex("job").acquire(blocking=False) is None
        p.kill()
        p.wait()
        assert all(os.path.exists(f"/proc/{w}") for w in workers), "the workers live on"
        for name in ("job", "other"):
            g = locks.mutex(name).acquire(blocking=False)
            assert g is not None, f"{name}: the lock outlived its SIGKILLed holder in its pool workers"
            g.release()
        assert [lock_dir_fds(w, lock_dir) for w in workers] == [[] for _ in workers]
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        for w in workers:
            try:
                os.kill(w, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.parametrize("how", ["os", "libc"])
def test_a_child_leaves_the_parents_background_tasks_alone(url, how):
    # memory://?expiry=session: the provider's session is kept alive by a background task of the
    # provider. A child that closes and drops the provider it inherited reconnects, and closes
    # and drops its own: the parent's task, its session and the lock of it live on.
    p = helper(
        """
        locks = interlock.connect("memory://forked?expiry=session&lease=600ms")
        g = locks.mutex("job").acquire()
        pid = fork()
        if pid == 0:
            try:
                locks.close()
                del locks
                report("child-ok")
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        time.sleep(2)  # three session leases: only the parent's keep-alive keeps it
        report("status", status, "lost", g.lost)
        g.release()
        report("released")
        """,
        url,
        how,
    )
    assert lines(p) == ["child-ok", "status", "0", "lost", "False", "released"]
