#!/usr/bin/env python3
"""Speed of the Python package on the file backend, against the Python file-lock tools, in one run.

    python3 python/bench/bench.py [--dir /dev/shm/interlock-pybench] [--pairs 20000]
                                  [--handoffs 1000] [--slow-handoffs 20]
                                  [--interlock-bin target/release/interlock]

- uncontended: one process, one name: acquire + release pairs, p50 and mean per pair, for
  `with locks.mutex(name)` (the lock object made once), `acquire()` + `release()`, and
  `acquire(blocking=False)` + `release()`; `fcntl.flock(LOCK_EX)` + `LOCK_UN` on an open
  descriptor (the floor); filelock's `FileLock`; portalocker's `Lock`; and "one Python call" (a
  `with` on an object whose `__enter__` and `__exit__` do nothing), the cost the target adds to
  interlock's own Rust figure (`interlock bench uncontended`, run here when --interlock-bin
  names the binary).
- handoff: two processes alternate on one lock. The holder takes `time.monotonic_ns()` just
  before it releases, the waiter (already blocked in its acquire) just after it acquires; the gap
  is the handoff. interlock, blocking `fcntl.flock` (the kernel wakes the waiter: the floor),
  filelock and portalocker with their default poll intervals (fewer handoffs for these: each
  takes tens of milliseconds).

Speed is measured, never asserted: nothing here fails on a slow machine.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import mmap
import os
import shutil
import struct
import subprocess
import sys
import time

import interlock

# --- uncontended ------------------------------------------------------------------------------


class Nothing:
    """A context manager that does nothing: the cost of one Python-level `with`."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def timed_pairs(pair, n):
    """Runs `pair()` n times (after n/10 warm-up runs); per-pair times in ns."""
    for _ in range(max(1, n // 10)):
        pair()
    clock = time.perf_counter_ns
    out = []
    for _ in range(n):
        t0 = clock()
        pair()
        out.append(clock() - t0)
    return out


def p(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def uncontended(directory, n):
    locks = interlock.connect(f"file://{directory}")
    m = locks.mutex("uncontended")

    def with_mutex():
        with m:
            pass

    def acquire_release():
        m.acquire().release()

    def try_release():
        m.acquire(blocking=False).release()

    fd = os.open(os.path.join(directory, "flock-floor"), os.O_RDONLY | os.O_CREAT, 0o600)

    def flock_floor():
        fcntl.flock(fd, fcntl.LOCK_EX)
        fcntl.flock(fd, fcntl.LOCK_UN)

    nothing = Nothing()

    def one_call():
        with nothing:
            pass

    cases = [
        ("interlock: with locks.mutex(name)", with_mutex),
        ("interlock: acquire() + release()", acquire_release),
        ("interlock: acquire(blocking=False) + release()", try_release),
        ("fcntl.flock LOCK_EX + LOCK_UN, open fd (floor)", flock_floor),
        ("one Python call (an empty `with`)", one_call),
    ]
    try:
        import filelock

        fl = filelock.FileLock(os.path.join(directory, "filelock.lock"))

        def filelock_pair():
            with fl:
                pass

        cases.append((f"filelock {filelock.__version__}: with FileLock", filelock_pair))
    except ImportError:
        print("(filelock not installed: pip install filelock)", file=sys.stderr)
    try:
        import portalocker

        pl = portalocker.Lock(os.path.join(directory, "portalocker.lock"), timeout=10)

        def portalocker_pair():
            with pl:
                pass

        version = getattr(portalocker, "__version__", "")
        cases.append((f"portalocker {version}: with Lock".replace("  ", " "), portalocker_pair))
    except ImportError:
        print("(portalocker not installed: pip install portalocker)", file=sys.stderr)

    rows = []
    for name, pair in cases:
        ns = timed_pairs(pair, n)
        rows.append({"case": name, "p50_us": p(ns, 0.5) / 1000, "p90_us": p(ns, 0.9) / 1000, "mean_us": sum(ns) / len(ns) / 1000})
    os.close(fd)
    return rows


def rust_uncontended(interlock_bin, directory):
    """interlock's own Rust figure, `interlock bench uncontended`, on the same directory."""
    out = subprocess.run(
        [interlock_bin, "bench", "-u", f"file://{directory}", "uncontended", "--json", "--duration", "3"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)


# --- handoff ------------------------------------------------------------------------------------

# Shared between the two clients, in a file mapped by both: the client whose turn it is (0 or 1)
# and the monotonic time of the last release.
SLOT = struct.Struct("qq")


def make_lock(kind, directory):
    """Returns (acquire, release) for `kind`, each process its own lock object and descriptor."""
    path = os.path.join(directory, f"handoff-{kind}")
    if kind == "interlock":
        m = interlock.connect(f"file://{directory}").mutex(f"handoff-{kind}")
        held = []
        return (lambda: held.append(m.acquire())), (lambda: held.pop().release())
    if kind == "flock":
        fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o600)
        return (lambda: fcntl.flock(fd, fcntl.LOCK_EX)), (lambda: fcntl.flock(fd, fcntl.LOCK_UN))
    if kind == "filelock":
        import filelock

        fl = filelock.FileLock(path + ".lock")
        return fl.acquire, fl.release
    if kind == "portalocker":
        import portalocker

        pl = portalocker.Lock(path + ".lock", timeout=60)
        return pl.acquire, pl.release
    raise ValueError(kind)


def client(kind, directory, me, rounds, shared_path):
    acquire, release = make_lock(kind, directory)
    with open(shared_path, "r+b") as f:
        shm = mmap.mmap(f.fileno(), SLOT.size)
    gaps = []
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    sys.stdin.readline()
    for _ in range(rounds):
        # Wait for my turn without holding the lock, so that the other client is the holder
        # and I am blocked in acquire() when it releases.
        while SLOT.unpack_from(shm)[0] != me:
            time.sleep(0.0001)
        acquire()
        t_acquired = time.monotonic_ns()
        turn, t_released = SLOT.unpack_from(shm)
        if t_released:
            gaps.append(t_acquired - t_released)
        # Hand the turn over, let the other client block in acquire(), then release.
        SLOT.pack_into(shm, 0, 1 - me, 0)
        time.sleep(0.002)
        SLOT.pack_into(shm, 0, 1 - me, time.monotonic_ns())
        release()
    print(json.dumps(gaps))


def handoff(kind, directory, rounds):
    shared_path = os.path.join(directory, f"handoff-{kind}.shm")
    with open(shared_path, "wb") as f:
        f.write(SLOT.pack(0, 0))
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--client", kind, str(me), str(rounds), shared_path, "--dir", directory],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for me in (0, 1)
    ]
    for pr in procs:
        assert pr.stdout.readline().strip() == "ready"
    for pr in procs:
        pr.stdin.write("go\n")
        pr.stdin.flush()
    gaps = []
    for pr in procs:
        out, _ = pr.communicate(timeout=600)
        gaps += json.loads(out)
    return {
        "case": kind,
        "handoffs": len(gaps),
        "p50_us": p(gaps, 0.5) / 1000,
        "p90_us": p(gaps, 0.9) / 1000,
        "mean_us": sum(gaps) / len(gaps) / 1000,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default="/dev/shm/interlock-pybench")
    ap.add_argument("--pairs", type=int, default=20000)
    ap.add_argument("--handoffs", type=int, default=1000)
    ap.add_argument("--slow-handoffs", type=int, default=20, help="for filelock and portalocker")
    ap.add_argument("--interlock-bin", help="the interlock binary, for its own uncontended figure")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--client", nargs=4, metavar=("KIND", "ME", "ROUNDS", "SHM"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client:
        kind, me, rounds, shm = args.client
        client(kind, args.dir, int(me), int(rounds), shm)
        return
    shutil.rmtree(args.dir, ignore_errors=True)
    os.makedirs(args.dir, mode=0o700)
    report = {"python": sys.version.split()[0], "dir": args.dir}
    try:
        report["uncontended"] = uncontended(args.dir, args.pairs)
        if args.interlock_bin:
            report["rust_uncontended"] = rust_uncontended(args.interlock_bin, args.dir)
        report["handoff"] = [handoff("interlock", args.dir, args.handoffs // 2), handoff("flock", args.dir, args.handoffs // 2)]
        for kind in ("filelock", "portalocker"):
            try:
                report["handoff"].append(handoff(kind, args.dir, max(1, args.slow_handoffs // 2)))
            except (ImportError, AssertionError) as e:
                print(f"({kind}: {e!r})", file=sys.stderr)
    finally:
        shutil.rmtree(args.dir, ignore_errors=True)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"Python {report['python']}, lock directory {report['dir']}")
    print("\nuncontended acquire + release, per pair:")
    for r in report["uncontended"]:
        print(f"  {r['case']:<52} p50 {r['p50_us']:8.2f} us   p90 {r['p90_us']:8.2f} us   mean {r['mean_us']:8.2f} us")
    rust = report.get("rust_uncontended", {}).get("uncontended")
    if rust:
        print("\ninterlock bench uncontended (Rust, same directory, same run):")
        rows = [rust["lock"], rust["try_lock"], *rust.get("floors", [])]
        for r in rows:
            lat = r["latency"]
            print(f"  {r['what']:<52} p50 {lat['p50_ns'] / 1000:8.2f} us   p90 {lat['p90_ns'] / 1000:8.2f} us   mean {lat['mean_ns'] / 1000:8.2f} us")
        by_case = {r["case"]: r for r in report["uncontended"]}
        call = by_case["one Python call (an empty `with`)"]["p50_us"]
        budget = rust["lock"]["latency"]["p50_ns"] / 1000 + call
        for case in ("interlock: with locks.mutex(name)", "interlock: acquire() + release()"):
            got = by_case[case]["p50_us"]
            print(f"  {case}: p50 {got:.2f} us = {got / budget:.2f}x (Rust lock() + release() p50 + one Python call = {budget:.2f} us; target <= 2x)")
    print("\nhandoff between two processes (release -> the waiter's acquire):")
    for r in report["handoff"]:
        print(f"  {r['case']:<12} {r['handoffs']:5d} handoffs   p50 {r['p50_us']:10.1f} us   p90 {r['p90_us']:10.1f} us   mean {r['mean_us']:10.1f} us")
    by_kind = {r["case"]: r for r in report["handoff"]}
    if "interlock" in by_kind and "filelock" in by_kind:
        ratio = by_kind["filelock"]["p50_us"] / by_kind["interlock"]["p50_us"]
        print(f"  filelock p50 / interlock p50 = {ratio:.0f}x (target >= 100x)")


if __name__ == "__main__":
    main()
