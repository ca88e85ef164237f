"""Waiting on many children at once: ``iter_exits``, ``wait_all``, ``wait_any``.

None of them uses a thread per child or a polling loop.
:func:`~pyclone3.iter_exits` and :func:`~pyclone3.wait_any` watch every
child's pidfd with one ``epoll`` instance;
each wake-up reaps every child that is ready (``epoll_wait`` hands back all
of them at once) in one call into C, and while exits come often the next
wake-up waits for a batch, so a burst of exits costs a few wake-ups, not one
each.
:func:`~pyclone3.wait_all`, which needs only the last exit at once, sleeps on one
child at a time and wakes up fewer times still. A child that turns
readable but cannot be reaped yet (a traced child, or a non-child whose own
parent has not reaped it) is re-checked with a growing pause, so it can
never make a loop spin.

Children are :class:`~pyclone3.PidFd` objects or anything with a ``pidfd``
attribute holding one (:class:`pyclone3.Popen`, or any ``Popen`` with the
:class:`~pyclone3.ChildExt` mixin). Each exit is recorded by the child's
pidfd, so a ``Popen``'s ``returncode`` is set as the exit is reported,
exactly as ``poll()`` would set it.
"""

from __future__ import annotations

import math
import select
import time
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any, Protocol, Union

from ._child import ChildState
from ._sweep import Sweep
from ._waiting import WaitTimeout, deadline, poll_fd, remaining
from .pidfd import PidFd, state_of
from .status import WaitStatus

__all__ = ["Child", "HasPidFd", "WaitAllTimeout", "iter_exits", "wait_all", "wait_any"]


class HasPidFd(Protocol):
    """Anything with a ``pidfd`` attribute holding a :class:`~pyclone3.PidFd`
    (a :class:`pyclone3.Popen`)."""

    @property
    def pidfd(self) -> PidFd: ...


#: A child, as the functions here take it (a PidFd, or a Popen with a pidfd).
Child = Union[PidFd, HasPidFd]

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

    Attributes:
        timeout: the timeout that passed, in seconds.
        done: each child reported so far, mapped to its status.
        pending: the children still running, in the order they were given.
    """

    def __init__(self, timeout: float, done: dict[Any, WaitStatus], pending: list[Any]) -> None:
        super().__init__(
            f"{len(pending)} of {len(done) + len(pending)} children still running "
            f"after {timeout} seconds"
        )
        self.timeout = timeout
        self.done = done
        self.pending = pending


def state_of_child(child: Any) -> ChildState:
    """The state behind a child given to the functions here; ``TypeError`` for anything else."""
    if isinstance(child, PidFd):
        return state_of(child)
    pidfd = getattr(type(child), "pidfd", None)
    if pidfd is not None:
        pidfd = child.pidfd  # raises PidfdUnavailableError for a Popen without one
        if isinstance(pidfd, PidFd):
            return state_of(pidfd)
    raise TypeError(f"expected a PidFd or a pyclone3 Popen, not {type(child).__name__}")


def _unique(children: Iterable[Child]) -> tuple[list[Any], list[Any]]:
    """(as given, without repeats): a child given twice is waited for once."""
    as_given = list(children)
    unique: dict[int, Any] = {}
    for child in as_given:
        unique.setdefault(id(child), child)
    return as_given, list(unique.values())


def closed_status(child: Any, state: ChildState) -> WaitStatus:
    """The status of a child whose pidfd is closed; ``ValueError`` if none is known.

    Its owner closes it once the child's exit is recorded, maybe in another thread.
    """
    status = state.status
    if status is None:
        raise ValueError(f"I/O operation on closed PidFd: {child!r}")
    return status


def _timeout(
    timeout: float | None, given: list[Any], statuses: list[WaitStatus | None]
) -> WaitAllTimeout:
    """The exception for a deadline that passed, *statuses* matching *given*."""
    finished = {c: s for c, s in zip(given, statuses) if s is not None}
    pending = [c for c, s in zip(given, statuses) if s is None]
    return WaitAllTimeout(timeout if timeout is not None else math.inf, finished, pending)


class ExitStream(Iterator[tuple[Child, WaitStatus]]):
    """What :func:`~pyclone3.iter_exits` returns: an iterator of ``(child, status)`` in exit order.

    :meth:`close` (or the end of the iteration, or ``with``) lets go of the
    pidfds it holds.
    """

    # Class defaults: close() and __del__ work even if __init__ never ran.
    _ep: Any = None
    _sweep: Sweep | None = None

    def __init__(self, children: Iterable[Child], timeout: float | None) -> None:
        _, given = _unique(children)
        self._timeout = timeout
        self._when = deadline(timeout)
        states = [state_of_child(c) for c in given]
        self._given = given
        self._sweep = Sweep(states)
        self._ready: deque[int] = deque()  # ended, not yet reported
        self._by_fd: dict[int, list[int]] = {}  # fd -> children (a Popen and its PidFd)
        # Readable but not reapable yet (a traced child; a non-child whose
        # parent has not reaped it): watched for HUP only (the kernel's
        # "reaped" signal) and re-checked after a growing pause: never spun on.
        self._stalled: dict[int, float] = {}  # index -> monotonic time of the next check
        self._pause: dict[int, float] = {}
        self._last_wake = -math.inf
        self._nap_s = 0.0  # how long to let exits gather before the next reap
        self._ep = select.epoll()
        try:
            self._hold_all(states)
        except BaseException:
            self.close()
            raise
        self._left = len(given) - len(self._ready)

    def _hold_all(self, states: list[ChildState]) -> None:
        """Hold every child's pidfd and watch it; a child ended already is ready at once."""
        ep, sweep, given = self._ep, self._sweep, self._given
        assert sweep is not None
        for i, state in enumerate(states):
            status = state.status
            if status is None:
                fd = sweep.hold(i)  # held: no close can free it under us
                if fd < 0:  # closed since (by its owner, once another thread reaped it?)
                    status = closed_status(given[i], state)
                elif fd in self._by_fd:
                    self._by_fd[fd].append(i)
                    continue
                else:
                    self._by_fd[fd] = [i]
                    # One-shot: a child's fd is reported once, and never again
                    # once reaped, with no epoll_ctl call to take it out.
                    ep.register(fd, select.EPOLLIN | select.EPOLLONESHOT)
                    continue
            sweep.statuses[i] = status
            self._ready.append(i)

    def __iter__(self) -> ExitStream:
        return self

    def __next__(self) -> tuple[Child, WaitStatus]:
        while not self._ready:
            if not self._left or self._sweep is None:
                self.close()
                raise StopIteration
            try:
                self._wake_up()
            except BaseException:  # a timeout, or an interrupt: the iteration is over
                self.close()
                raise
        i = self._ready.popleft()
        status = self._sweep.statuses[i]  # type: ignore[union-attr]  # set above
        assert status is not None
        return self._given[i], status

    def _wake_up(self) -> None:
        """One wait for exits, and one reap of every child found ready."""
        sweep, stalled, when = self._sweep, self._stalled, self._when
        assert sweep is not None
        if self._nap_s and not stalled:
            # Exits keep coming: let more of them gather, then reap them
            # together (never past the deadline).
            nap = self._nap_s - (time.monotonic() - self._last_wake)
            if when is not None:
                nap = min(nap, when - time.monotonic())
            if nap > 0:
                time.sleep(nap)
        now = time.monotonic()
        wait_s = -1.0 if when is None else max(when - now, 0.0)
        if stalled:
            until = max(min(stalled.values()) - now, 0.0)
            wait_s = until if wait_s < 0 else min(wait_s, until)
        events = self._ep.poll(wait_s)
        now = time.monotonic()
        gap = 0.0
        if events:
            gap = (now - self._last_wake) / len(events)  # between exits, lately
            self._last_wake = now
        ready = [i for fd, _ in events for i in self._by_fd[fd]]
        ready.extend(i for i, at in stalled.items() if at <= now and i not in ready)
        states = sweep.states
        for i in ready:
            if not states[i].foreign:
                sweep.watch(i)
        reaped = sweep()  # every ready child of ours, in one call into C
        for i in ready:
            sweep.watch(i, False)
            if sweep.statuses[i] is not None:
                continue
            # Not reaped by the sweep: not ours to reap, reaped by another
            # thread, or nothing to reap yet. The child's own check knows.
            status = _checked(states[i])
            if status is None:
                if i not in stalled:
                    self._ep.modify(sweep.held[i], select.EPOLLONESHOT)  # HUP only
                self._pause[i] = step = min(self._pause.get(i, 0.0005) * 2, _STALLED_MAX_S)
                stalled[i] = now + step
                continue
            sweep.took(i, status)
            reaped.append(i)
        self._left -= len(reaped)
        left = self._left
        if events:
            # Nap before the next reap only while exits come often (two or
            # more expected in COALESCE_S): for COALESCE_S at most, and no
            # longer than the children left would take at this rate, with at
            # least two of them to gather (so never for the last two, which
            # should not wait).
            often = gap < COALESCE_S / 2 and left > 2
            self._nap_s = min(COALESCE_S, (left - 1) * gap) if often else 0.0
        for i in reaped:
            stalled.pop(i, None)
            self._pause.pop(i, None)
            self._ready.append(i)
        if left and not reaped and when is not None and now >= when:
            raise _timeout(self._timeout, self._given, sweep.statuses)

    def close(self) -> None:
        """Stop watching; let go of every pidfd still held. Closing twice does nothing."""
        ep, self._ep = self._ep, None
        if ep is not None:
            ep.close()
        sweep, self._sweep = self._sweep, None
        if sweep is not None:
            sweep.release_all()

    def __enter__(self) -> ExitStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


def _checked(state: ChildState) -> WaitStatus | None:
    """The child's own non-blocking check (it may have been closed by its owner meanwhile)."""
    try:
        return state.try_reap()
    except ValueError:
        return state.status


def iter_exits(children: Iterable[Child], timeout: float | None = None) -> ExitStream:
    """Yield ``(child, status)`` for each child as it exits, in exit order.

    Children that have already exited come first. Each child is reported
    once, even if given twice. *timeout* (seconds, for the whole iteration;
    ``None`` waits for ever) raises :class:`WaitAllTimeout` when it passes
    with children left. The pidfds stay usable (and cannot be closed under
    the loop) until the iteration finishes or the iterator is closed.

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
    return ExitStream(children, timeout)


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
    as_given, given = _unique(children)
    when = deadline(timeout)
    states = [state_of_child(c) for c in given]
    sweep = Sweep(states)
    statuses = sweep.statuses
    try:
        for i, state in enumerate(states):
            status = state.status
            if status is not None:
                statuses[i] = status
            elif sweep.hold(i) < 0:
                statuses[i] = closed_status(given[i], state)
            elif not state.foreign:  # a foreign one is left to its own wait
                sweep.watch(i)
        sweep()
        cap_ms = int(CATCH_UP_S * 1000)
        i = len(given) - 1
        while True:
            while i >= 0 and statuses[i] is not None:
                i -= 1
            if i < 0:
                break
            state = states[i]
            if when is not None and time.monotonic() >= when:
                raise _timeout(timeout, given, statuses)
            if sweep.watching(i):
                try:
                    ready = poll_fd(sweep.held[i], select.POLLIN, when, cap_ms, state.wake_fd())
                except ValueError:  # closed already (by its owner, another thread reaped it?)
                    ready = -1
                sweep()  # reap everyone who has exited meanwhile, this child included
                if statuses[i] is not None or ready == 0:
                    continue  # not ready: a catch-up, or the deadline (checked above)
            # Not ours to reap, reaped by another thread, or readable with
            # nothing to reap (a traced child, say): its own wait knows how
            # to wait for that.
            try:
                status = state.wait(remaining(when), when)
            except WaitTimeout:
                sweep()
                raise _timeout(timeout, given, statuses) from None
            except ValueError:
                status = closed_status(given[i], state)
            statuses[i] = status
    finally:
        sweep.release_all()
    if len(given) == len(as_given):
        return statuses  # type: ignore[return-value]  # all set by now
    by_id = {id(c): s for c, s in zip(given, statuses)}
    return [by_id[id(c)] for c in as_given]  # type: ignore[misc]


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
    with ExitStream(given, timeout) as exits:
        return next(exits)
