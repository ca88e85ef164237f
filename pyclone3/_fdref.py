"""A file descriptor shared between threads: :class:`FdRef`.

A pidfd is used by several threads at once (one waits in ``poll``, another
signals, a third closes it). Closing an fd that another thread is about to
pass to a syscall could make that syscall hit whatever file reuses the
number. So, as Go's ``os`` does for its process handle, every use of the fd
that can outlast a lock round is counted, and ``close`` only marks the fd:
the real ``close(2)`` happens when the last user lets go.

Short uses (a ``waitid(WNOHANG)``, a ``pidfd_send_signal``) simply hold the
lock; long ones (a sleep in ``poll``) add a token with :meth:`FdRef.hold_locked`
and take it out with :meth:`FdRef.release`. A waiter that sleeps in
``poll`` can also watch :meth:`FdRef.wake_fd`, which turns readable when the fd
is closed under it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading

from ._clone3 import ffi, lib

# typing is not imported at run time (see pyclone3/__init__.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["FdRef"]

_ONE = (1).to_bytes(8, sys.byteorder)  # an eventfd takes an 8-byte count


class FdRef:
    """One owned fd, closed once: when :meth:`close` was called and no user is left.

    *lock* guards the fields. The owner of a child's state extends this
    class (``ChildState``), so that it changes its own state and the fd's
    in one lock round, on one object. Methods named ``*_locked`` expect the
    caller to hold the lock.

    A long use is a *token* in :attr:`users`, added under the lock and
    taken out with :meth:`release`. ``set.add`` and ``set.discard`` are each
    one call into C, so a holder that always discards its token in a
    ``finally`` can never leave a count behind, even when a signal handler
    raises as the add returns or a contended lock is being taken (a lock
    acquire in the main thread is interruptible).
    """

    __slots__ = ("_wake", "closed", "lock", "number", "users")

    def __init__(self, fd: int, lock: threading.Lock) -> None:
        self.lock = lock
        #: The fd's number, -1 once really closed. Read it under the lock.
        self.number = fd
        #: The long uses holding the fd now.
        self.users: set[object] = set()
        #: True once close() or detach() was called (the fd may still be in use).
        self.closed = fd < 0
        # The wake fd lives in a C cell from birth to close: an exception
        # raised by a signal handler as it is made cannot lose it.
        self._wake: Any = None

    def fileno_locked(self) -> int:
        """The fd, for a use that ends before the lock is let go of; ``ValueError`` if closed."""
        if self.closed:
            raise ValueError("I/O operation on closed PidFd")
        return self.number

    def hold_locked(self, token: object) -> int:
        """Add *token* to the users and return the fd; ``ValueError`` if closed."""
        if self.closed:
            raise ValueError("I/O operation on closed PidFd")
        self.users.add(token)
        return self.number

    def release(self, token: object) -> None:
        """The use *token* is over (any number of times); the last one out closes a closed fd."""
        self.users.discard(token)
        if self.closed and not self.users:
            with self.lock:
                self.close_locked()

    def release_locked(self, token: object) -> None:
        self.users.discard(token)
        if self.closed:
            self.close_locked()

    def close_locked(self) -> None:
        """Mark the fd closed; close it now if nobody uses it, else when the last user leaves.

        The one place the fd and the wake fd are closed (the last user out
        calls it again): each field is cleared before its close(2), so no
        path can close a number twice.
        """
        if self.users:
            if not self.closed:
                self.closed = True
                wake = self._wake
                if wake is not None and wake[0] >= 0:
                    with contextlib.suppress(BlockingIOError):  # a count is pending already
                        os.write(wake[0], _ONE)
            return
        self.closed = True
        if self._wake is not None:  # first: one call into C closes and clears it
            lib.pyclone3_close_cells(self._wake, 1)
        fd, self.number = self.number, -1
        if fd >= 0:
            os.close(fd)

    def close(self) -> None:
        with self.lock:
            self.close_locked()

    def detach(self) -> int:
        """Give up the fd without closing it; users still inside keep using the number."""
        with self.lock:
            fd = self.fileno_locked()
            self.number = -1  # taken away first: nothing below can close it
            self.close_locked()
            return fd

    def finalize(self) -> None:
        """For a finaliser, when nobody else can hold the object: close whatever is left.

        A closing interrupted by a signal handler's exception may have left
        the fd or the wake fd open, or a use's token behind.
        """
        self.users.clear()
        self.close_locked()

    def wake_fd_locked(self) -> int:
        """An fd that turns readable when the fd is closed under a user (made on first need)."""
        self.fileno_locked()
        if self._wake is None:
            self._wake = ffi.new("int[1]", [-1])
        if self._wake[0] < 0 and lib.pyclone3_eventfd_cell(self._wake) < 0:
            err = ffi.errno
            raise OSError(err, os.strerror(err))
        return int(self._wake[0])
