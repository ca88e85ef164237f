"""Deadlines and ``poll(2)`` for the waits, and :class:`WaitTimeout`."""

from __future__ import annotations

import math
import select
import time

__all__ = ["WaitTimeout", "deadline", "poll_fd", "remaining"]

_POLL_MAX_MS = 2**31 - 1
_FAST_TIMEOUT_MAX = 1e9  # seconds; NaN, infinities and the rest take the full check


class WaitTimeout(TimeoutError):
    """:meth:`PidFd.wait` gave up: the process had not exited in time.

    A :class:`TimeoutError`. The process is untouched: call
    :meth:`PidFd.wait` again to go on waiting.

    Attributes:
        pid: the PID of the process waited for.
        timeout: the timeout that passed, in seconds.
    """

    def __init__(self, pid: int, timeout: float) -> None:
        super().__init__(f"process {pid} did not exit within {timeout} seconds")
        self.pid = pid
        self.timeout = timeout


def deadline(timeout: float | None) -> float | None:
    """Monotonic deadline for *timeout* seconds; ``None`` means never.

    ``TypeError`` for a non-number, ``ValueError`` for NaN; a negative
    timeout is a deadline already past, an infinite one none.
    """
    if timeout is None:
        return None
    kind = type(timeout)
    if (kind is float or kind is int) and 0 <= timeout < _FAST_TIMEOUT_MAX:
        return time.monotonic() + timeout  # the common case, checked cheaply
    import numbers  # here, not at the top: only the uncommon cases need it

    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
        raise TypeError(f"timeout must be a number or None, not {type(timeout).__name__}")
    seconds = float(timeout)
    if math.isnan(seconds):
        raise ValueError("timeout must not be NaN")
    if seconds == math.inf:
        return None
    return time.monotonic() + max(seconds, 0.0)


def remaining(when: float | None) -> float | None:
    """Seconds left until the deadline *when* (never negative); ``None`` for none."""
    return None if when is None else max(when - time.monotonic(), 0.0)


def poll_fd(
    fd: int, events: int, when: float | None, cap_ms: int | None = None, wake: int = -1
) -> int:
    """poll(2) *fd* until an event or the deadline *when*; return revents (0 if none).

    One ``poll`` call per wait however long it is (a wait past ~24 days,
    ``poll``'s limit, takes one more call per 24 days); ``select.poll``
    retries on signals itself (PEP 475). With *cap_ms*, return 0 after at
    most that long even if the deadline is further away. If *wake* turns
    readable, return -1: the fd was closed under the caller.
    """
    poller = select.poll()
    poller.register(fd, events)
    if wake >= 0:
        poller.register(wake, select.POLLIN)
    while True:
        if when is None:
            ms = -1
        else:
            left = when - time.monotonic()
            # min first: a deadline 1e300 s away would overflow ceil().
            ms = 0 if left <= 0 else math.ceil(min(left * 1000, _POLL_MAX_MS))
        capped = cap_ms is not None and (ms < 0 or ms > cap_ms)
        ready = poller.poll(cap_ms if capped else ms)
        for ready_fd, _ in ready:
            if ready_fd == wake:
                return -1
        if ready:
            return ready[0][1]
        if capped or (when is not None and time.monotonic() >= when):
            return 0
