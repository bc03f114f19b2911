"""Interpreter exit: providers and guards dropped while Python finalizes never panic, in any
thread, with or without a runtime, and locks still held are released (or left to the kernel or
the lease) without a traceback. uWSGI finalizes Python in a C `atexit` handler, after the main
thread's thread-locals are destroyed (where tokio cannot be entered): its shutdown is the case
of issue 15, item 3.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

import interlock

from conftest import free_port, need, uwsgi_home, wait_for_port

# What a Rust panic, a Python traceback or a crash would leave in a log.
BAD = ("panicked", "PanicException", "Traceback", "Fatal Python error", "Segmentation fault", "core dumped")

UWSGI_APP = """
import atexit, os
import interlock

locks = interlock.connect(os.environ["APP_LOCK_URL"])
if os.environ.get("APP_HOLD") == "1":
    # Held until the process ends: its guard is dropped while Python finalizes.
    held = locks.mutex(os.environ["APP_LOCK_NAME"]).acquire()


def in_atexit():
    # A wait and a release in an atexit hook: under uWSGI they run after the thread's
    # thread-locals are gone (and in a forked worker, interlock's first use builds a runtime).
    with locks.mutex(os.environ["APP_LOCK_NAME"] + "-atexit") as guard:
        print("ATEXIT-LOCKED", os.getpid(), guard.fencing_token > 0, flush=True)


atexit.register(in_atexit)
print("LOADED", os.getpid(), flush=True)


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
"""


def unique_name() -> str:
    """A lock name of this test alone (the Redis server is shared by the session)."""
    return f"exit-{uuid.uuid4().hex}"


def need_uwsgi():
    need(shutil.which("uwsgi") is not None, "uwsgi (pip install uwsgi)")


def run_uwsgi_and_interrupt(tmp_path, lock_url: str, name: str, args: list, hold: bool) -> str:
    """Starts uwsgi on the app above, waits until it serves, sends it SIGINT, and returns its
    log once it has exited (cleanly: asserted here)."""
    app = tmp_path / "exitapp.py"
    app.write_text(UWSGI_APP)
    log = tmp_path / "uwsgi.log"
    port = free_port()
    argv = [
        shutil.which("uwsgi"), "--http-socket", f"127.0.0.1:{port}", "--wsgi-file", str(app),
        "--disable-logging", *args, *uwsgi_home(),
    ]  # fmt: skip
    env = dict(os.environ, APP_LOCK_URL=lock_url, APP_LOCK_NAME=name, APP_HOLD="1" if hold else "0")
    with open(log, "w") as out:
        server = subprocess.Popen(
            argv, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
        )
    try:
        wait_for_port(port, server, "uwsgi")
        # The workers are up and have loaded the app (with --lazy-apps, after the port opens).
        deadline = time.monotonic() + 30
        while "LOADED" not in log.read_text() or "spawned uWSGI worker" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        time.sleep(0.3)
        server.send_signal(signal.SIGINT)
        code = server.wait(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    text = log.read_text()
    # Without --master uwsgi ends with its "end" code, 30; the master exits with 0.
    assert code in (0, 30), f"uwsgi exited with {code}:\n{text[-3000:]}"
    return text


UWSGI_CONFIGS = {
    "single": [],
    "master": ["--master"],
    "master-threads": ["--master", "--threads", "4"],
    "threads": ["--threads", "4"],
}


@pytest.mark.parametrize("config", list(UWSGI_CONFIGS))
@pytest.mark.parametrize("backend", ["file", "redis"])
def test_uwsgi_shutdown_has_no_panic(tmp_path, request, url, backend, config):
    # The app of the issue: it only connects (and locks once in an atexit hook); SIGINT ends
    # uwsgi without a panic or a traceback, and the atexit hook's lock works.
    need_uwsgi()
    lock_url = url if backend == "file" else request.getfixturevalue("redis_url")
    name = unique_name()
    text = run_uwsgi_and_interrupt(tmp_path, lock_url, name, UWSGI_CONFIGS[config], hold=False)
    assert not [b for b in BAD if b in text], text[-4000:]
    assert "ATEXIT-LOCKED" in text and "True" in text.split("ATEXIT-LOCKED", 1)[1].splitlines()[0], text[-4000:]
    g = interlock.connect(lock_url).mutex(name + "-atexit").acquire(blocking=False)
    assert g is not None
    g.release()


@pytest.mark.parametrize("config", ["single", "threads", "master-lazy-apps"])
@pytest.mark.parametrize("backend", ["file", "redis"])
def test_uwsgi_worker_holding_a_lock_at_shutdown_releases_it(tmp_path, request, url, backend, config):
    # A worker that holds a lock when uwsgi stops drops its guard while Python finalizes (in
    # the C atexit handler): the lock is free right after uwsgi has exited, on Redis too (a
    # lease of 10 s would still hold it). The master of a fork-after-import uwsgi never
    # finalizes Python (its guards are left to the kernel or the lease): not this case.
    need_uwsgi()
    lock_url = url if backend == "file" else request.getfixturevalue("redis_url")
    args = {"single": [], "threads": ["--threads", "4"], "master-lazy-apps": ["--master", "--lazy-apps"]}[config]
    name = unique_name()
    text = run_uwsgi_and_interrupt(tmp_path, lock_url, name, args, hold=True)
    assert not [b for b in BAD if b in text], text[-4000:]
    g = interlock.connect(lock_url).mutex(name).acquire(blocking=False)
    assert g is not None, "the lock held by the stopped worker is still held"
    g.release()


def need_gunicorn():
    try:
        import gunicorn  # noqa: F401
    except ImportError:
        need(False, "gunicorn (pip install gunicorn)")


GUNICORN_CONFIGS = {
    "sync": [],
    "preload": ["--preload"],
    "threads": ["--threads", "4"],
    "preload-2x2": ["--preload", "--workers", "2", "--threads", "2"],
}


@pytest.mark.parametrize("config", list(GUNICORN_CONFIGS))
@pytest.mark.parametrize("backend", ["file", "redis"])
def test_gunicorn_shutdown_has_no_panic_and_frees_a_held_lock(tmp_path, request, url, backend, config):
    # The same app under gunicorn: each worker holds a lock when gunicorn gets SIGINT (taken at
    # import: in the master with --preload, where the workers inherit a guard they never held).
    # No panic or traceback, the atexit hooks' locks work, and once gunicorn has exited every
    # lock is free, on Redis too.
    need_gunicorn()
    lock_url = url if backend == "file" else request.getfixturevalue("redis_url")
    name = unique_name()
    app = tmp_path / "exitapp.py"
    app.write_text(UWSGI_APP)
    log = tmp_path / "gunicorn.log"
    port = free_port()
    argv = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", *GUNICORN_CONFIGS[config], "exitapp:application"]
    env = dict(os.environ, APP_LOCK_URL=lock_url, APP_LOCK_NAME=name, APP_HOLD="1", PYTHONPATH=str(tmp_path))
    with open(log, "w") as out:
        server = subprocess.Popen(
            argv, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
        )
    try:
        wait_for_port(port, server, "gunicorn")
        deadline = time.monotonic() + 30
        while "Booting worker" not in log.read_text() or "LOADED" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        time.sleep(0.5)
        server.send_signal(signal.SIGINT)
        code = server.wait(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    text = log.read_text()
    assert code == 0, f"gunicorn exited with {code}:\n{text[-3000:]}"
    assert not [b for b in BAD if b in text], text[-4000:]
    assert "ATEXIT-LOCKED" in text, text[-4000:]
    for lock in (name, name + "-atexit"):
        g = interlock.connect(lock_url).mutex(lock).acquire(blocking=False)
        assert g is not None, f"{lock} is still held after gunicorn exited:\n{text[-3000:]}"
        g.release()


PLAIN_EXITS = {
    # A guard in a module global, dropped while Python clears the modules.
    "global": """
        guard = locks.mutex(sys.argv[2]).acquire()
    """,
    # The provider goes first, then the guard (a cycle collected at exit).
    "cycle": """
        guard = locks.mutex(sys.argv[2]).acquire()
        cycle = [guard, locks]
        cycle.append(cycle)
        del guard, locks
    """,
    # Released by an atexit hook.
    "atexit": """
        import atexit
        guard = locks.mutex(sys.argv[2]).acquire()
        atexit.register(guard.release)
    """,
    # Taken by asyncio, kept past the loop's end.
    "asyncio": """
        import asyncio
        async def take():
            return await locks.mutex(sys.argv[2]).acquire_async()
        guard = asyncio.run(take())
    """,
    # Taken by another thread and left in a global when that thread ended.
    "thread": """
        import threading
        box = []
        t = threading.Thread(target=lambda: box.append(locks.mutex(sys.argv[2]).acquire()))
        t.start()
        t.join()
    """,
}


@pytest.mark.parametrize("how", list(PLAIN_EXITS))
@pytest.mark.parametrize("backend", ["file", "redis"])
def test_interpreter_exit_with_a_guard_still_held(request, url, backend, how):
    lock_url = url if backend == "file" else request.getfixturevalue("redis_url")
    name = unique_name()
    code = "import interlock, sys\nlocks = interlock.connect(sys.argv[1])\n" + textwrap.dedent(PLAIN_EXITS[how])
    done = subprocess.run(
        [sys.executable, "-c", code, lock_url, name], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    g = interlock.connect(lock_url).mutex(name).acquire(blocking=False)
    assert g is not None, "the guard left at interpreter exit still holds the lock"
    g.release()
