"""interlock: one lock API (mutex, read-write lock, semaphore) that stays correct across threads,
asyncio tasks, processes and hosts, on files, Redis and the other backends of the Rust library.

    import interlock

    locks = interlock.connect()                # the file backend, as the `interlock` command
    with locks.mutex("jobs") as guard:         # waits forever
        guard.fencing_token                    # int, larger for every new holder of "jobs"

Every acquisition is an independent holder, also between threads of one process and tasks of one
event loop. Locks are not re-entrant. Waits release the GIL and Ctrl-C interrupts them. A lock
held when the process forks stays with the parent: the child never holds it, and reconnects on
its own on first use. See docs/python.md.
"""

from __future__ import annotations

import atexit
import contextvars
import functools
import inspect
import os
import sys
from asyncio import all_tasks, current_task
from threading import get_ident
from typing import Any, Callable, Optional, TypeVar, Union

from . import _interlock
from ._errors import (
    Auth,
    Backend,
    Error,
    InvalidArgument,
    InvalidName,
    InvalidUrl,
    Io,
    LockLost,
    NotHeld,
    PermitsMismatch,
    Timeout,
    Unavailable,
    Unsupported,
    WouldDeadlock,
)
from ._interlock import Guard

__all__ = [
    "connect",
    "default_url",
    "Locks",
    "Lock",
    "Mutex",
    "RwLock",
    "ReadLock",
    "WriteLock",
    "Semaphore",
    "Guard",
    "Error",
    "Timeout",
    "LockLost",
    "InvalidName",
    "InvalidUrl",
    "InvalidArgument",
    "PermitsMismatch",
    "Unsupported",
    "Unavailable",
    "Auth",
    "Backend",
    "Io",
    "NotHeld",
    "WouldDeadlock",
]

F = TypeVar("F", bound=Callable[..., Any])

class _Entry:
    """One `with` / `async with` block of a lock object, for as long as the block runs.

    The lock object owns it (``Lock._entries``), so the guard stays held whatever context or
    thread the block runs or ends in. `frame` is the frame that runs the statement: the same
    object when the block exits, even when a framework resumes a generator in another thread and
    context (FastAPI runs a sync dependency's ``__enter__`` and ``__exit__`` in copied contexts
    on threads of a pool), so each exit finds its own entry. `owner` is the thread's ident or
    the asyncio task that entered. Once the block exits, `guard` and `frame` are None: a stale
    entry keeps neither the guard nor the frame alive."""

    __slots__ = ("lock", "guard", "frame", "owner")

    def __init__(self, lock: Lock, guard: Guard, frame: Any, owner: object) -> None:
        self.lock = lock
        self.guard: Optional[Guard] = guard
        self.frame = frame
        self.owner = owner


# The blocks entered in this context, innermost last: only for the WouldDeadlock check (a wait
# forever for a lock that this thread or task holds through `with`). A context variable, so that
# threads never see each other's blocks; a task created inside a block inherits them, hence the
# owner. Entries of blocks that ended elsewhere are skipped (their guard is None) and pruned.
_held: contextvars.ContextVar[tuple] = contextvars.ContextVar("interlock_held", default=())

# Threads of interlock's runtime that hand outcomes to asyncio loops stop entering Python when
# the interpreter exits (and the ones inside are waited for).
atexit.register(_interlock._shutdown)

# Guards taken before a fork are never held by the child (see docs/python.md, "Fork safety").
# Forks that do not run this hook (uwsgi's) are caught on the first use of an interlock object.
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_interlock._after_fork_in_child)


# Code flags of frames that can be suspended (generators, coroutines, async generators): such a
# frame, on no thread's stack, may be waiting to resume rather than returned.
_SUSPENDABLE = inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR | inspect.CO_ITERABLE_COROUTINE


def _running_frames() -> tuple:
    """The ids of the frames running now on every thread's stack, and of the coroutine frames
    that the tasks of this thread's running event loop (if any) are awaiting in."""
    running = set()
    for top in sys._current_frames().values():
        f = top
        while f is not None:
            running.add(id(f))
            f = f.f_back
    awaiting = set()
    try:
        tasks = all_tasks()
    except RuntimeError:  # no running event loop in this thread
        tasks = set()
    for task in tasks:
        coro = task.get_coro()
        for _ in range(1000):  # an await chain; a Future (no frame) ends it
            if coro is None:
                break
            f = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
            if f is not None:
                awaiting.add(id(f))
            coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return running, awaiting


# The core counts permits in a u32.
_MAX_PERMITS = 2**32 - 1


def _blocking(blocking: Any) -> bool:
    """`blocking` as ``threading.Lock.acquire`` takes it since Python 3.13: by its truth value
    (``0``, ``1``, ``True``; before 3.13 threading takes integers only)."""
    if blocking is True or blocking is False:
        return blocking
    return bool(blocking)


def default_url() -> str:
    """The URL `connect()` uses when given none: a non-blank ``$INTERLOCK_URL``, else ``file://``
    (the private per-user directory), exactly as the ``interlock`` command."""
    return _interlock.default_url()


def connect(url: Optional[str] = None) -> Locks:
    """Connects to the backend named by `url` (``file:///var/lock/app``, ``redis://host/0``, ...);
    without one, to ``default_url()``.

    Raises ``InvalidUrl``, ``Unsupported``, ``Unavailable``, ``Auth`` or ``Io``.
    """
    return Locks(_interlock.connect(default_url() if url is None else url))


class Locks:
    """Makes locks on one backend. Cheap to share between threads; a forked child reconnects on
    its own on first use."""

    __slots__ = ("_provider",)

    def __init__(self, provider: _interlock.Provider) -> None:
        self._provider = provider

    @property
    def url(self) -> str:
        """The URL, password redacted."""
        return self._provider.url

    @property
    def backend(self) -> str:
        """The backend's short name: ``file``, ``memory``, ``redis``, ..."""
        return self._provider.backend

    def mutex(self, name: str) -> Mutex:
        """A mutex: one holder at a time. Raises ``InvalidName``."""
        return Mutex(self._provider.lock(name, "mutex"))

    def rwlock(self, name: str) -> RwLock:
        """A read-write lock: many readers (``.read()``) or one writer (``.write()``)."""
        return RwLock(self._provider, name)

    def semaphore(self, name: str, permits: int) -> Semaphore:
        """A semaphore: at most `permits` holders at a time. Raises ``InvalidName``, or
        ``InvalidArgument`` for fewer than 1 permit or more than 2**32 - 1 (a backend may allow
        fewer: the file backend 1024, said when acquiring)."""
        if not isinstance(permits, int) or isinstance(permits, bool):
            raise InvalidArgument(f"invalid argument: a semaphore's permits are an int (got {permits!r})")
        if permits < 1:
            raise InvalidArgument(f"invalid argument: a semaphore needs at least 1 permit (got {permits!r})")
        if permits > _MAX_PERMITS:
            raise InvalidArgument(f"invalid argument: a semaphore has at most {_MAX_PERMITS} permits (got {permits})")
        return Semaphore(self._provider.lock(name, "semaphore", permits))

    def close(self) -> None:
        """Closes the connection: later acquisitions fail with ``Unavailable``."""
        self._provider.close()

    def __repr__(self) -> str:
        return f"<interlock.Locks {self.url}>"


class Lock:
    """One name and one primitive: the common API of ``Mutex``, ``ReadLock``, ``WriteLock`` and
    ``Semaphore``. Each acquisition returns its own ``Guard``; the lock object itself may be shared
    by threads and tasks."""

    __slots__ = ("_core", "_exclusive", "_entries")

    def __init__(self, core: _interlock.Lock) -> None:
        self._core = core
        self._exclusive = core.kind in ("mutex", "write")
        # The `with` blocks of this object that are running, oldest first (see _Entry). Changed
        # only by atomic list operations, so threads need no lock around it.
        self._entries: list = []

    @property
    def name(self) -> str:
        """The lock name."""
        return self._core.name

    @property
    def kind(self) -> str:
        """``mutex``, ``read``, ``write`` or ``semaphore``."""
        return self._core.kind

    def acquire(self, blocking: Union[bool, int] = True, timeout: Optional[float] = -1) -> Optional[Guard]:
        """Takes the lock and returns its ``Guard``, like ``threading.Lock.acquire``:

        - ``acquire()`` waits as long as it takes;
        - ``acquire(timeout=10)`` waits at most 10 s, then raises ``Timeout`` (a ``TimeoutError``);
        - ``acquire(blocking=False)`` makes one attempt and returns ``None`` when the lock is held
          elsewhere.

        `blocking` is taken by its truth value (``blocking=0``), as there; ``blocking=False``
        with a timeout other than -1 raises ``ValueError``, as there. Waits release the GIL; Ctrl-C
        (``KeyboardInterrupt``) cancels them, leaving nothing held.
        """
        blocking = _blocking(blocking)
        if blocking and (timeout is None or timeout == -1):
            self._check_not_held_by(get_ident())
        return self._core.acquire(blocking, timeout)

    async def acquire_async(
        self, blocking: Union[bool, int] = True, timeout: Optional[float] = -1
    ) -> Optional[Guard]:
        """``acquire`` for asyncio: waits on interlock's runtime, never blocking the event loop.
        Cancelling the awaiting task cancels the acquisition, leaving nothing held."""
        blocking = _blocking(blocking)
        if blocking and (timeout is None or timeout == -1):
            self._check_not_held_by(current_task())
        return await self._core.acquire_async(blocking, timeout)

    def _check_not_held_by(self, owner: object) -> None:
        """Refuses a wait-forever that can only deadlock: `owner` (this thread, or this asyncio
        task) holds a conflicting guard of the same lock through ``with``."""
        held = _held.get()
        if not held:
            return
        me = self._core
        for entry in held:
            lock, guard, by = entry.lock, entry.guard, entry.owner
            other = lock._core
            if (
                guard is not None
                and (by is owner or by == owner)
                and other.name == me.name
                and other.provider is me.provider
                and (self._exclusive or lock._exclusive)
                and (other.kind == "mutex") == (me.kind == "mutex")
                and me.kind != "semaphore"
                and guard.held
            ):
                who = "thread" if isinstance(owner, int) else "task"
                raise WouldDeadlock(
                    f'lock "{me.name}" is already held by this {who} (a `with` block around this one); '
                    "interlock locks are not re-entrant, so waiting for it again would deadlock"
                )

    def _push(self, guard: Guard, frame: Any, owner: object) -> None:
        entry = _Entry(self, guard, frame, owner)
        self._entries.append(entry)
        held = _held.get()
        if held:
            held = tuple(e for e in held if e.guard is not None)
        _held.set(held + (entry,))

    def _pop(self, frame: Any, owner: object) -> Guard:
        """Takes the guard of the block that `frame` exits, out of this object's entries."""
        entries = self._entries
        while True:
            # Newest first: nested blocks of one frame exit innermost first. A concurrent
            # removal can make this see an entry twice, never skip one.
            for entry in reversed(entries):
                if entry.frame is frame:
                    break
            else:
                entry = self._orphan(frame, owner)
            try:
                # The claim: of two exits racing for one entry (fallbacks only), one removes it.
                entries.remove(entry)
            except ValueError:
                continue
            guard = entry.guard
            entry.guard = entry.frame = None
            held = _held.get()
            if held and held[-1] is entry:
                _held.set(held[:-1])
            return guard  # type: ignore[return-value]

    def _orphan(self, frame: Any, owner: object) -> _Entry:
        """The entry an exit from outside its ``with`` statement ends: ``__exit__`` called by an
        ``ExitStack`` (maybe closed in another thread) or by hand. A block whose frame is on the
        calling stack is still running (it exits from that frame), so it is never the one. Of
        the others, those whose frame has returned come first (an ``ExitStack``'s
        ``enter_context``: nothing else will ever exit them), then those whose frame may have
        (a coroutine's, not awaited by a task of this thread's event loop), and last the blocks
        still running in a frame of another thread or task, which would otherwise exit
        themselves later. In the first tier that has any: the newest entered by this thread or
        task, else the only one, else the newest (the permits of a semaphore or read lock are
        equivalent: see docs/python.md)."""
        on_stack = set()
        f = frame
        while f is not None:
            on_stack.add(id(f))
            f = f.f_back
        candidates = [e for e in self._entries if e.frame is not None and id(e.frame) not in on_stack]
        if len(candidates) > 1:
            running, awaiting = _running_frames()
            tiers: list = [[], [], []]
            for e in candidates:
                if id(e.frame) in running or id(e.frame) in awaiting:
                    tiers[2].append(e)
                elif e.frame.f_code.co_flags & _SUSPENDABLE:
                    tiers[1].append(e)
                else:
                    tiers[0].append(e)
            candidates = next(t for t in tiers if t)
        for entry in reversed(candidates):
            if entry.owner is owner or entry.owner == owner:
                return entry
        if candidates:
            return candidates[-1]
        raise NotHeld(f'lock "{self.name}" is not held by a `with` block of this lock object')

    def __enter__(self) -> Guard:
        frame = sys._getframe(1)
        owner = get_ident()
        self._check_not_held_by(owner)
        guard = self._core.acquire(True, -1)
        self._push(guard, frame, owner)
        return guard

    def __exit__(self, *exc: Any) -> None:
        self._pop(sys._getframe(1), get_ident()).__exit__(*exc)

    async def __aenter__(self) -> Guard:
        # Before any await: the caller's frame is the one running `async with`.
        frame = sys._getframe(1)
        owner = current_task()
        self._check_not_held_by(owner)
        guard = await self._core.acquire_async(True, -1)
        self._push(guard, frame, owner)
        return guard

    async def __aexit__(self, *exc: Any) -> None:
        await self._pop(sys._getframe(1), current_task()).__aexit__(*exc)

    def __call__(self, func: F) -> F:
        """As a decorator: the function runs under the lock (an ``async def`` function under
        ``async with``)."""
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_locked(*args: Any, **kwargs: Any) -> Any:
                async with self:
                    return await func(*args, **kwargs)

            return async_locked  # type: ignore[return-value]

        @functools.wraps(func)
        def locked(*args: Any, **kwargs: Any) -> Any:
            with self:
                return func(*args, **kwargs)

        return locked  # type: ignore[return-value]

    def __repr__(self) -> str:
        return repr(self._core)


class Mutex(Lock):
    """A mutex: one holder at a time. Made by ``Locks.mutex(name)``."""

    __slots__ = ()


class ReadLock(Lock):
    """The shared side of a read-write lock: ``locks.rwlock(name).read()``."""

    __slots__ = ()


class WriteLock(Lock):
    """The exclusive side of a read-write lock: ``locks.rwlock(name).write()``."""

    __slots__ = ()


class Semaphore(Lock):
    """A semaphore: at most ``permits`` holders at a time. Made by
    ``Locks.semaphore(name, permits)``."""

    __slots__ = ()

    @property
    def permits(self) -> int:
        """The number of permits."""
        return self._core.permits


class RwLock:
    """A read-write lock: many readers or one writer. ``.read()`` and ``.write()`` give its two
    sides, each a lock of its own: ``with locks.rwlock("config").read(): ...``."""

    __slots__ = ("_read", "_write")

    def __init__(self, provider: _interlock.Provider, name: str) -> None:
        self._read = ReadLock(provider.lock(name, "read"))
        self._write = WriteLock(provider.lock(name, "write"))

    @property
    def name(self) -> str:
        """The lock name."""
        return self._read.name

    def read(self) -> ReadLock:
        """The shared side."""
        return self._read

    def write(self) -> WriteLock:
        """The exclusive side."""
        return self._write

    def __repr__(self) -> str:
        return f"<interlock rwlock {self.name!r}>"


AnyLock = Union[Mutex, ReadLock, WriteLock, Semaphore]
