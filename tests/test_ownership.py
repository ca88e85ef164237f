"""Who reaps a child and closes its pidfd: races between waiters, exceptions mid-spawn.

Every test counts what is left over (fds, zombies, running children) and
fails on any of it. Each test first runs its work in a helper that hands
back plain data only (counts and strings), then kills and reaps whatever
children are left and closes whatever fds are left, and only then asserts:
so a failure here leaves nothing behind for the next test, and no object of
the test still owns an fd that the clean-up closed.

The storms of ``SIGALRM`` (:class:`Storm`) use a handler that raises
:class:`Interrupt` only while the test has *armed* it around one call into
the library, at most once per call, only in the process that armed it (not
in a forked child about to run ``preexec_fn``), and never in the test's own
loop: an exception landing there, after a constructor returned but before
its result is stored, would lose the child through no fault of the library.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import gc
import inspect
import os
import random
import signal
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import pytest
from conftest import (
    CLONE_PATHS,
    _path_unavailable,
    children,
    needs_threads,
    open_fds,
    requires_root,
    requires_userns,
    zombies,
)

import pyclone3

_WALL = 0x40000000  # __WALL: any child, whatever its exit signal

#: What a raising signal handler may interrupt. CPython 3.11+ runs Python
#: signal handlers only at calls and backward jumps, which is what lets the
#: spawn hand its child over with no window; 3.9 and 3.10 run them between
#: most bytecodes, and pyclone3 does not promise it there (docs/reliability.rst).
needs_311_signals = pytest.mark.skipif(
    sys.version_info < (3, 11),
    reason="no-loss under raising signal handlers is promised from CPython 3.11 on",
)


# ---- bookkeeping --------------------------------------------------------------------


def new_fds(before: set[int]) -> dict[int, str]:
    """The fds open now and not in *before*, each with what it is (after a GC)."""
    gc.collect()
    found = {}
    for fd in sorted(open_fds() - before):
        try:
            found[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # a transient, e.g. listdir's own
    return found


@dataclass
class Leftovers:
    """What a test left behind."""

    fds: dict[int, str]
    zombies: list[int]
    running: list[int]

    @classmethod
    def since(cls, before: set[int], known: set[int]) -> Leftovers:
        """Fds not in *before*; zombie children; running children not in *known*."""
        running = sorted(p for p, s in children().items() if s != "Z" and p not in known)
        return cls(new_fds(before), zombies(), running)

    def __bool__(self) -> bool:
        return bool(self.fds or self.zombies or self.running)

    def __str__(self) -> str:
        kinds: dict[str, int] = {}
        for what in self.fds.values():
            kind = what.split("[")[0] if "[" in what else what.rsplit("/", 1)[-1]
            kinds[kind] = kinds.get(kind, 0) + 1
        return (
            f"{len(self.fds)} fds {kinds}, {len(self.zombies)} zombies, "
            f"{len(self.running)} running children"
        )


def kill_and_reap(known: set[int]) -> None:
    """SIGKILL and reap every child not in *known* (by PID: an unreaped child's stays its own)."""
    for pid in children():
        if pid in known:
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, _WALL)


@dataclass
class Guard:
    before: set[int]  # the fds open before the test
    known: set[int]  # the children there before the test
    #: False once threads of the test hung inside the library: then its state
    #: is not to be trusted with the drain of the standard library's _active.
    drain: bool = True


@contextlib.contextmanager
def guarded() -> Iterator[Guard]:
    """On exit, every new child is killed and reaped, and every new fd closed.

    Keep no object that owns one of those fds alive past the block: it would
    close the fd again later.
    """
    guard = Guard(open_fds(), set(children()))
    try:
        yield guard
    finally:
        if guard.drain:
            # A Popen dropped with its child running waits in the standard
            # library's _active list, polled by the next Popen's constructor:
            # let it reap its (short-lived) child and close its pidfd itself.
            with pyclone3.Popen(["/bin/true"]) as p:
                p.wait()
            del p
        kill_and_reap(guard.known)
        for fd in new_fds(guard.before):
            with contextlib.suppress(OSError):
                os.close(fd)


def describe_exceptions(excs: list[BaseException]) -> tuple[dict[str, int], str]:
    """Counts by kind (``OSError(EBADF)``...), and the first one's traceback, as text."""
    kinds: dict[str, int] = {}
    for exc in excs:
        key = type(exc).__name__
        if isinstance(exc, OSError) and exc.errno is not None:
            key += f"({errno.errorcode.get(exc.errno, exc.errno)})"
        kinds[key] = kinds.get(key, 0) + 1
    if not excs:
        return kinds, ""
    first = excs[0]
    return kinds, "".join(traceback.format_exception(type(first), first, first.__traceback__))


# ---- 1. Popen.wait() racing wait_any / wait_all / iter_exits -----------------------------

RACE_ROUNDS = 1500
RACE_BUDGET_S = 8.0


def _by_wait_any(p: pyclone3.Popen) -> int:
    child, status = pyclone3.wait_any([p])
    assert child is p
    return status.returncode


def _by_wait_all(p: pyclone3.Popen) -> int:
    (status,) = pyclone3.wait_all([p])
    return status.returncode


def _by_iter_exits(p: pyclone3.Popen) -> int:
    ((child, status),) = list(pyclone3.iter_exits([p]))
    assert child is p
    return status.returncode


MULTI_WAITS: dict[str, Callable[[pyclone3.Popen], int]] = {
    "wait_any": _by_wait_any,
    "wait_all": _by_wait_all,
    "iter_exits": _by_iter_exits,
}


def _race_once(p: pyclone3.Popen, multi: Callable[[pyclone3.Popen], int]) -> dict[str, Any]:
    """``p.wait()`` and *multi(p)*, released together from two threads: what each gave."""
    barrier = threading.Barrier(2)
    results: dict[str, Any] = {}

    def run(name: str, call: Callable[[], Any]) -> None:
        try:
            barrier.wait(10)
            results[name] = call()
        except BaseException as exc:
            results[name] = repr(exc)

    threads = [
        threading.Thread(target=run, args=("wait", p.wait)),
        threading.Thread(target=run, args=("multi", functools.partial(multi, p))),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    if any(thread.is_alive() for thread in threads):
        results["hung"] = True
        with contextlib.suppress(Exception):
            p.kill()  # wakes a hung waiter: this round has failed anyway
        for thread in threads:
            thread.join(10)
    return results


def _races(multi: Callable[[pyclone3.Popen], int], before: set[int], known: set[int]) -> str:
    """Race until RACE_ROUNDS or RACE_BUDGET_S; a report of what went wrong ("" if nothing)."""
    popens: list[pyclone3.Popen] = []
    bad: list[tuple[int, dict[str, Any]]] = []
    try:
        deadline = time.monotonic() + RACE_BUDGET_S
        while len(popens) < RACE_ROUNDS and time.monotonic() < deadline:
            p = pyclone3.Popen(["/bin/true"])
            popens.append(p)
            results = _race_once(p, multi)
            if results != {"wait": 0, "multi": 0} or p.returncode != 0:
                bad.append((len(popens), {**results, "returncode": p.returncode}))
        left = Leftovers.since(before, known)
        if not bad and not left:
            return ""
        return (
            f"{len(popens)} races: {len(bad)} gave a wrong or no status "
            f"(first: {bad[:3]}); left behind: {left}"
        )
    finally:
        for p in popens:
            # On the buggy code this closes the fd of a PidFd already marked closed.
            p.pidfd.close()


@needs_threads
@pytest.mark.parametrize("multi", list(MULTI_WAITS))
def test_popen_wait_racing_a_multi_wait_leaks_nothing(multi: str) -> None:
    """``Popen.wait()`` in one thread and *multi* on the same child in another.

    Both must report the child's exit status (0), and no pidfd, eventfd,
    zombie or child may be left over. On the buggy code a race could leave
    the Popen's pidfd marked closed while its fd stayed open.
    """
    with guarded() as g:
        report = _races(MULTI_WAITS[multi], g.before, g.known)
    assert not report, f"Popen.wait() racing {multi}: {report}"


# ---- the signal storm ---------------------------------------------------------------


class Interrupt(Exception):
    """What the storm's SIGALRM handler raises, wherever in the library it lands."""


class Stuck(Exception):
    """Raised by the storm's handler once :attr:`Storm.watchdog` has passed: a call hung."""


class Storm:
    """A repeating ``SIGALRM``; its handler raises :class:`Interrupt` once per arming.

    :meth:`rearm` draws a new period between *low_s* and *high_s*, so the
    first signal after it lands at a random point of the call that follows.
    The handler raises only while :attr:`armed`, and disarms itself as it
    does (one exception per call, as from one ``KeyboardInterrupt``); only in
    the process that made the storm (not in a forked child about to run
    ``preexec_fn``); never in the frames of *safe* (the test's own loops);
    and, with *chance* below 1, for each signal only with that probability.

    ``Interrupt`` escaping a ``__del__`` or a finaliser is counted, not
    reported as an unraisable exception; any other unraisable goes on to
    pytest. ``ResourceWarning`` is recorded (as text), not raised, in the
    block: an ``error`` filter would make the standard library's ``"subprocess
    N is still running"`` in ``Popen.__del__`` lose a child of its own.
    """

    def __init__(
        self,
        *safe: Callable[..., Any],
        low_s: float = 50e-6,
        high_s: float = 500e-6,
        chance: float = 1.0,
    ) -> None:
        self.armed = False
        self.chance = chance
        #: A monotonic time; past it, the handler raises :class:`Stuck` once, armed or not.
        self.watchdog: float | None = None
        self.fired = 0
        self.raised = 0
        self.unraisable = 0
        self.low_s = low_s
        self.high_s = high_s
        self.messages: list[str] = []
        self._pid = os.getpid()
        self._safe = {f.__code__ for f in safe}

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.fired += 1
        if os.getpid() != self._pid or (frame is not None and frame.f_code in self._safe):
            return
        if self.watchdog is not None and time.monotonic() > self.watchdog:
            self.watchdog = None
            raise Stuck(f"still in this call {STUCK_S} s after the end")
        if not self.armed:
            return
        if self.chance < 1.0 and random.random() >= self.chance:
            return
        self.armed = False
        self.raised += 1
        raise Interrupt

    def _unraisable(self, unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, Interrupt):
            self.unraisable += 1
        else:
            self._old_hook(unraisable)

    def rearm(self) -> None:
        """Restart the timer with a new random period (call it disarmed)."""
        period = random.uniform(self.low_s, self.high_s)
        signal.setitimer(signal.ITIMER_REAL, period, period)

    def __enter__(self) -> Storm:
        self._catch = warnings.catch_warnings(record=True)
        self._log = self._catch.__enter__()
        warnings.simplefilter("always", ResourceWarning)
        self._old_hook = sys.unraisablehook
        sys.unraisablehook = self._unraisable
        self._old = signal.signal(signal.SIGALRM, self._handler)
        self.rearm()
        return self

    def __exit__(self, *exc: object) -> None:
        self.armed = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self._old)
        sys.unraisablehook = self._old_hook
        self._catch.__exit__(None, None, None)
        # As text: a warning's source (a Popen, a PidFd) must not be kept alive.
        self.messages = [str(w.message) for w in self._log]
        self._log.clear()

    def pidfd_warnings(self) -> list[str]:
        """ResourceWarnings about PidFds: dropped while open, closed only by the GC."""
        return [m for m in self.messages if "PidFd" in m]

    def still_running(self) -> int:
        """``Popen.__del__``'s warnings: a Popen dropped before its child was reaped."""
        return sum("still running" in m for m in self.messages)


STORM_ROUNDS = 3000
STORM_BUDGET_S = 9.0


def storm_loop(
    storm: Storm, make: Callable[[], Any], finish: Callable[[Any], None]
) -> dict[str, Any]:
    """Call *make* with the storm armed, up to STORM_ROUNDS times within STORM_BUDGET_S.

    What *make* returns is handed to *finish*, disarmed. Counts the outcomes;
    any exception but :class:`Interrupt` is described in ``"other"``. Give
    this function to :class:`Storm` as *safe*.
    """
    made = interrupted = rounds = 0
    other: list[BaseException] = []
    deadline = time.monotonic() + STORM_BUDGET_S
    while rounds < STORM_ROUNDS and time.monotonic() < deadline:
        rounds += 1
        result = None
        storm.rearm()
        storm.armed = True
        try:
            result = make()
        except Interrupt:
            storm.armed = False
            interrupted += 1
        except Exception as exc:
            storm.armed = False
            other.append(exc)
        finally:
            storm.armed = False
        if result is not None:
            made += 1
            finish(result)
    kinds, first = describe_exceptions(other)
    other.clear()  # their tracebacks hold library frames, and this one
    gc.collect()  # whatever they held is finalised now, inside the storm's warnings record
    return {"rounds": rounds, "made": made, "interrupted": interrupted, "other": (kinds, first)}


def settle() -> None:
    """Let every child left to the standard library's ``_active`` list be reaped.

    A Popen lost to an exception goes there from its ``__del__``, to be
    polled by the next Popen's constructor: give those children time to
    exit, then make two Popens.
    """
    gc.collect()
    for _ in range(2):
        time.sleep(0.1)
        with pyclone3.Popen(["/bin/true"]) as p:
            p.wait()
        gc.collect()


def finish_popen(p: pyclone3.Popen) -> None:
    p.wait()


def finish_spawned(child: pyclone3.SpawnedChild) -> None:
    assert child.pidfd is not None  # none of these tests uses the vfork path
    with child.pidfd:
        child.pidfd.wait()


def median_duration(make: Callable[[], Any], finish: Callable[[Any], None], n: int = 15) -> float:
    """How long *make* takes here, undisturbed (seconds, the median of *n* calls)."""
    durations = []
    for _ in range(n):
        start = time.perf_counter()
        result = make()
        durations.append(time.perf_counter() - start)
        finish(result)
    return sorted(durations)[n // 2]


def _storm_report(
    make: Callable[[], Any], finish: Callable[[Any], None], before: set[int], known: set[int]
) -> dict[str, Any]:
    high_s = max(500e-6, 1.5 * median_duration(make, finish))
    with Storm(storm_loop, high_s=high_s) as storm:
        counts = storm_loop(storm, make, finish)
    settle()
    left = Leftovers.since(before, known)
    kinds, first = counts["other"]
    summary = (
        f"{counts['rounds']} calls, each with a raising SIGALRM due 50-{high_s * 1e6:.0f} µs "
        f"in: {counts['made']} made, {counts['interrupted']} interrupted, "
        f"{sum(kinds.values())} other exceptions {kinds}; left behind: {left}; "
        f"{len(storm.pidfd_warnings())} unclosed-PidFd warnings, "
        f"{storm.still_running()} 'still running' warnings"
    )
    if first:
        summary += f"\nfirst other exception:\n{first}"
    return {
        "summary": summary,
        "raised": storm.raised,
        "other": kinds,
        "left": bool(left),
        "pidfd_warnings": storm.pidfd_warnings(),
    }


def run_storm(make: Callable[[], Any], finish: Callable[[Any], None], what: str) -> None:
    """The storm over *make*: only :class:`Interrupt` may escape, nothing may be left.

    The first signal of each call comes 50 µs to 1.5 times the call's usual
    duration (at least 500 µs) after it starts: a third of the calls or so
    finish first, the others are interrupted somewhere along the way.
    """
    with guarded() as g:
        report = _storm_report(make, finish, g.before, g.known)
    summary = f"{what}: {report['summary']}"
    assert report["raised"] > 0, f"the storm never hit the library: {summary}"
    assert not report["other"], summary
    assert not report["left"], summary
    assert not report["pidfd_warnings"], summary


# ---- 2. an exception landing during Popen() or spawn() --------------------------------

SPAWN_PATH_PARAMS = [None, "clone3", "clone", "vfork_pidfd"]


@needs_311_signals
@pytest.mark.parametrize("path", SPAWN_PATH_PARAMS, ids=lambda p: p or "default")
@pytest.mark.parametrize("api", ["Popen", "spawn"])
def test_interrupted_spawn_loses_no_child_and_no_fd(api: str, path: str | None) -> None:
    """An exception escaping ``Popen()``/``spawn()`` leaves no fd, zombie or live child.

    On the buggy code one that lands just after the clone returns leaks the
    pidfd and loses the child: a zombie nobody can reap.
    """
    if path is not None:
        reason = _path_unavailable(path)
        if reason:
            pytest.skip(reason)
    argv = ["/bin/true"]
    if api == "Popen":
        make: Callable[[], Any] = functools.partial(pyclone3.Popen, argv, spawn_path=path)
        finish: Callable[[Any], None] = finish_popen
    else:
        # A Python function, not functools.partial: a call made from C lets a
        # signal handler run as it returns, dropping the result before the
        # storm loop holds it, a window of the caller's that no library can
        # close. Python-to-Python returns (3.11+) run no handler.
        def make() -> Any:
            return pyclone3.spawn(argv, spawn_path=path)

        finish = finish_spawned
    run_storm(make, finish, f"{api}(spawn_path={path!r})")


# ---- 3. the preexec_fn and ID-map paths: no double close -------------------------------


def _noop() -> None:
    pass


@pytest.mark.slow  # a signal storm over many spawns
@needs_311_signals
def test_interrupted_preexec_fn_spawn_raises_only_the_interrupt() -> None:
    """Only the handler's exception escapes (a pipe closed twice raised EBADF instead),
    and nothing is left behind."""
    run_storm(
        functools.partial(pyclone3.Popen, ["/bin/true"], preexec_fn=_noop),
        finish_popen,
        "Popen(preexec_fn=...)",
    )


@pytest.mark.slow  # a signal storm over many spawns
@needs_311_signals
@requires_root
@requires_userns
@pytest.mark.skipif(not CLONE_PATHS, reason="neither clone3 nor clone(CLONE_PIDFD) here")
def test_interrupted_id_map_spawn_raises_only_the_interrupt() -> None:
    """The same for a child in a new user namespace that waits for its ID maps."""
    run_storm(
        functools.partial(
            pyclone3.Popen,
            ["/bin/true"],
            clone_flags=pyclone3.CloneFlag.CLONE_NEWUSER,
            uid_map=[(0, os.getuid(), 1)],
            gid_map=[(0, os.getgid(), 1)],
        ),
        finish_popen,
        "Popen(CLONE_NEWUSER, uid_map=..., gid_map=...)",
    )


# ---- 4. returncode set from outside (asyncio's child watcher) ---------------------------


@pytest.mark.parametrize("program", [["/bin/true"], ["/bin/sh", "-c", "exit 3"]])
def test_returncode_set_from_outside_closes_the_pidfd(program: list[str]) -> None:
    """Setting ``returncode``, as asyncio's child watcher does, closes the pidfd at once.

    The watcher (for a program that set ``subprocess.Popen = pyclone3.Popen``)
    reaps with ``os.waitpid`` and then assigns ``returncode``: the Popen will
    never reap through its pidfd again and must let go of it then, not at
    garbage collection (with a ResourceWarning), nor never.
    """
    with guarded() as g:
        p = pyclone3.Popen(program)
        held = [p.pidfd]  # closed in the finally if the test fails, not left to the GC
        try:
            _, wstatus = os.waitpid(p.pid, 0)
            code = os.waitstatus_to_exitcode(wstatus)
            with_pidfd = len(open_fds())
            p.returncode = code
            after = len(open_fds())
            assert held[0].closed, f"the pidfd stayed open after returncode was set: {held[0]}"
            assert p.pidfd is held[0]
            assert after == with_pidfd - 1, f"{with_pidfd} fds open before, {after} after"
            assert (p.returncode, p.poll(), p.wait()) == (code, code, code)
            held.clear()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                del p
                gc.collect()
            assert [str(w.message) for w in caught] == []
            left = Leftovers.since(g.before, g.known)
            assert not left, f"left behind: {left}"
        finally:
            for pidfd in held:
                pidfd.close()


# ---- 5. an exception landing during a reap ------------------------------------------------


class _Landed(Exception):
    """Stands for a signal handler's exception."""


@contextlib.contextmanager
def _raise_after_the_reap() -> Iterator[list[int]]:
    """Raise :class:`_Landed` once, in ``waitid_with`` just after ``waitid`` returned.

    There the kernel has reaped the child and the status is not yet made: a
    signal handler's exception can land at any such line. A trace hook makes
    it land there every time. Yields a list that holds one item once it did.
    """
    from pyclone3 import syscalls

    code = syscalls.waitid_with.__code__
    lines, first = inspect.getsourcelines(code)
    target = first + next(i for i, text in enumerate(lines) if "if buf.pid == 0" in text)
    landed: list[int] = []

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line" and frame.f_lineno == target and not landed:
            landed.append(target)
            raise _Landed
        return local

    def hook(frame: FrameType, event: str, arg: Any) -> Any:
        return local if frame.f_code is code else None

    sys.settrace(hook)
    try:
        yield landed
    finally:
        sys.settrace(None)


def _exited(pidfd: pyclone3.PidFd) -> None:
    import select

    poller = select.poll()
    poller.register(pidfd.fileno(), select.POLLIN)
    assert poller.poll(10_000), "the child did not exit"


@pytest.mark.parametrize("how", ["wait", "try_wait"])
def test_an_exception_after_the_reap_still_records_the_exit(how: str) -> None:
    """The exit is recorded, with its rusage, and the owner's exit callback runs.

    Before, the status was lost: the next wait found the child gone
    (``ECHILD``), called it foreign, and at best (Linux 6.15+) read its exit
    code back without rusage; older kernels raised ``ChildProcessError``.
    """
    from pyclone3.pidfd import state_of

    fds = open_fds()
    child = pyclone3.spawn(["/bin/sh", "-c", "exit 7"])
    assert child.pidfd is not None
    with child.pidfd as pidfd:
        seen: list[pyclone3.WaitStatus] = []
        state_of(pidfd).on_exit(seen.append)
        _exited(pidfd)
        with _raise_after_the_reap() as landed, pytest.raises(_Landed):
            if how == "wait":
                pidfd.wait()
            else:
                pidfd.try_wait()
        assert landed, "the exception did not land after the reap"
        status = pidfd.wait()
        assert status.exit_code == 7
        assert status.rusage is not None, "the status was not the reap's"
        assert not state_of(pidfd).foreign
        assert seen == [status]
        assert pidfd.try_wait() is status
    assert child.pid not in zombies()
    assert open_fds() == fds


def test_an_exception_after_a_popen_reap_keeps_its_returncode() -> None:
    """``Popen.wait()`` cut short after the reap: the returncode is set as the exception passes.

    (Before, it stayed ``None`` until a later wait found the child gone.)
    """
    fds = open_fds()
    with pyclone3.Popen(["/bin/sh", "-c", "exit 5"]) as proc:
        assert proc.pidfd is not None
        _exited(proc.pidfd)
        with _raise_after_the_reap() as landed, pytest.raises(_Landed):
            proc.wait()
        assert landed
        assert proc.returncode == 5
        assert proc.wait() == 5
    assert proc.pid not in zombies()
    assert open_fds() == fds


# ---- 6. the stress test -----------------------------------------------------------------

STRESS_THREADS = 16
#: How long past its end the stress test waits for a thread before calling it hung.
STUCK_S = 30.0
#: The chance that a signal landing in a main-thread call raises: the threads
#: hold the GIL most of the time, so each call takes many signals.
STRESS_RAISE_CHANCE = 0.2
MAX_LIVE = 48


@dataclass(eq=False)
class Kid:
    popen: pyclone3.Popen
    expected: int  # its exit code, unless killed
    piped: bool = False  # stdout=PIPE: stays in the pool until communicate() reads it
    killed: bool = False


@dataclass
class Stress:
    """The pool of live children shared by the threads, and what went wrong with them."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    pool: list[Kid] = field(default_factory=list)
    unfinished: set[Kid] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    ops: dict[str, int] = field(default_factory=dict)

    def error(self, text: str) -> None:
        with self.lock:
            if len(self.errors) < 200:
                self.errors.append(text)

    def count(self, op: str) -> None:
        with self.lock:
            self.ops[op] = self.ops.get(op, 0) + 1

    def check(self, kid: Kid, code: int | None, where: str) -> None:
        if code is None:
            self.error(f"{where}: no returncode for {kid.popen.args}")
        elif code != kid.expected and not (kid.killed and code == -signal.SIGKILL):
            or_killed = " or -9" if kid.killed else ""
            self.error(f"{where}: {kid.popen.args} gave {code}, not {kid.expected}{or_killed}")

    def add(self, kid: Kid) -> None:
        with self.lock:
            self.pool.append(kid)
            self.unfinished.add(kid)

    def done(self, kid: Kid, where: str) -> None:
        """*kid* was seen to exit: check its returncode and, unless piped, drop it."""
        self.check(kid, kid.popen.returncode, where)
        if kid.piped:
            return
        with self.lock:
            if kid in self.pool:
                self.pool.remove(kid)
            self.unfinished.discard(kid)

    def pick(self, piped: bool | None = None, take: bool = False) -> Kid | None:
        with self.lock:
            candidates = [k for k in self.pool if piped is None or k.piped == piped]
            if not candidates:
                return None
            kid = random.choice(candidates)
            if take:
                self.pool.remove(kid)
            return kid

    def sample(self, n: int) -> list[Kid]:
        with self.lock:
            return random.sample(self.pool, min(n, len(self.pool)))


def new_kid() -> Kid:
    kind = random.randrange(4)
    if kind == 0:
        return Kid(pyclone3.Popen(["/bin/sleep", f"0.0{random.randrange(6)}"]), 0)
    if kind == 1:
        return Kid(pyclone3.Popen(["/bin/true"]), 0)
    code = random.randrange(126)
    if kind == 2:
        return Kid(pyclone3.Popen(["/bin/sh", "-c", f"exit {code}"]), code)
    p = pyclone3.Popen(["/bin/sh", "-c", f"echo out; exit {code}"], stdout=subprocess.PIPE)
    return Kid(p, code, piped=True)


STRESS_OPS = ["spawn", "wait", "wait_timeout", "communicate", "kill", "wait_any", "poll"]
STRESS_WEIGHTS = [25, 10, 15, 10, 10, 15, 15]


def stress_op(stress: Stress) -> None:
    """One random operation on the shared pool, from a worker thread."""
    op = random.choices(STRESS_OPS, STRESS_WEIGHTS)[0]
    if op == "spawn" and len(stress.pool) >= MAX_LIVE:
        op = "wait"
    stress.count(op)
    if op == "spawn":
        stress.add(new_kid())
    elif op == "communicate":
        kid = stress.pick(piped=True, take=True)  # taken: one communicate() per child
        if kid is not None:
            out, _ = kid.popen.communicate()
            if out != b"out\n" and not kid.killed:
                stress.error(f"communicate: {kid.popen.args} wrote {out!r}")
            kid.piped = False
            stress.done(kid, "communicate")
    elif op == "wait_any":
        kids = stress.sample(8)
        if kids:
            by_popen = {id(k.popen): k for k in kids}
            try:
                child, status = pyclone3.wait_any([k.popen for k in kids], timeout=0.01)
            except pyclone3.WaitAllTimeout:
                return
            kid = by_popen[id(child)]
            stress.check(kid, status.returncode, "wait_any's status")
            stress.done(kid, "wait_any")
    else:
        kid = stress.pick()
        if kid is None:
            return
        p = kid.popen
        if op == "wait":
            stress.check(kid, p.wait(), "wait")
            stress.done(kid, "wait")
        elif op == "wait_timeout":
            try:
                code = p.wait(timeout=random.uniform(0, 0.005))
            except subprocess.TimeoutExpired:
                return
            stress.check(kid, code, "wait(timeout)")
            stress.done(kid, "wait(timeout)")
        elif op == "kill":
            kid.killed = True
            p.kill()
        else:
            code = p.poll()
            if code is not None:
                stress.check(kid, code, "poll")
                stress.done(kid, "poll")


def stress_worker(stress: Stress) -> None:
    while not stress.stop.is_set():
        try:
            stress_op(stress)
        except Exception:
            stress.error("worker: " + traceback.format_exc(limit=8))


def stress_main(stress: Stress, storm: Storm, deadline: float) -> dict[str, int]:
    """The main thread's share: spawn and wait, the storm armed around each call.

    Its children join the shared pool. Give this function to :class:`Storm`
    as *safe*.
    """
    counts = {"spawned": 0, "interrupted": 0}
    i = 0
    while time.monotonic() < deadline:
        i += 1
        p = failure = None
        storm.rearm()
        storm.armed = True
        try:
            p = pyclone3.Popen(["/bin/sh", "-c", f"exit {i % 100}"])
        except Interrupt:
            storm.armed = False
            counts["interrupted"] += 1
        except Exception:
            storm.armed = False
            failure = "main thread, Popen(): " + traceback.format_exc(limit=8)
        finally:
            storm.armed = False
        if failure is not None:
            stress.error(failure)
        if p is None:
            continue
        counts["spawned"] += 1
        kid = Kid(p, i % 100)
        stress.add(kid)
        how = i % 4
        code = None
        storm.rearm()
        storm.armed = True
        try:
            if how == 0:
                code = p.wait()
            elif how == 1:
                code = p.wait(timeout=0.002)
            elif how == 2:
                code = p.poll()
            else:
                pyclone3.wait_any([p], timeout=0.002)
        except Interrupt:
            storm.armed = False
            counts["interrupted"] += 1
        except (subprocess.TimeoutExpired, pyclone3.WaitAllTimeout):
            storm.armed = False
        except Exception:
            storm.armed = False
            failure = "main thread, wait: " + traceback.format_exc(limit=8)
        finally:
            storm.armed = False
        if failure is not None:
            stress.error(failure)
        if code is not None:
            stress.check(kid, code, "main thread")
        # Otherwise left to the workers (or the end), in whatever state the interrupt left it.
    return counts


def finish_all(stress: Stress) -> None:
    """The end: wait for every child not yet seen to exit, check it, and let go of them all."""
    for kid in list(stress.unfinished):
        p = kid.popen
        try:
            if kid.piped:
                p.communicate(timeout=10)
            else:
                p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            stress.error(f"end: {p.args} still running after 10 s")
            continue
        except Exception:
            stress.error("end: " + traceback.format_exc(limit=8))
            continue
        stress.check(kid, p.returncode, "end")
    stress.pool.clear()
    stress.unfinished.clear()


def stacks(threads: list[threading.Thread]) -> str:
    """Where each of *threads* is now, for a report."""
    frames = sys._current_frames()
    found = []
    for thread in threads:
        frame = frames.get(thread.ident or -1)
        if frame is not None:
            found.append(f"{thread.name}:\n" + "".join(traceback.format_stack(frame, limit=8)))
    return "\n".join(found)


def _stress(seconds: float, guard: Guard) -> dict[str, Any]:
    stress = Stress()
    workers = [
        threading.Thread(target=stress_worker, args=(stress,), daemon=True)
        for _ in range(STRESS_THREADS)
    ]
    main_counts: dict[str, int] = {}
    try:
        with Storm(stress_main, chance=STRESS_RAISE_CHANCE) as storm:
            storm.watchdog = time.monotonic() + seconds + STUCK_S
            for worker in workers:
                worker.start()
            try:
                main_counts = stress_main(stress, storm, time.monotonic() + seconds)
            finally:
                storm.watchdog = None
                stress.stop.set()
                deadline = time.monotonic() + STUCK_S
                for worker in workers:
                    worker.join(max(deadline - time.monotonic(), 0.0))
                gc.collect()  # finalised inside the storm's warnings record
        hung = [worker for worker in workers if worker.is_alive()]
        where = stacks(hung[:2])
        if not hung:
            # The end, in a thread too: a wait that never returns is reported, not waited for.
            finisher = threading.Thread(target=finish_all, args=(stress,), daemon=True)
            finisher.start()
            finisher.join(STUCK_S)
            if finisher.is_alive():
                hung = [finisher]
                where = stacks(hung)
        if hung:
            guard.drain = False
        else:
            settle()  # the Popens lost to an interrupted constructor, in _active
        left = Leftovers.since(guard.before, guard.known)
        return {
            "summary": (
                f"{seconds} s, worker ops {stress.ops}, main thread {main_counts}, "
                f"{storm.fired} signals, {storm.raised} raised, {len(hung)} hung threads, "
                f"{len(stress.errors)} errors; left behind: {left}; "
                f"{len(storm.pidfd_warnings())} unclosed-PidFd warnings, "
                f"{storm.still_running()} 'still running' warnings"
            ),
            "hung": where if hung else "",
            "errors": list(stress.errors),
            "left": bool(left),
            "pidfd_warnings": storm.pidfd_warnings(),
        }
    finally:
        stress.stop.set()
        # With hung threads the guard kills and reaps the children by PID and
        # closes their fds: their Popens must never be polled again, so they stay
        # in the pool, referenced by the hung threads for good.
        if guard.drain:
            stress.pool.clear()
            stress.unfinished.clear()


@needs_311_signals
@pytest.mark.slow
@needs_threads
def test_stress_threads_and_signal_storm() -> None:
    """16 threads spawn, wait, communicate, kill and wait_any each other's children while
    the main thread spawns and waits under a storm of raising signal handlers.

    ``PYCLONE3_STRESS_SECONDS`` (default 60) sets the duration. At the end no
    fd, zombie or child may be left, and every returncode seen must be the
    child's exit code (or -9 for a child that was killed).
    """
    seconds = float(os.environ.get("PYCLONE3_STRESS_SECONDS", "60"))
    with guarded() as g:
        report = _stress(seconds, g)
    summary = report["summary"]
    errors = "\n".join(report["errors"][:10])
    assert not report["hung"], f"{summary}\nhung in:\n{report['hung']}"
    assert not report["errors"], f"{summary}\nfirst errors:\n{errors}"
    assert not report["left"], summary
    assert not report["pidfd_warnings"], summary
