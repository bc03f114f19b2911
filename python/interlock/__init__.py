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
from asyncio import current_task
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

# The guards taken by `with lock:` / `async with lock:`, innermost last, as (lock, guard, owner)
# with owner the thread's ident or the asyncio task. A context variable, so that threads never
# see each other's; a task created inside a block inherits the entries, hence the owner.
_held: contextvars.ContextVar[tuple] = contextvars.ContextVar("interlock_held", default=())

# Threads of interlock's runtime that hand outcomes to asyncio loops stop entering Python when
# the interpreter exits (and the ones inside are waited for).
atexit.register(_interlock._shutdown)

# Guards taken before a fork are never held by the child (see docs/python.md, "Fork safety").
# Forks that do not run this hook (uwsgi's) are caught on the first use of an interlock object.
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_interlock._after_fork_in_child)


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
        ``InvalidArgument`` for fewer than 1 permit."""
        if not isinstance(permits, int) or isinstance(permits, bool) or permits < 1:
            raise InvalidArgument(f"invalid argument: a semaphore needs at least 1 permit (got {permits!r})")
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

    __slots__ = ("_core", "_exclusive")

    def __init__(self, core: _interlock.Lock) -> None:
        self._core = core
        self._exclusive = core.kind in ("mutex", "write")

    @property
    def name(self) -> str:
        """The lock name."""
        return self._core.name

    @property
    def kind(self) -> str:
        """``mutex``, ``read``, ``write`` or ``semaphore``."""
        return self._core.kind

    def acquire(self, blocking: bool = True, timeout: Optional[float] = -1) -> Optional[Guard]:
        """Takes the lock and returns its ``Guard``, like ``threading.Lock.acquire``:

        - ``acquire()`` waits as long as it takes;
        - ``acquire(timeout=10)`` waits at most 10 s, then raises ``Timeout`` (a ``TimeoutError``);
        - ``acquire(blocking=False)`` makes one attempt and returns ``None`` when the lock is held
          elsewhere.

        Waits release the GIL; Ctrl-C (``KeyboardInterrupt``) cancels them, leaving nothing held.
        """
        if blocking and (timeout is None or timeout == -1):
            self._check_not_held_by(get_ident())
        return self._core.acquire(blocking, timeout)

    async def acquire_async(self, blocking: bool = True, timeout: Optional[float] = -1) -> Optional[Guard]:
        """``acquire`` for asyncio: waits on interlock's runtime, never blocking the event loop.
        Cancelling the awaiting task cancels the acquisition, leaving nothing held."""
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
        for lock, guard, by in held:
            other = lock._core
            if (
                by is owner or by == owner
            ) and (
                other.name == me.name
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

    def _push(self, guard: Guard, owner: object) -> None:
        _held.set(_held.get() + ((self, guard, owner),))

    def _pop(self, owner: object) -> Guard:
        held = _held.get()
        for i in range(len(held) - 1, -1, -1):
            entry = held[i]
            if entry[0] is self and (entry[2] is owner or entry[2] == owner):
                _held.set(held[:i] + held[i + 1 :])
                return entry[1]
        raise NotHeld(f'lock "{self.name}" is not held by a `with` block of this thread or task')

    def __enter__(self) -> Guard:
        owner = get_ident()
        self._check_not_held_by(owner)
        guard = self._core.acquire(True, -1)
        self._push(guard, owner)
        return guard

    def __exit__(self, *exc: Any) -> None:
        self._pop(get_ident()).__exit__(*exc)

    async def __aenter__(self) -> Guard:
        owner = current_task()
        self._check_not_held_by(owner)
        guard = await self._core.acquire_async(True, -1)
        self._push(guard, owner)
        return guard

    async def __aexit__(self, *exc: Any) -> None:
        await self._pop(current_task()).__aexit__(*exc)

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
