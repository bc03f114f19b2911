"""`with lock:` keeps its guard for as long as the block runs, whatever context, thread or task
runs `__enter__` and `__exit__`: frameworks that enter in a copied context (Starlette, anyio,
FastAPI's sync dependencies), generators resumed on other threads, ExitStacks handed between
threads, many nested entries of one lock object from many threads and tasks at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import threading
import time
import weakref
import pytest

import interlock

from conftest import need


def elsewhere(fn, *args):
    """Runs `fn(*args)` on a new thread, in a copy of this context, and returns its result (or
    raises its exception). A daemon thread, and a bounded wait: a defect fails the test instead
    of hanging it."""
    context = contextvars.copy_context()
    outcome = []

    def run():
        try:
            outcome.append((True, context.run(fn, *args)))
        except BaseException as e:  # noqa: BLE001 (raised below)
            outcome.append((False, e))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(30)
    assert outcome, f"{fn} did not return within 30 s"
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


def on_threads(n, fn):
    """Runs `fn()` on `n` daemon threads at once; raises the first exception, fails after 60 s."""
    errors = []

    def run():
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 (raised below)
            errors.append(e)

    threads = [threading.Thread(target=run, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    for t in threads:
        t.join(max(0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "threads still running after 60 s"
    if errors:
        raise errors[0]


def test_enter_in_a_copied_context_keeps_the_lock(locks):
    # What Starlette and anyio do with a sync dependency: __enter__ runs in a copy of the
    # context, and the copy is thrown away.
    m = locks.mutex("copied")
    guard = contextvars.copy_context().run(lambda: m.__enter__())
    gc.collect()
    assert guard.held
    assert m.acquire(blocking=False) is None
    assert locks.mutex("copied").acquire(blocking=False) is None
    m.__exit__(None, None, None)
    assert not guard.held
    again = m.acquire(blocking=False)
    assert again is not None
    again.release()


def test_a_generator_entered_and_exited_on_other_threads_and_contexts(locks, lock_dir):
    # FastAPI's sync yield dependencies: `contextmanager(dep)` entered on one thread of a pool
    # in a copied context, exited on another thread in another copied context, while the
    # request runs elsewhere. 8 such requests at once do read-modify-write cycles of a counter.
    counter = lock_dir / "counter"
    counter.write_text("0")
    m = locks.mutex("counter")

    @contextlib.contextmanager
    def dependency():
        with m as guard:
            yield guard

    def requests():
        for _ in range(5):
            cm = dependency()
            guard = elsewhere(cm.__enter__)
            assert guard.held
            n = int(counter.read_text())
            time.sleep(0.002)
            counter.write_text(str(n + 1))
            elsewhere(cm.__exit__, None, None, None)
            assert not guard.held

    on_threads(8, requests)
    assert int(counter.read_text()) == 40
    assert m._entries == []


def test_exit_stack_entered_in_one_thread_closed_in_another(locks):
    m = locks.mutex("stack")
    stack = contextlib.ExitStack()
    guard = stack.enter_context(m)
    errors = []

    def close():
        try:
            stack.close()
        except BaseException as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    seen = []
    t = threading.Thread(target=lambda: seen.append(m.acquire(blocking=False)))
    t.start()
    t.join()
    assert seen == [None]
    t = threading.Thread(target=close)
    t.start()
    t.join()
    assert errors == []
    assert not guard.held
    assert m._entries == []
    again = m.acquire(blocking=False)
    assert again is not None
    again.release()


def test_exit_stack_closed_inside_another_block_of_the_same_lock(locks):
    # A semaphore entered by an ExitStack, then by a `with` of the same thread; closing the
    # stack inside the `with` ends the stack's entry, not the `with` block's (whose frame is on
    # the stack: it is still running).
    s = locks.semaphore("pool", permits=2)
    stack = contextlib.ExitStack()
    by_stack = stack.enter_context(s)
    with s as by_with:
        stack.close()
        assert not by_stack.held
        assert by_with.held
        assert [e.guard for e in s._entries] == [by_with]
    assert not by_with.held
    assert s._entries == []


def test_several_exit_stacks_closed_elsewhere_keep_the_count(locks):
    # Two permits entered by ExitStacks of one thread, closed by another thread: no frame or
    # thread tells them apart, so each close ends the newest; every permit is given back.
    s = locks.semaphore("pool", permits=2)
    stacks = [contextlib.ExitStack() for _ in range(2)]
    guards = [st.enter_context(s) for st in stacks]
    assert s.acquire(blocking=False) is None
    errors = []

    def close_all():
        try:
            for st in stacks:
                st.close()
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    t = threading.Thread(target=close_all)
    t.start()
    t.join()
    assert errors == []
    assert not any(g.held for g in guards)
    held = [s.acquire(blocking=False) for _ in range(2)]
    assert None not in held
    for g in held:
        g.release()


@pytest.mark.parametrize("kind", ["semaphore", "read"])
def test_an_exit_stack_closed_elsewhere_never_ends_a_block_running_in_another_thread(locks, kind):
    # An ExitStack enters a permit, then a plain `with` of the same object runs in thread A;
    # thread C closes the stack: the stack's own permit ends (its entering frame has returned),
    # not A's block, whose guard stays held until A leaves it.
    lock = locks.semaphore("steal", permits=3) if kind == "semaphore" else locks.rwlock("steal").read()
    stack = contextlib.ExitStack()
    by_stack = stack.enter_context(lock)
    inside, leave, seen = threading.Event(), threading.Event(), {}

    def a():
        with lock as g:
            seen["guard"] = g
            inside.set()
            leave.wait(30)
            seen["held at the end"] = g.held

    t = threading.Thread(target=a, daemon=True)
    t.start()
    assert inside.wait(30)
    elsewhere(stack.close)
    assert not by_stack.held, "the stack's close ended another block"
    assert seen["guard"].held
    leave.set()
    t.join(30)
    assert seen["held at the end"] is True
    assert not seen["guard"].held
    assert lock._entries == []


def test_an_async_exit_stack_closed_by_another_task_never_ends_a_running_task_block(locks):
    # The same with asyncio: an AsyncExitStack's permit, then a task inside `async with` of the
    # same semaphore object; another task closes the stack: the stack's permit ends.
    s = locks.semaphore("steal-aio", permits=3)

    async def main():
        stack = contextlib.AsyncExitStack()
        by_stack = await stack.enter_async_context(s)
        inside, leave, seen = asyncio.Event(), asyncio.Event(), {}

        async def holder():
            async with s as g:
                seen["guard"] = g
                inside.set()
                await leave.wait()
                seen["held at the end"] = g.held

        task = asyncio.create_task(holder())
        await asyncio.wait_for(inside.wait(), 30)
        await asyncio.create_task(stack.aclose())
        assert not by_stack.held, "the stack's close ended the task's block"
        assert seen["guard"].held
        leave.set()
        await asyncio.wait_for(task, 30)
        assert seen["held at the end"] is True

    asyncio.run(main())
    assert s._entries == []


def test_exit_without_an_entry_is_not_held(locks):
    m = locks.mutex("none")
    with pytest.raises(interlock.NotHeld, match="not held by a `with` block"):
        m.__exit__(None, None, None)


def test_exit_stack_still_refuses_a_deadlock_in_its_thread(locks):
    m = locks.mutex("stack-reent")
    with contextlib.ExitStack() as stack:
        stack.enter_context(m)
        with pytest.raises(interlock.WouldDeadlock):
            m.acquire()
    assert m.acquire(blocking=False) is not None


def test_a_pool_thread_waits_for_a_block_it_entered_for_someone_else(locks):
    # One pool thread enters a generator's block for request A (copied context), then waits
    # for the same lock for request B: B waits for A (no WouldDeadlock), and gets the lock when
    # another thread ends A.
    m = locks.mutex("pool-thread")

    @contextlib.contextmanager
    def dependency():
        with m:
            yield

    a, b = dependency(), dependency()
    outcome = []

    def pool_thread():
        contextvars.copy_context().run(a.__enter__)
        try:
            contextvars.copy_context().run(b.__enter__)
            outcome.append("entered")
            contextvars.copy_context().run(b.__exit__, None, None, None)
        except BaseException as e:  # noqa: BLE001
            outcome.append(e)

    t = threading.Thread(target=pool_thread, daemon=True)
    t.start()
    time.sleep(0.2)
    assert outcome == []
    elsewhere(a.__exit__, None, None, None)
    t.join(20)
    assert outcome == ["entered"]
    assert m._entries == []


@pytest.mark.parametrize("kind", ["semaphore", "read"])
def test_nested_entries_of_one_object_from_many_threads(locks, kind):
    # 5 threads share one lock object; each nests two blocks of it, the outer one a generator
    # entered and exited on other threads in copied contexts. Each exit ends its own entry:
    # every guard is held for its whole block, the inner one ends first, and no more than the
    # permits are ever out.
    lock = locks.semaphore("nested", permits=16) if kind == "semaphore" else locks.rwlock("nested").read()
    out = [0]
    most = [0]
    count = threading.Lock()

    def took(guard, delta):
        with count:
            out[0] += delta
            most[0] = max(most[0], out[0])
        return guard

    @contextlib.contextmanager
    def outer():
        with lock as g:
            took(g, 1)
            yield g
            took(g, -1)

    def worker():
        for _ in range(10):
            cm = outer()
            g1 = elsewhere(cm.__enter__)
            with lock as g2:
                took(g2, 1)
                with lock as g3:
                    took(g3, 1)
                    assert g1.held and g2.held and g3.held
                    time.sleep(0.0005)
                    took(g3, -1)
                assert not g3.held and g2.held and g1.held
                took(g2, -1)
            assert not g2.held and g1.held
            elsewhere(cm.__exit__, None, None, None)
            assert not g1.held

    on_threads(5, worker)
    assert out[0] == 0 and 0 < most[0] <= 15
    assert lock._entries == []


@pytest.mark.parametrize("kind", ["semaphore", "read"])
def test_nested_entries_of_one_object_from_many_tasks(locks, kind):
    # The same with asyncio tasks: nested `async with` of one object, the outer one an async
    # generator entered by one task and exited by another (each in a copied context).
    lock = locks.semaphore("nested", permits=16) if kind == "semaphore" else locks.rwlock("nested").read()

    @contextlib.asynccontextmanager
    async def outer():
        async with lock as g:
            yield g

    async def worker():
        for _ in range(10):
            cm = outer()
            g1 = await asyncio.create_task(cm.__aenter__())
            async with lock as g2:
                async with lock as g3:
                    await asyncio.sleep(0.001)
                    assert g1.held and g2.held and g3.held
                assert not g3.held and g2.held
                await asyncio.sleep(0)
            assert not g2.held and g1.held
            await asyncio.create_task(cm.__aexit__(None, None, None))
            assert not g1.held

    async def main():
        await asyncio.gather(*(worker() for _ in range(5)))

    asyncio.run(main())
    assert lock._entries == []


def test_async_with_across_a_copied_context(locks):
    # __aenter__ in a task of its own (a copy of the context, gone when the task ends),
    # __aexit__ in the caller's task.
    m = locks.mutex("aio-copied")

    async def main():
        guard = await asyncio.create_task(m.__aenter__())
        gc.collect()
        assert guard.held
        assert await m.acquire_async(blocking=False) is None
        await m.__aexit__(None, None, None)
        assert not guard.held
        again = await m.acquire_async(blocking=False)
        assert again is not None
        await again.release_async()

    asyncio.run(main())


def test_async_exit_stack_closed_by_another_task(locks):
    m = locks.mutex("aio-stack")

    async def main():
        stack = contextlib.AsyncExitStack()
        guard = await asyncio.create_task(stack.enter_async_context(m))
        assert await m.acquire_async(blocking=False) is None
        await asyncio.create_task(stack.aclose())
        assert not guard.held
        assert m._entries == []

    asyncio.run(main())


def test_a_generator_closed_by_gc_releases_and_keeps_nothing(locks):
    # A block inside an abandoned generator ends when the generator is collected; the entry
    # keeps neither the generator nor its frame's objects alive.
    m = locks.mutex("gen")

    class Payload:
        pass

    def gen():
        payload = Payload()
        with m:
            yield weakref.ref(payload)

    it = gen()
    payload = next(it)
    generator = weakref.ref(it)
    assert m.acquire(blocking=False) is None
    del it
    gc.collect()
    assert generator() is None and payload() is None
    assert m._entries == []
    again = m.acquire(blocking=False)
    assert again is not None
    again.release()


def test_an_ended_block_keeps_no_frame_alive(locks):
    m = locks.mutex("frames")

    class Payload:
        pass

    def enter_by_hand():
        payload = Payload()  # a local of the frame that enters
        m.__enter__()
        return weakref.ref(payload)

    payload = enter_by_hand()
    # The entry keeps the entering frame until the block ends...
    assert payload() is not None
    m.__exit__(None, None, None)
    gc.collect()
    # ... and not after.
    assert payload() is None
    held = interlock._held.get()
    assert all(e.guard is None and e.frame is None for e in held)


def test_fastapi_sync_yield_dependency_counts_exactly(locks):
    # The app of issue 15: a sync yield dependency holds the lock while the endpoint does a
    # read-modify-write of a counter; 40 concurrent requests give 40.
    assert _fastapi_count(lambda: locks.mutex("counter")) == 40


@pytest.mark.parametrize("endpoint", ["async", "sync"])
def test_fastapi_with_one_lock_object_for_every_request(locks, endpoint):
    # The lock object made once (a module global of the app), entered by every request's
    # dependency at once; with a sync endpoint too (run on the thread pool, as the dependency).
    shared = locks.mutex("counter")
    assert _fastapi_count(lambda: shared, sync_endpoint=endpoint == "sync") == 40
    assert shared._entries == []


def test_fastapi_without_the_lock_loses_updates():
    # The control: the same app and load without the lock loses updates.
    assert _fastapi_count(contextlib.nullcontext) < 40


def _fastapi_count(make_lock, sync_endpoint: bool = False) -> int:
    try:
        import fastapi
        import httpx
    except ImportError:
        need(False, "fastapi and httpx (pip install fastapi httpx)")

    app = fastapi.FastAPI()
    state = {"count": 0}

    def locked():
        with make_lock():
            yield

    if sync_endpoint:

        @app.post("/inc")
        def inc_sync(_: None = fastapi.Depends(locked)):
            n = state["count"]
            time.sleep(0.005)
            state["count"] = n + 1
            return {"n": n + 1}

    else:

        @app.post("/inc")
        async def inc(_: None = fastapi.Depends(locked)):
            n = state["count"]
            await asyncio.sleep(0.005)
            state["count"] = n + 1
            return {"n": n + 1}

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            return await asyncio.gather(*(client.post("/inc") for _ in range(40)), return_exceptions=True)

    replies = asyncio.run(main())
    assert [getattr(r, "status_code", r) for r in replies] == [200] * 40
    return state["count"]
