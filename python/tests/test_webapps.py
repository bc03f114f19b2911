"""The web-app case: a Flask app served by uwsgi (4 processes x 4 threads, with and without
--lazy-apps) and by gunicorn --preload, whose /run starts a thread doing 100 read-increment-write
cycles of a counter file under `locks.mutex(...)`. After 4 concurrent calls the total is exactly
400. The same app with `multiprocessing.Lock` or a per-process `fcntl.flock` helper loses updates.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from conftest import free_port, need, stop, uwsgi_home, wait_for_port

APP = '''
import fcntl, multiprocessing, os, threading, time
from flask import Flask
import interlock

MODE = os.environ["APP_MODE"]                 # interlock | mp-lock | flock-helper
COUNTER = os.environ["APP_COUNTER"]
DONE = os.environ["APP_DONE"]

# Made at import: in the master before the workers fork (uwsgi without --lazy-apps, gunicorn
# --preload), or in each worker (--lazy-apps).
locks = interlock.connect(os.environ["APP_LOCK_URL"])
counter_lock = locks.mutex("counter")
mp_lock = multiprocessing.Lock()

class FlockHelper:
    """The usual hand-written helper: one lock file opened once per process, flock()ed around
    the critical section. Threads of one process share the descriptor, so they all get in."""
    def __init__(self, path):
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    def __enter__(self):
        fcntl.flock(self.fd, fcntl.LOCK_EX)
    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)

flock_helper = FlockHelper(COUNTER + ".flock")

def lock():
    if MODE == "interlock":
        return counter_lock
    if MODE == "mp-lock":
        return mp_lock
    return flock_helper

def cycles():
    for _ in range(100):
        with lock():
            with open(COUNTER) as f:
                n = int(f.read())
            time.sleep(0.0005)
            # Written whole and renamed into place, so that without a working lock readers see
            # old values (lost updates), never a half-written file.
            tmp = f"{COUNTER}.{os.getpid()}.{threading.get_ident()}"
            with open(tmp, "w") as f:
                f.write(str(n + 1))
            os.replace(tmp, COUNTER)
    with open(DONE, "a") as f:
        f.write(f"{os.getpid()}\\n")

app = Flask(__name__)

@app.route("/run")
def run():
    threading.Thread(target=cycles).start()
    # Keep this worker busy a moment (APP_HOLD seconds), so that concurrent calls land on other
    # workers when it has a single thread.
    time.sleep(float(os.environ.get("APP_HOLD", "0")))
    return "started\\n"
'''


def serve_and_count(tmp_path, lock_url: str, mode: str, argv_for, hold: float = 0, workers: list = None) -> int:
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "webapp.py").write_text(APP)
    counter, done = tmp_path / "counter", tmp_path / "done"
    counter.write_text("0")
    port = free_port()
    env = dict(
        os.environ,
        APP_MODE=mode,
        APP_COUNTER=str(counter),
        APP_DONE=str(done),
        APP_LOCK_URL=lock_url,
        APP_HOLD=str(hold),
        PYTHONPATH=str(app_dir),
    )
    server = subprocess.Popen(
        argv_for(port, app_dir),
        cwd=app_dir,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "server.log", "w"),
        start_new_session=True,
    )
    try:
        wait_for_port(port, server, argv_for(port, app_dir)[0])
        replies = []

        def call():
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/run", timeout=30) as r:
                replies.append(r.read())

        callers = [threading.Thread(target=call) for _ in range(4)]
        for t in callers:
            t.start()
        for t in callers:
            t.join()
        assert replies == [b"started\n"] * 4, (tmp_path / "server.log").read_text()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if done.exists() and len(done.read_text().split()) == 4:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the 4 runs did not finish: " + (tmp_path / "server.log").read_text()[-2000:])
        if workers is not None:
            workers.extend(int(pid) for pid in done.read_text().split())
        return int(counter.read_text())
    finally:
        stop(server)


def uwsgi(lazy: bool, threads: int = 4):
    def argv(port, app_dir):
        exe = shutil.which("uwsgi")
        return [
            exe, "--master", "--http-socket", f"127.0.0.1:{port}", "--wsgi-file", str(app_dir / "webapp.py"),
            "--callable", "app", "--processes", "4", "--threads", str(threads), "--die-on-term", "--disable-logging",
            *(["--lazy-apps"] if lazy else []), *uwsgi_home(),
        ]  # fmt: skip

    return argv


def gunicorn_preload(port, app_dir):
    return [
        sys.executable, "-m", "gunicorn", "--preload", "--workers", "4", "--threads", "4",
        "--bind", f"127.0.0.1:{port}", "webapp:app",
    ]  # fmt: skip


def need_uwsgi():
    need(shutil.which("uwsgi") is not None, "uwsgi (pip install uwsgi)")
    try:
        import flask  # noqa: F401
    except ImportError:
        need(False, "flask (pip install flask)")


def need_gunicorn():
    try:
        import flask  # noqa: F401
        import gunicorn  # noqa: F401
    except ImportError:
        need(False, "flask and gunicorn (pip install flask gunicorn)")


@pytest.mark.parametrize("lazy", [False, True], ids=["fork-after-import", "lazy-apps"])
def test_uwsgi_4x4_counts_exactly_with_interlock(tmp_path, url, lazy):
    need_uwsgi()
    assert serve_and_count(tmp_path, url, "interlock", uwsgi(lazy)) == 400


def test_uwsgi_4x4_with_redis(tmp_path, redis_url):
    need_uwsgi()
    assert serve_and_count(tmp_path, redis_url, "interlock", uwsgi(False)) == 400


def test_gunicorn_preload_counts_exactly_with_interlock(tmp_path, url):
    need_gunicorn()
    assert serve_and_count(tmp_path, url, "interlock", gunicorn_preload) == 400


def test_uwsgi_lazy_apps_with_multiprocessing_lock_loses_updates(tmp_path, url):
    # One multiprocessing.Lock per worker (each imports the app): they exclude nobody else. One
    # thread per worker and a busy handler send the 4 calls to 4 different workers (with 4
    # threads each, one worker may take all 4 calls, and its one lock then does exclude).
    need_uwsgi()
    workers = []
    assert serve_and_count(tmp_path, url, "mp-lock", uwsgi(True, threads=1), hold=0.5, workers=workers) < 400
    assert len(set(workers)) > 1


@pytest.mark.parametrize("lazy", [False, True], ids=["fork-after-import", "lazy-apps"])
def test_uwsgi_with_a_per_process_flock_helper_loses_updates(tmp_path, url, lazy):
    need_uwsgi()
    assert serve_and_count(tmp_path, url, "flock-helper", uwsgi(lazy)) < 400
