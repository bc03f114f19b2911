"""asyncio: `async with`, acquire_async, cancellation, many tasks of one loop."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

import interlock


def run(coro):
    return asyncio.run(coro)


def test_async_with_and_acquire_async(locks):
    m = locks.mutex("aio")

    async def main():
        async with m as g:
            assert g.held and isinstance(g.fencing_token, int)
            assert await m.acquire_async(blocking=False) is None
            with pytest.raises(interlock.Timeout):
                await m.acquire_async(timeout=0.1)
        assert not g.held
        g2 = await m.acquire_async(timeout=5)
        await g2.release_async()
        with pytest.raises(interlock.NotHeld):
            await g2.release_async()
        async with await m.acquire_async() as g3:
            assert g3.held
        assert not g3.held

    run(main())


def test_waiting_does_not_block_the_loop(locks):
    m = locks.mutex("loop")
    holder = m.acquire()

    async def main():
        ticks = 0
        waiter = asyncio.create_task(m.acquire_async())

        async def tick():
            nonlocal ticks
            while not waiter.done():
                ticks += 1
                await asyncio.sleep(0.005)

        ticker = asyncio.create_task(tick())
        await asyncio.sleep(0.2)
        assert not waiter.done()
        threading.Timer(0.05, holder.release).start()
        g = await asyncio.wait_for(waiter, 10)
        await ticker
        assert ticks > 10
        await g.release_async()

    run(main())


def test_cancelling_the_task_cancels_the_acquisition(locks):
    m = locks.mutex("cancel")
    holder = m.acquire()

    async def main():
        t = asyncio.create_task(m.acquire_async())
        await asyncio.sleep(0.1)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(m.acquire_async(), 0.1)
        holder.release()
        # Nothing of the cancelled waits is left: the lock is free at once.
        g = await m.acquire_async(blocking=False)
        assert g is not None
        await g.release_async()

    run(main())


def test_tasks_of_one_loop_are_independent_holders(locks, lock_dir):
    counter = lock_dir / "counter"
    counter.write_text("0")
    m = locks.mutex("counter")

    async def worker():
        for _ in range(20):
            async with m:
                n = int(counter.read_text())
                await asyncio.sleep(0.001)  # other tasks run here: only the lock keeps them out
                counter.write_text(str(n + 1))

    async def main():
        await asyncio.gather(*(worker() for _ in range(10)))

    run(main())
    assert int(counter.read_text()) == 200


def test_without_the_lock_tasks_lose_updates(lock_dir):
    # The same workload without the lock loses updates, so the test above can fail.
    counter = lock_dir / "counter"
    counter.write_text("0")

    async def worker():
        for _ in range(20):
            n = int(counter.read_text())
            await asyncio.sleep(0.001)
            counter.write_text(str(n + 1))

    async def main():
        await asyncio.gather(*(worker() for _ in range(10)))

    run(main())
    assert int(counter.read_text()) < 200


def test_async_decorator_and_rwlock(locks):
    m = locks.mutex("deco")
    rw = locks.rwlock("cfg")

    @m
    async def job(x):
        assert await m.acquire_async(blocking=False) is None
        await asyncio.sleep(0)
        return x + 1

    async def main():
        assert await job(1) == 2
        async with rw.read(), rw.read():
            assert await rw.write().acquire_async(blocking=False) is None
        async with rw.write():
            assert await rw.read().acquire_async(blocking=False) is None

    run(main())


def test_not_reentrant_in_a_task_but_child_tasks_wait(locks):
    m = locks.mutex("reent")

    async def main():
        async with m:
            with pytest.raises(interlock.WouldDeadlock):
                async with m:
                    pass
            # A task created inside the block is another holder: it waits, no error.
            child = asyncio.create_task(m.acquire_async())
            await asyncio.sleep(0.05)
            assert not child.done()
        g = await asyncio.wait_for(child, 10)
        await g.release_async()

    run(main())


def test_threads_and_loops_together(locks, lock_dir):
    counter = lock_dir / "counter"
    counter.write_text("0")
    m = locks.mutex("mixed")

    def loop_thread():
        async def worker():
            for _ in range(10):
                async with m:
                    n = int(counter.read_text())
                    await asyncio.sleep(0.0005)
                    counter.write_text(str(n + 1))

        async def main():
            await asyncio.gather(*(worker() for _ in range(4)))

        asyncio.run(main())

    def plain_thread():
        for _ in range(10):
            with m:
                n = int(counter.read_text())
                time.sleep(0.0005)
                counter.write_text(str(n + 1))

    threads = [threading.Thread(target=loop_thread) for _ in range(3)]
    threads += [threading.Thread(target=plain_thread) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert int(counter.read_text()) == 3 * 4 * 10 + 3 * 10


def test_release_async_without_a_running_loop_releases_nothing(locks):
    # With no running loop there is nothing to await on: release_async refuses (asyncio's
    # RuntimeError) before releasing, so the guard still holds the lock and can be released.
    m = locks.mutex("no-loop")
    g = m.acquire()
    with pytest.raises(RuntimeError, match="no running event loop"):
        g.release_async()
    assert g.held
    assert m.acquire(blocking=False) is None
    g.release()
    assert not g.held
    with pytest.raises(RuntimeError, match="no running event loop"):
        m._core.acquire_async()
    assert m.acquire(blocking=False) is not None


def test_acquire_async_takes_ints_as_threading_lock(locks):
    m = locks.mutex("aio-ints")

    async def main():
        g = await m.acquire_async(1)
        assert await m.acquire_async(blocking=0) is None
        assert await m.acquire_async(blocking=[]) is None
        await g.release_async()

    run(main())
