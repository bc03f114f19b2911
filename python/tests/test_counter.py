"""Processes x threads x asyncio tasks: a counter kept in a plain file (read, sleep a little,
write) under one mutex ends exact; without the lock, updates are lost (so the test can fail)."""

from __future__ import annotations

import pytest

from conftest import python_child

WORKER = """
import asyncio, os, sys, threading, time, interlock
url, path, use_lock, rounds = sys.argv[1], sys.argv[2], sys.argv[3] == "lock", int(sys.argv[4])
locks = interlock.connect(url)
m = locks.mutex("counter")

def bump():
    with open(path) as f:
        n = int(f.read())
    time.sleep(0.0002)
    with open(path, "w") as f:
        f.write(str(n + 1))

def thread_worker():
    for _ in range(rounds):
        if use_lock:
            with m:
                bump()
        else:
            bump()

async def task_worker():
    for _ in range(rounds):
        if use_lock:
            async with m:
                bump()
                await asyncio.sleep(0)
        else:
            bump()
            await asyncio.sleep(0)

async def tasks():
    await asyncio.gather(*(task_worker() for _ in range(3)))

sys.stdin.readline()  # start together
threads = [threading.Thread(target=thread_worker) for _ in range(3)]
threads.append(threading.Thread(target=lambda: asyncio.run(tasks())))
for t in threads:
    t.start()
for t in threads:
    t.join()
print("done", flush=True)
"""

PROCESSES, ROUNDS = 4, 15
PER_PROCESS = (3 + 3) * ROUNDS  # 3 threads + 3 tasks on one loop thread


def run_workers(url: str, counter, use_lock: bool) -> int:
    counter.write_text("0")
    procs = [python_child(WORKER, url, str(counter), "lock" if use_lock else "nolock", str(ROUNDS)) for _ in range(PROCESSES)]
    try:
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        for p in procs:
            out, err = p.communicate(timeout=180)
            assert p.returncode == 0, err
            assert out.strip() == "done"
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return int(counter.read_text())


@pytest.mark.parametrize("backend", ["file", "redis"])
def test_processes_threads_tasks_count_exactly(request, url, lock_dir, backend):
    lock_url = url if backend == "file" else request.getfixturevalue("redis_url")
    assert run_workers(lock_url, lock_dir / "counter", True) == PROCESSES * PER_PROCESS


def test_without_the_lock_updates_are_lost(url, lock_dir):
    assert run_workers(url, lock_dir / "counter", False) < PROCESSES * PER_PROCESS
