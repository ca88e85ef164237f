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

A :class:`~pyclone3.Scope` may be given next to them, for a whole job: it
counts as ended once it is empty (``populated 0`` in its ``cgroup.events``,
whose fd the kernel flags with ``POLLPRI`` then, so it sits in the same
``poll``/``epoll`` set as the pidfds: no sleep loop). A scope has no exit
status (its members' go to their own parents), so its status is ``None``;
a closed scope is empty (it was removed). Given only children, the
functions return exactly what they return without scopes.
"""

from __future__ import annotations

import math
import select
import time
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any, Optional, Protocol, Union, overload

from ._child import ChildState
from ._sweep import Sweep
from ._waiting import WaitTimeout, deadline, poll_fd, remaining
from .pidfd import PidFd, state_of
from .scope import Scope, ScopeEvents
from .status import WaitStatus

__all__ = [
    "Child",
    "HasPidFd",
    "Job",
    "ScopeExitStream",
    "WaitAllTimeout",
    "iter_exits",
    "wait_all",
    "wait_any",
]


class HasPidFd(Protocol):
    """Anything with a ``pidfd`` attribute holding a :class:`~pyclone3.PidFd`
    (a :class:`pyclone3.Popen`)."""

    @property
    def pidfd(self) -> PidFd: ...


#: A child, as the functions here take it (a PidFd, or a Popen with a pidfd).
Child = Union[PidFd, HasPidFd]
#: A child or a :class:`~pyclone3.Scope`, as the functions here take them
#: (a scope's status is None).
Job = Union[PidFd, HasPidFd, Scope]

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
        done: each child reported so far, mapped to its status (``None`` for a
            scope that emptied).
        pending: the children still running, in the order they were given.
    """

    def __init__(
        self, timeout: float, done: dict[Any, WaitStatus | None], pending: list[Any]
    ) -> None:
        super().__init__(
            f"{len(pending)} of {len(done) + len(pending)} children still running "
            f"after {timeout} seconds"
        )
        self.timeout = timeout
        self.done = done
        self.pending = pending


def state_of_child(child: Any) -> ChildState:
    """The state behind a child given to the functions here; ``TypeError`` for anything else."""
    if isinstance(child, Scope):
        raise TypeError("a Scope has no exit status to wait for here: use Scope.wait()")
    if isinstance(child, PidFd):
        return state_of(child)
    pidfd = getattr(type(child), "pidfd", None)
    if pidfd is not None:
        pidfd = child.pidfd  # raises PidfdUnavailableError for a Popen without one
        if isinstance(pidfd, PidFd):
            return state_of(pidfd)
    raise TypeError(f"expected a PidFd or a pyclone3 Popen, not {type(child).__name__}")


def _state_or_scope(job: Any) -> ChildState | None:
    """The state behind a child, or ``None`` for a scope; ``TypeError`` for anything else."""
    if isinstance(job, Scope):
        return None
    if not isinstance(job, PidFd) and getattr(type(job), "pidfd", None) is None:
        raise TypeError(f"expected a PidFd, a pyclone3 Popen or a Scope, not {type(job).__name__}")
    return state_of_child(job)


def _events_of(scope: Scope) -> ScopeEvents | None:
    """*scope*'s cgroup.events, open; ``None`` if it is closed (removed: empty)."""
    try:
        return scope.events()
    except ValueError:
        if scope.closed:
            return None
        raise


def _unique(children: Iterable[Any]) -> tuple[list[Any], list[Any]]:
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
    timeout: float | None,
    given: list[Any],
    statuses: list[WaitStatus | None],
    emptied: Iterable[int] = (),
) -> WaitAllTimeout:
    """The exception for a deadline that passed, *statuses* matching *given*.

    *emptied*: the indices of the scopes found empty.
    """
    done = {i for i, s in enumerate(statuses) if s is not None}.union(emptied)
    finished = {c: statuses[i] for i, c in enumerate(given) if i in done}
    pending = [c for i, c in enumerate(given) if i not in done]
    return WaitAllTimeout(timeout if timeout is not None else math.inf, finished, pending)


class _Exits:
    """The iteration of :class:`ExitStream` and :class:`ScopeExitStream`: one epoll over all."""

    # Class defaults: close() and __del__ work even if __init__ never ran.
    _ep: Any = None
    _sweep: Sweep | None = None
    _events: dict[int, ScopeEvents] = {}  # noqa: RUF012  # replaced in __init__, never mutated

    def __init__(self, children: Iterable[Any], timeout: float | None) -> None:
        _, given = _unique(children)
        self._timeout = timeout
        self._when = deadline(timeout)
        states = [_state_or_scope(c) for c in given]
        self._given = given
        self._sweep = Sweep(states)
        self._ready: deque[int] = deque()  # ended, not yet reported
        self._by_fd: dict[int, list[int]] = {}  # fd -> children (a Popen and its PidFd)
        self._events = {}  # scope index -> its cgroup.events, while it is watched
        self._scope_at: dict[int, int] = {}  # cgroup.events fd -> scope index
        self._emptied: set[int] = set()
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

    def _hold_all(self, states: list[ChildState | None]) -> None:
        """Hold every child's pidfd and watch it; a child ended already is ready at once."""
        ep, sweep, given = self._ep, self._sweep, self._given
        assert sweep is not None
        for i, state in enumerate(states):
            if state is None:
                self._watch_scope(i)
                continue
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

    def _watch_scope(self, i: int) -> None:
        """Watch scope *i*'s cgroup.events for POLLPRI; an empty one is ready at once."""
        events = _events_of(self._given[i])
        if events is not None:
            self._events[i] = events
            # Read once on opening: any change after it flags the fd, so the
            # emptying cannot fall between this check and the registration.
            if events.populated:
                fd = events.fileno()
                self._scope_at[fd] = i
                # Level-triggered: each read of the file clears the flag.
                self._ep.register(fd, select.EPOLLPRI)
                return
        self._scope_emptied(i)

    def _scope_emptied(self, i: int) -> None:
        events = self._events.pop(i, None)
        if events is not None:
            fd = events.fileno()
            if self._scope_at.pop(fd, None) is not None:
                self._ep.unregister(fd)
            events.close()
        self._emptied.add(i)
        self._ready.append(i)

    def _next(self) -> tuple[Any, WaitStatus | None]:
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
        assert status is not None or i in self._emptied
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
        emptied = 0
        for fd, _ in events:
            i = self._scope_at.get(fd, -1)
            if i >= 0 and not self._events[i].populated:
                self._scope_emptied(i)
                emptied += 1
        ready = [i for fd, _ in events if fd in self._by_fd for i in self._by_fd[fd]]
        ready.extend(i for i, at in stalled.items() if at <= now and i not in ready)
        state = sweep.state
        for i in ready:
            if not state(i).foreign:
                sweep.watch(i)
        reaped = sweep()  # every ready child of ours, in one call into C
        for i in ready:
            sweep.watch(i, False)
            if sweep.statuses[i] is not None:
                continue
            # Not reaped by the sweep: not ours to reap, reaped by another
            # thread, or nothing to reap yet. The child's own check knows.
            status = _checked(state(i))
            if status is None:
                if i not in stalled:
                    self._ep.modify(sweep.held[i], select.EPOLLONESHOT)  # HUP only
                self._pause[i] = step = min(self._pause.get(i, 0.0005) * 2, _STALLED_MAX_S)
                stalled[i] = now + step
                continue
            sweep.took(i, status)
            reaped.append(i)
        self._left -= len(reaped) + emptied
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
        if left and not reaped and not emptied and when is not None and now >= when:
            raise _timeout(self._timeout, self._given, sweep.statuses, self._emptied)

    def close(self) -> None:
        """Stop watching; let go of every pidfd and ``cgroup.events`` held.

        Closing twice does nothing.
        """
        ep, self._ep = self._ep, None
        if ep is not None:
            ep.close()
        sweep, self._sweep = self._sweep, None
        if sweep is not None:
            sweep.release_all()
        events, self._events = self._events, {}
        for one in events.values():
            one.close()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


class ExitStream(_Exits, Iterator[tuple[Child, WaitStatus]]):
    """What :func:`~pyclone3.iter_exits` returns: an iterator of ``(child, status)`` in exit order.

    :meth:`close` (or the end of the iteration, or ``with``) lets go of the
    pidfds it holds.
    """

    def __iter__(self) -> ExitStream:
        return self

    def __next__(self) -> tuple[Child, WaitStatus]:
        return self._next()  # type: ignore[return-value]  # no scope: a status each

    def __enter__(self) -> ExitStream:
        return self


class ScopeExitStream(_Exits, Iterator[tuple[Job, Optional[WaitStatus]]]):
    """What :func:`~pyclone3.iter_exits` returns when given a :class:`~pyclone3.Scope`.

    As :class:`ExitStream`, with ``(scope, None)`` for a scope once it is empty.
    """

    def __iter__(self) -> ScopeExitStream:
        return self

    def __next__(self) -> tuple[Job, WaitStatus | None]:
        return self._next()

    def __enter__(self) -> ScopeExitStream:
        return self


def _checked(state: ChildState) -> WaitStatus | None:
    """The child's own non-blocking check (it may have been closed by its owner meanwhile)."""
    try:
        return state.try_reap()
    except ValueError:
        return state.status


@overload
def iter_exits(  # type: ignore[overload-overlap]  # a Child is never a Scope
    children: Iterable[Child], timeout: float | None = None
) -> ExitStream: ...
@overload
def iter_exits(children: Iterable[Job], timeout: float | None = None) -> ScopeExitStream: ...
def iter_exits(
    children: Iterable[Job], timeout: float | None = None
) -> ExitStream | ScopeExitStream:
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

    A :class:`~pyclone3.Scope` among them is reported as ``(scope, None)``
    once it is empty: its ``cgroup.events`` is watched for ``POLLPRI`` in
    the same ``epoll`` set as the pidfds. Given one, the iterator is a
    :class:`~pyclone3.multi.ScopeExitStream` (typed for ``None``
    statuses), else an :class:`~pyclone3.multi.ExitStream`.

    Raises ``TypeError`` for anything but a ``PidFd``, a ``Popen`` with
    a pidfd or a ``Scope``, :class:`~pyclone3.PidfdUnavailableError` for a
    ``Popen`` without one, ``ValueError`` for a closed ``PidFd``, all
    before waiting.
    """
    given = children if isinstance(children, (list, tuple)) else list(children)
    if any(isinstance(c, Scope) for c in given):
        return ScopeExitStream(given, timeout)
    return ExitStream(given, timeout)


@overload
def wait_all(children: Iterable[Child], timeout: float | None = None) -> list[WaitStatus]: ...
@overload
def wait_all(children: Iterable[Job], timeout: float | None = None) -> list[WaitStatus | None]: ...
def wait_all(
    children: Iterable[Job], timeout: float | None = None
) -> list[WaitStatus] | list[WaitStatus | None]:
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

    A :class:`~pyclone3.Scope` among them is waited for until it is empty,
    as a child is, by sleeping in ``poll(2)`` for ``POLLPRI`` on its
    ``cgroup.events``; its status is ``None``. ``wait_all([child, scope])``
    waits for a child of yours and the scope it was born into in one
    sleep (the scope, given last, empties only once the child has exited)
    and reaps the child.
    """
    as_given, given = _unique(children)
    when = deadline(timeout)
    states = [_state_or_scope(c) for c in given]
    sweep = Sweep(states)
    statuses = sweep.statuses
    watched: dict[int, ScopeEvents] = {}  # scope index -> its cgroup.events
    emptied: set[int] = set()

    def timed_out() -> WaitAllTimeout:
        emptied.update(i for i, events in watched.items() if not events.populated)
        return _timeout(timeout, given, statuses, emptied)

    try:
        for i, state in enumerate(states):
            if state is None:
                events = _events_of(given[i])
                if events is None:
                    emptied.add(i)
                else:
                    watched[i] = events
                continue
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
            while i >= 0 and (statuses[i] is not None or i in emptied):
                i -= 1
            if i < 0:
                break
            state = states[i]
            if when is not None and time.monotonic() >= when:
                raise timed_out()
            if state is None:
                events = watched[i]
                if not events.populated:  # the read re-arms POLLPRI for the poll below
                    emptied.add(i)
                else:
                    poll_fd(events.fileno(), select.POLLPRI, when, cap_ms)
                    sweep()  # reap every child that has exited meanwhile
                continue
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
                raise timed_out() from None
            except ValueError:
                status = closed_status(given[i], state)
            statuses[i] = status
    finally:
        sweep.release_all()
        for events in watched.values():
            events.close()
    if len(given) == len(as_given):
        return statuses
    by_id = {id(c): s for c, s in zip(given, statuses)}
    return [by_id[id(c)] for c in as_given]


@overload
def wait_any(
    children: Iterable[Child], timeout: float | None = None
) -> tuple[Child, WaitStatus]: ...
@overload
def wait_any(
    children: Iterable[Job], timeout: float | None = None
) -> tuple[Job, WaitStatus | None]: ...
def wait_any(
    children: Iterable[Job], timeout: float | None = None
) -> tuple[Child, WaitStatus] | tuple[Job, WaitStatus | None]:
    """Wait for the first child to exit and return ``(child, status)``.

    If several are ready at once, the others are reaped too and their
    statuses kept (in each ``PidFd``, and as each ``Popen``'s
    ``returncode``): a later call reports them at once, as does
    :func:`iter_exits`. Each call sets up its watch over all the children
    anew: to take exits one at a time as they come, iterate
    :func:`iter_exits` instead. A :class:`~pyclone3.Scope` among them
    counts once it is empty, as ``(scope, None)``. Raises
    :class:`WaitAllTimeout` on timeout, ``ValueError`` for no children.
    """
    given = list(children)
    if not given:
        raise ValueError("wait_any() needs at least one child")
    with iter_exits(given, timeout) as exits:
        return next(exits)
