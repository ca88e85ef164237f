"""Waiting on many children at once: :func:`iter_exits`, :func:`wait_all`, :func:`wait_any`.

None of them uses a thread per child or a polling loop. :func:`iter_exits`
and :func:`wait_any` watch every child's pidfd with one ``epoll`` instance;
each wake-up reaps every child that is ready (``epoll_wait`` hands back all
of them at once) in one call into C, and while exits come often the next
wake-up waits for a batch, so a burst of exits costs a few wake-ups, not one
each.
:func:`wait_all`, which needs only the last exit at once, sleeps on one
child at a time and wakes up fewer times still. A child that turns
readable but cannot be reaped yet (a traced child, or a non-child whose own
parent has not reaped it) is re-checked with a growing pause, so it can
never make a loop spin.

Children are :class:`~pyclone3.PidFd` objects or ``Popen`` objects with a
pidfd (:class:`pyclone3.Popen`, or any ``Popen`` with the
:class:`~pyclone3.ChildExt` mixin). For a ``Popen`` its ``returncode`` is set
as the exit is reported, exactly as ``poll()`` would set it.
"""

from __future__ import annotations

import math
import os
import select
import subprocess
import time
from collections.abc import Generator, Iterable
from typing import Any, Union

from ._clone3 import ffi, lib
from .flags import ChildCode
from .pidfd import PidFd, WaitTimeout, _deadline, _poll, _sweeps
from .popen import ChildExt
from .status import WaitStatus

__all__ = ["Child", "WaitAllTimeout", "iter_exits", "wait_all", "wait_any"]

#: What the functions here accept: a PidFd, or a Popen with a pidfd.
Child = Union[PidFd, ChildExt]

_STALLED_MAX_S = 0.05
#: :func:`iter_exits`: while exits come often (two or more expected within
#: this many seconds), each wake-up is followed by a nap of up to this long
#: before the next reap, so that one wake-up reaps a batch. A lone exit after
#: a quiet spell is reported at once; none is reported later than this after
#: it happened.
COALESCE_S = 0.05
#: :func:`wait_all` reaps every child that has exited at least this often
#: (seconds) while it waits, so that zombies do not pile up and the last
#: exit is reported without a backlog to clear first.
CATCH_UP_S = 1.0


class WaitAllTimeout(TimeoutError):
    """The deadline passed with children still running.

    :attr:`done` maps each child reported so far to its status; :attr:`pending`
    lists the children still running, in the order they were given.
    """

    def __init__(self, timeout: float, done: dict[Any, WaitStatus], pending: list[Any]) -> None:
        super().__init__(
            f"{len(pending)} of {len(done) + len(pending)} children still running "
            f"after {timeout} seconds"
        )
        self.timeout = timeout
        self.done = done
        self.pending = pending


def _known_status(child: Any, pidfd: PidFd) -> WaitStatus | None:
    """The exit already seen for *child* (its pidfd may be closed by now)."""
    status = pidfd._status
    if status is None and isinstance(child, ChildExt) and child.returncode is not None:
        code = child.returncode  # reaped without a status (e.g. by someone else)
        if code >= 0:
            return WaitStatus(child.pid, ChildCode.CLD_EXITED, code)
        return WaitStatus(child.pid, ChildCode.CLD_KILLED, -code)
    return status


def _pidfd_of(child: Any) -> PidFd:
    if isinstance(child, PidFd):
        return child
    if isinstance(child, ChildExt):
        return child.pidfd  # raises PidfdUnavailableError without one
    raise TypeError(f"expected a PidFd or a pyclone3 Popen, not {type(child).__name__}")


def _record(child: Any, status: WaitStatus) -> None:
    """Let a Popen know its child was reaped: its returncode, and its pidfd closed.

    Directly (:meth:`ChildExt._reaped`), not through ``poll()``, which
    records nothing while another thread is inside one.
    """
    if isinstance(child, ChildExt):
        child._reaped(status)


def _closed_status(child: Any, pidfd: PidFd) -> WaitStatus:
    """The status of a child whose pidfd is closed; ``ValueError`` if none is known.

    Its owner closes it once the child is reaped, maybe in another thread.
    """
    status = _known_status(child, pidfd)
    if status is None:
        raise ValueError(f"I/O operation on closed PidFd: {child!r}")
    return status


def iter_exits(
    children: Iterable[Child], timeout: float | None = None
) -> Generator[tuple[Child, WaitStatus], None, None]:
    """Yield ``(child, status)`` for each child as it exits, in exit order.

    Children that have already exited come first. Each child is reported
    once, even if given twice. *timeout* (seconds, for the whole iteration;
    ``None`` waits for ever) raises :class:`WaitAllTimeout` when it passes
    with children left. The pidfds stay usable (and cannot be closed under
    the loop) until the iterator finishes or is closed.

    A lone exit is reported at once. While exits come often, the next reap
    waits for more of them to gather (up to ``COALESCE_S``, 50 ms, and never
    longer than the children left would take at the recent rate, so the last
    ones are not held back), then reaps them all in one call into C: a
    stream of exits costs a wake-up per 50 ms, not one per exit. Exits
    within one batch come in the order the children were given.

    Raises ``TypeError`` for anything but a ``PidFd`` or a ``Popen`` with
    a pidfd, :class:`~pyclone3.PidfdUnavailableError` for a ``Popen`` without
    one, ``ValueError`` for a closed ``PidFd``, all before waiting.
    """
    unique: dict[int, Any] = {}
    for child in children:
        unique.setdefault(id(child), child)
    given = list(unique.values())
    deadline = None if timeout is None else _deadline(timeout)
    pidfds = [_pidfd_of(c) for c in given]
    n = len(given)
    owned = [isinstance(c, ChildExt) and c._pidfd_owned for c in given]
    held = [-1] * n  # fds held (PidFd._acquire) until reaped or let go of
    statuses: list[WaitStatus | None] = [None] * n
    ep = select.epoll()
    try:
        ready_now = []
        by_fd: dict[int, list[int]] = {}  # fd -> indices in given (a Popen and its PidFd)
        for i, (child, pidfd) in enumerate(zip(given, pidfds)):
            status = _known_status(child, pidfd)
            if status is not None:  # reaped before we started
                statuses[i] = status
                ready_now.append(i)
                continue
            fd = held[i] = pidfd._acquire_if_open()  # held: no close can free it under us
            if fd < 0:  # closed since (by its owner, once another thread reaped it?)
                statuses[i] = _closed_status(child, pidfd)
                ready_now.append(i)
                continue
            if fd in by_fd:
                by_fd[fd].append(i)
                continue
            by_fd[fd] = [i]
            # One-shot: a child's fd is reported once, and never again once
            # reaped, with no epoll_ctl call to take it out.
            ep.register(fd, select.EPOLLIN | select.EPOLLONESHOT)
        for i in ready_now:
            _record(given[i], statuses[i])  # type: ignore[arg-type]  # set above
            yield given[i], statuses[i]  # type: ignore[misc]
        sweep = _Sweep(given, pidfds, owned, held, [-1] * n, statuses)
        # Readable but not reapable yet (a traced child; a non-child whose
        # parent has not reaped it): watched for HUP only (the kernel's
        # "reaped" signal) and re-checked after a growing pause: never spun on.
        stalled: dict[int, float] = {}  # index -> monotonic time of the next check
        pause: dict[int, float] = {}
        left = n - len(ready_now)
        last_wake = -math.inf
        nap_s = 0.0  # how long to let exits gather before the next reap
        while left:
            if nap_s and not stalled:
                # Exits keep coming: let more of them gather, then reap them
                # together (never past the deadline).
                nap = nap_s - (time.monotonic() - last_wake)
                if deadline is not None:
                    nap = min(nap, deadline - time.monotonic())
                if nap > 0:
                    time.sleep(nap)
            now = time.monotonic()
            wait_s = -1.0 if deadline is None else max(deadline - now, 0.0)
            if stalled:
                until = max(min(stalled.values()) - now, 0.0)
                wait_s = until if wait_s < 0 else min(wait_s, until)
            events = ep.poll(wait_s)
            now = time.monotonic()
            if events:
                gap = (now - last_wake) / len(events)  # between exits, lately
                last_wake = now
            ready = [i for fd, _ in events for i in by_fd[fd]]
            ready.extend(i for i, when in stalled.items() if when <= now and i not in ready)
            fds = sweep.fds
            for i in ready:
                if not pidfds[i]._foreign:
                    fds[i] = held[i]
            reaped = sweep()  # every ready child of ours, in one call into C
            for i in ready:
                fds[i] = -1
                if statuses[i] is not None:
                    continue
                # Not reaped by the sweep: not ours to reap, reaped by another
                # thread, or nothing to reap yet. The PidFd's own check knows.
                status = pidfds[i]._try_reap(held[i])
                if status is None:
                    if i not in stalled:
                        ep.modify(held[i], select.EPOLLONESHOT)  # HUP only
                    pause[i] = step = min(pause.get(i, 0.0005) * 2, _STALLED_MAX_S)
                    stalled[i] = now + step
                    continue
                sweep.took(i, status)
                reaped.append(i)
            left -= len(reaped)
            if events:
                # Nap before the next reap only while exits come often (two
                # or more expected in COALESCE_S): for COALESCE_S at most,
                # and no longer than the children left would take at this
                # rate, with at least two of them to gather (so never for the
                # last two, which should not wait).
                often = gap < COALESCE_S / 2 and left > 2
                nap_s = min(COALESCE_S, (left - 1) * gap) if often else 0.0
            for i in reaped:
                stalled.pop(i, None)
                pause.pop(i, None)
                yield given[i], statuses[i]  # type: ignore[misc]  # set by now
            if left and not reaped and deadline is not None and now >= deadline:
                raise _timeout(timeout, given, statuses)
    finally:
        ep.close()
        for i, fd in enumerate(held):
            if fd >= 0:  # not let go of on a reap
                pidfds[i]._release()


def wait_all(children: Iterable[Child], timeout: float | None = None) -> list[WaitStatus]:
    """Wait for every child to exit; return their statuses in the order given.

    Only the last exit has to be noticed at once, so the wait sleeps on one
    child at a time: **the last one given that still runs**, in ``poll(2)``
    on its pidfd. Children are usually given in the order they were
    started, and a child started later tends to end later, so one wake-up
    covers all the children that ended before it. For exits in random order
    that makes about ``ln(n)`` wake-ups. On each wake-up, and at least every
    ``CATCH_UP_S`` seconds (1 s) while it sleeps, one sweep reaps every
    child that has exited: a single call into C makes one ``poll`` over all
    the pidfds and one ``waitid`` for each that is ready. So zombies never
    pile up, and the last exit is reported without a backlog to clear first.
    The standard library's ``p.wait(timeout=remaining)`` loop sleeps and
    polls in steps of up to 50 ms instead: it wakes up far more often and
    notices the last exit later.

    The pidfds cannot be closed under the wait: a ``close()`` from another
    thread takes effect when it returns. On timeout raises
    :class:`WaitAllTimeout`, whose ``done`` and ``pending`` say who had
    finished by then. Arguments are checked as :func:`iter_exits` checks
    them, before any wait.
    """
    as_given = list(children)
    unique: dict[int, Any] = {}
    for child in as_given:
        unique.setdefault(id(child), child)
    given = list(unique.values())
    deadline = None if timeout is None else _deadline(timeout)
    n = len(given)
    statuses: list[WaitStatus | None] = [None] * n
    pidfds: list[PidFd] = []
    owned: list[bool] = []  # True for a Popen that closes its pidfd once reaped
    held: list[int] = []  # fds held (PidFd._acquire_if_open) until let go of
    watched: list[int] = []  # what the sweeps poll: -1 for none
    try:
        # One pass over the children (it costs per child, so it is kept
        # lean): check each, hold its fd, and list it for the sweeps.
        for child in given:
            if isinstance(child, ChildExt):
                pidfd = child.pidfd  # raises PidfdUnavailableError without one
                owned.append(child._pidfd_owned)
            else:
                pidfd = _pidfd_of(child)
                owned.append(False)
            pidfds.append(pidfd)
            fd = pidfd._acquire_if_open()
            held.append(fd)
            if fd < 0:
                statuses[len(held) - 1] = _closed_status(child, pidfd)
            elif pidfd._foreign:
                fd = -1  # not ours to reap: left to its own wait
            watched.append(fd)
        sweep = _Sweep(given, pidfds, owned, held, watched, statuses)
        sweep()
        cap_ms = int(CATCH_UP_S * 1000)
        i = n - 1
        while True:
            while i >= 0 and statuses[i] is not None:
                i -= 1
            if i < 0:
                break
            child, pidfd = given[i], pidfds[i]
            if deadline is not None and time.monotonic() >= deadline:
                raise _timeout(timeout, given, statuses)
            if sweep.fds[i] >= 0:
                try:
                    ready = _poll(held[i], select.POLLIN, deadline, cap_ms, pidfd._wake_fd())
                except ValueError:  # closed by another thread (its owner reaped it?)
                    ready = -1
                sweep()  # reap everyone who has exited meanwhile, this child included
                if statuses[i] is not None or not ready:
                    continue  # not ready: a catch-up, or the deadline (checked above)
            # Not ours to reap, reaped by another thread, or readable with
            # nothing to reap (a traced child, say): its own wait knows how to
            # wait for that.
            status = _known_status(child, pidfd)
            if status is None:
                try:
                    status = _wait_one(child, pidfd, owned[i], deadline)
                except (WaitTimeout, subprocess.TimeoutExpired):
                    sweep()
                    raise _timeout(timeout, given, statuses) from None
            _record(child, status)
            statuses[i] = status
    finally:
        for i, fd in enumerate(held):
            if fd >= 0:  # not let go of by a sweep
                pidfds[i]._release()
    if n == len(as_given):
        return statuses  # type: ignore[return-value]  # all set by now
    by_id = {id(c): s for c, s in zip(given, statuses)}
    return [by_id[id(c)] for c in as_given]  # type: ignore[misc]


class _Sweep:
    """The sweep of wait_all and iter_exits: reap, in one call into C, every child that has exited.

    The lists are wait_all's, one entry per child. *watched* (the fds to
    poll, -1 for none) is copied for the C side, which sets a reaped
    child's entry to -1; *held* and *statuses* are updated in place.
    """

    __slots__ = (
        "fds",
        "given",
        "held",
        "info",
        "owned",
        "pfds",
        "pidfds",
        "reaped",
        "rusage",
        "statuses",
        "where",
    )

    def __init__(
        self,
        given: list[Any],
        pidfds: list[PidFd],
        owned: list[bool],
        held: list[int],
        watched: list[int],
        statuses: list[WaitStatus | None],
    ) -> None:
        n = len(given)
        self.given, self.pidfds, self.owned, self.held = given, pidfds, owned, held
        self.statuses = statuses
        self.fds = ffi.new("int[]", watched)
        self.pfds = ffi.new("struct pollfd[]", n)  # the C side's scratch space
        self.where = ffi.new("int[]", n)  # and more of it
        self.reaped = ffi.new("int[]", n)
        self.info = ffi.new("struct pyclone3_waitinfo[]", n)
        # Each WaitStatus refers to its entry here until its rusage is read.
        self.rusage = ffi.new("struct pyclone3_rusage[]", n)

    def __call__(self) -> list[int]:
        """Reap every child that has exited; return their indices."""
        with _sweeps:
            count = lib.pyclone3_reap_exited(
                self.fds,
                len(self.given),
                self.pfds,
                self.where,
                self.reaped,
                self.info,
                self.rusage,
            )
            if count < 0:
                err = ffi.errno
                raise OSError(err, os.strerror(err))
            info, rusage, took = self.info, self.rusage, self.took
            reaped: list[int] = ffi.unpack(self.reaped, count)
            for i in reaped:
                one = info[i]
                took(
                    i, WaitStatus._from_kernel(one.pid, one.code, one.status, one.uid, (rusage, i))
                )
            return reaped

    def took(self, i: int, status: WaitStatus) -> None:
        """Record child *i*'s reap (by a sweep, or by the caller), and let go of its fd."""
        self.held[i] = -1
        # A Popen learns first, so that a poll() from another thread that
        # finds the pidfd closed finds the returncode set.
        _finish(self.given[i], status)
        self.statuses[i] = self.pidfds[i]._swept(status, self.owned[i])


def _finish(child: Any, status: WaitStatus) -> None:
    """wait_all has *status* for *child*: let its Popen know, as its poll() would."""
    if isinstance(child, ChildExt):
        if child.returncode is None:
            child.returncode = status.returncode
        if child._pyclone3_kill_tree:
            child._reap_tree()


def _wait_one(child: Any, pidfd: PidFd, owned: bool, deadline: float | None) -> WaitStatus:
    """wait_all's blocking wait for one child, through its owner's own path."""
    remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
    if owned:
        child._wait(remaining)  # the Popen's own path: reap, record and close
        status = _known_status(child, pidfd)
        assert status is not None
        return status
    return pidfd.wait(remaining)


def _timeout(
    timeout: float | None, given: list[Any], statuses: list[WaitStatus | None]
) -> WaitAllTimeout:
    """The exception for a deadline that passed, *statuses* matching *given*."""
    finished = {c: s for c, s in zip(given, statuses) if s is not None}
    pending = [c for c, s in zip(given, statuses) if s is None]
    return WaitAllTimeout(timeout if timeout is not None else math.inf, finished, pending)


def wait_any(children: Iterable[Child], timeout: float | None = None) -> tuple[Child, WaitStatus]:
    """Wait for the first child to exit and return ``(child, status)``.

    If several are ready at once, the others are reaped too and their
    statuses kept (in each ``PidFd``, and as each ``Popen``'s
    ``returncode``): a later call reports them at once, as does
    :func:`iter_exits`. Each call sets up its watch over all the children
    anew: to take exits one at a time as they come, iterate
    :func:`iter_exits` instead. Raises :class:`WaitAllTimeout` on timeout,
    ``ValueError`` for no children.
    """
    given = list(children)
    if not given:
        raise ValueError("wait_any() needs at least one child")
    exits = iter_exits(given, timeout)
    try:
        return next(exits)
    finally:
        exits.close()
