"""interlock's exceptions: one class per variant of the Rust error enum, under ``Error``.

The messages are the Rust library's own one-line messages; URLs in them never show a password.
"""

from __future__ import annotations

__all__ = [
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


class Error(Exception):
    """Base class of every interlock error."""


class Timeout(Error, TimeoutError):
    """A timed acquisition did not get the lock in time."""


class LockLost(Error):
    """The lock was lost while held (lease expired, session gone, key overwritten), or the guard
    was taken by the parent of this forked process. The critical section may not have been
    exclusive."""


class InvalidName(Error, ValueError):
    """The lock name is empty, longer than 1024 bytes, or contains NUL."""


class InvalidUrl(Error, ValueError):
    """The URL cannot be parsed, or names an unknown option."""


class InvalidArgument(Error, ValueError):
    """An argument other than the name or URL is out of range (permits, lease, timeout)."""


class PermitsMismatch(InvalidArgument):
    """Holders of one semaphore disagree on its number of permits."""


class Unsupported(Error):
    """The backend cannot do this, or is not built into this package."""


class Unavailable(Error, ConnectionError):
    """The backend cannot be reached (server down, connection refused, no quorum)."""


class Auth(Error):
    """The backend refused the credentials."""


class Backend(Error):
    """The backend answered with an error that fits no other class."""


class Io(Error, OSError):
    """A local I/O operation failed (lock directory, lock file)."""


class NotHeld(Error, RuntimeError):
    """``release()`` of a guard that was already released (as ``threading.Lock`` raises
    ``RuntimeError`` for an unlocked lock)."""


class WouldDeadlock(Error, RuntimeError):
    """A wait without timeout for a lock that this thread or task already holds through ``with``:
    interlock's locks are not re-entrant, so it would wait for itself forever."""
