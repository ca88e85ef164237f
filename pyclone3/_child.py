"""The one owner of a process's life as pyclone3 sees it: :class:`ChildState`.

A process behind a pidfd is *running* until someone observes its end, then
*ended* with a :class:`~pyclone3.WaitStatus`, for ever. Whoever observes it
first (a blocking wait, a timed wait, ``poll()``, a ``wait_all`` sweep, the
asyncio reader, a foreign reaper seen through ``PIDFD_INFO_EXIT``, or a
``Popen.returncode`` set from outside) hands the status to
:meth:`ChildState.settle`, the one code path that moves the state. It keeps
the first status, closes the pidfd if the owner asked for that
(:attr:`ChildState.close_on_exit`, a ``Popen`` does), and runs the owner's
exit callback once. Everyone else reads :attr:`ChildState.status`.

::

    running ──settle(status)──▶ ended(status)       (first status wins)
    fd: open ──close()──▶ closing ──last user leaves──▶ closed
    ended + close_on_exit ⇒ close()

The state is its pidfd's ``FdRef`` (``_fdref.py``), which shares the fd
between threads: one object and one lock per process.
"""

from __future__ import annotations

import errno
import math
import select
import threading
import time

from . import syscalls
from ._clone3 import lib
from ._fdref import FdRef
from ._features import features
from ._waiting import WaitTimeout, poll_fd
from .flags import IdType, PidfdInfoFlag, WaitFlag
from .status import WaitStatus

# typing is not imported at run time (see pyclone3/__init__.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

__all__ = ["ChildState", "sweeps"]

_P_PIDFD = int(IdType.P_PIDFD)
# __WALL: a child spawned with an exit signal other than SIGCHLD (or none) is
# a "clone" child, which waitid only reports with __WCLONE or __WALL.
WEXITED = int(WaitFlag.WEXITED | WaitFlag["__WALL"])
WEXITED_WNOHANG = int(WaitFlag.WEXITED | WaitFlag.WNOHANG | WaitFlag["__WALL"])
#: While a non-child's zombie waits for its own parent to reap it, re-check
#: at least this often in case the kernel does not wake pollers on reap.
_REAP_RECHECK_MS = 100
#: Longest pause after a spurious wake-up (readable pidfd, nothing to reap).
_SPURIOUS_MAX_S = 0.05

if TYPE_CHECKING:
    OnExit = Callable[[WaitStatus], None]


class _Sweeps:
    """The sweeps (``wait_all``, ``iter_exits``) reaping now, by number.

    A sweep reaps in C, outside the states' locks, and settles the statuses
    afterwards. A thread whose ``waitid`` gets ``ECHILD`` while one runs may
    have lost the child to it, so it waits for the sweeps that were running
    *then* to finish (later ones cannot have reaped it) before taking the
    process for a non-child: many threads sweeping all the time cannot
    starve it. A sweep adds its number to :attr:`running` under
    :attr:`lock` having recorded it first, so that an exception raised by a
    signal handler cannot leave it there (see ``Sweep.__call__``).
    """

    __slots__ = ("last", "lock", "running")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.last = 0
        self.running: set[int] = set()


sweeps = _Sweeps()


def _exit_info_supported() -> bool:
    return features().pidfd_info_exit


class ChildState(FdRef):
    """What is known of one process: its pidfd, whether and how it ended.

    *pid* is for messages and the ``kill(2)`` fallbacks; the pidfd *fd* is
    owned from now on (closed by :meth:`close`, or by :meth:`settle` when
    :attr:`close_on_exit` is set). The fd's own fields and methods are
    :class:`FdRef`'s, under the state's lock.
    """

    __slots__ = (
        "_foreign",
        "_on_exit",
        "abandon_on_drop",
        "close_on_exit",
        "pid",
        "returncode_sink",
        "status",
    )

    def __init__(self, fd: int, pid: int) -> None:
        # FdRef's fields, set here rather than through a call of its own:
        # this runs on every spawn, right after the clone, when the CPU's
        # caches are cold and each call costs the most.
        self.lock = threading.Lock()
        self.number = fd
        self.users: set[object] = set()
        self.closed = fd < 0
        self._wake: Any = None
        self.pid = pid
        #: The recorded exit, ``None`` until one was observed. Read it freely;
        #: only :meth:`settle` and the reap paths here write it.
        self.status: WaitStatus | None = None
        self._foreign = False  # not ours to reap: waitid said ECHILD
        #: Close the pidfd as soon as the exit is recorded (an owner done with it then).
        self.close_on_exit = False
        #: A spawned child not yet handed to the caller of Popen()/spawn(): if
        #: its PidFd is dropped, the child is killed and reaped, never lost.
        self.abandon_on_drop = False
        self._on_exit: OnExit | None = None
        #: A mapping (an owner's ``__dict__``) whose ``"returncode"``-like key
        #: :meth:`settle` fills, in the same lock round, before the pidfd is
        #: closed: ``(mapping, key)`` or ``None``.
        self.returncode_sink: tuple[dict[str, object], str] | None = None

    @property
    def fd(self) -> FdRef:
        """The pidfd's :class:`FdRef`: the state itself."""
        return self

    # ---- what is known ---------------------------------------------------------

    @property
    def foreign(self) -> bool:
        """Whether the process turned out not to be ours to reap."""
        return self._foreign

    def on_exit(self, callback: OnExit | None) -> None:
        """Call *callback(status)* once, when the exit is recorded (now, if it is already)."""
        with self.lock:
            status = self.status
            if status is None:
                self._on_exit = callback
                return
        if callback is not None:
            callback(status)

    # ---- the one transition ------------------------------------------------------

    def _settle_locked(self, status: WaitStatus) -> tuple[WaitStatus, OnExit | None]:
        callback = None
        if self.status is None:
            # The sink first: status is read without the lock, and whoever
            # sees it set must find the returncode written too.
            sink = self.returncode_sink
            if sink is not None:
                # WaitStatus.returncode has a C getter: with no Python call from
                # here to the status's store, no signal handler can run in
                # between, and the sink is written whenever the status is.
                sink[0][sink[1]] = status.returncode
                self.returncode_sink = None  # written once, then let go of (no cycle left)
            self.status = status
            callback, self._on_exit = self._on_exit, None
        if self.close_on_exit:
            self.close_locked()
        return self.status, callback

    def settle(self, status: WaitStatus) -> WaitStatus:
        """Record the process's end, whoever saw it; return the status kept (the first).

        The pidfd is closed with it when :attr:`close_on_exit` is set, and
        the exit callback runs once, after the lock is let go of.
        """
        with self.lock:
            status, callback = self._settle_locked(status)
        if callback is not None:
            callback(status)
        return status

    def settle_held(self, status: WaitStatus, token: object) -> WaitStatus:
        """:meth:`settle` for a reap made with the fd held by *token*: lets go of it too."""
        self.users.discard(token)
        with self.lock:
            self.release_locked(token)
            status, callback = self._settle_locked(status)
        if callback is not None:
            callback(status)
        return status

    # ---- holding the fd over a long use (a sweep, an event loop's reader) -----

    def hold(self, token: object) -> int:
        """Hold the pidfd open for the use *token* (a close waits for :meth:`release`).

        Returns the fd, or -1 (nothing held) if it is closed. Release with
        :meth:`release` in a ``finally`` whatever this returned or raised.
        """
        with self.lock:
            if self.closed:
                return -1
            return self.hold_locked(token)

    def wake_fd(self) -> int:
        """An fd that turns readable when the pidfd is closed; ``ValueError`` if it is."""
        with self.lock:
            return self.wake_fd_locked()

    def abandon(self) -> None:
        """Kill and reap a child that will never reach its caller, and close the pidfd.

        For a spawn interrupted (a signal handler raised) after the child
        was created: SIGKILL and the reap are one call into C, so no second
        interruption can come between them.
        """
        with self.lock:
            if self.status is None and not self.closed:
                wstatus = lib.pyclone3_kill_and_reap(self.number, self.pid, 1)
                if wstatus >= 0:
                    self._settle_locked(WaitStatus.from_wait_status(self.pid, wstatus))
            self.abandon_on_drop = False
            self.close_locked()

    def kill_on_drop(self) -> None:
        """The finaliser's part of :meth:`abandon`: no lock (nobody else holds the object)."""
        fd = self.number
        if fd >= 0 and self.status is None:
            lib.pyclone3_kill_and_reap(fd, self.pid, 1)
        self.abandon_on_drop = False
        self.finalize()

    # ---- reaping -------------------------------------------------------------------

    def try_reap(self) -> WaitStatus | None:
        """One look, never blocking: the status if the process has ended, else ``None``.

        A child of ours is reaped (``waitid(P_PIDFD, WEXITED|WNOHANG|__WALL)``);
        for another process the status comes from ``PIDFD_INFO_EXIT``
        (Linux 6.15+) once its parent reaped it. ``ValueError`` if the pidfd
        is closed and nothing was recorded; ``OSError`` ``ENOSYS``/``EINVAL``
        where ``waitid(P_PIDFD)`` is missing.
        """
        callback = None
        try:
            with self.lock:
                status = self.status
                if status is not None:
                    return status
                fd = self.fileno_locked()
                if not self._foreign:
                    buf = syscalls.new_wait_buffer()
                    try:
                        status = syscalls.waitid_with(_P_PIDFD, fd, WEXITED_WNOHANG, buf)
                    except ChildProcessError:
                        pass  # decided by _echild, outside the lock
                    except BaseException:
                        # A signal handler's exception may land after the
                        # reap: the exit is recorded all the same.
                        status = syscalls.reaped_status(buf)
                        if status is not None:
                            status, callback = self._settle_locked(status)
                        raise
                    else:
                        if status is None:
                            return None
                        status, callback = self._settle_locked(status)
                        return status
        finally:
            if callback is not None:  # outside the lock, even as an exception passes
                callback(status)  # type: ignore[arg-type]  # set with the callback
        if not self._foreign:
            status = self._echild()
            if status is not None:
                return status
        return self._foreign_status()

    def _echild(self) -> WaitStatus | None:
        """waitid said ECHILD: another thread of ours reaped it, or it is not ours.

        A thread in a blocking waitid, or a sweep, may have reaped the child
        and not yet recorded the status: wait for it (microseconds) before
        concluding that the process is foreign.
        """
        with sweeps.lock:
            suspects = set(sweeps.running)
        while True:
            with self.lock:
                if self.status is not None:
                    return self.status
                if not self._reaping_locked() and suspects.isdisjoint(sweeps.running):
                    self._foreign = True
                    return None
            time.sleep(0.0001)

    def _reaping_locked(self) -> bool:
        """Whether a thread is inside a blocking ``waitid`` (:meth:`reap_blocking`).

        Such a thread holds the fd with its wait buffer
        (:func:`~pyclone3.syscalls.new_wait_buffer`) as its token; no other
        use of the fd holds one.
        """
        return any(syscalls.is_wait_buffer(token) for token in tuple(self.users))

    def _foreign_status(self) -> WaitStatus | None:
        """Status of a process we cannot reap: PIDFD_INFO_EXIT, or an error."""
        with self.lock:
            if self.status is not None:
                return self.status
            fd = self.fileno_locked()
            if _exit_info_supported():
                try:
                    info = syscalls.pidfd_get_info(fd, PidfdInfoFlag.PIDFD_INFO_EXIT)
                except ProcessLookupError:
                    return None
                if info.exit_code is None:
                    return None  # still running, or a zombie its parent has not reaped
                found = WaitStatus.from_wait_status(self.pid, info.exit_code)
                status, callback = self._settle_locked(found)
            else:
                if poll_fd(fd, select.POLLIN, 0.0) == 0:
                    return None
                raise ChildProcessError(
                    errno.ECHILD,
                    f"process {self.pid} has exited, but it is not a child of this process "
                    "(or was reaped elsewhere) and this kernel cannot report its status "
                    "(PIDFD_INFO_EXIT needs Linux 6.15)",
                )
        if callback is not None:
            callback(status)
        return status

    def wait(self, timeout: float | None, when: float | None) -> WaitStatus:
        """Wait until the process ends (or the deadline *when*); see :meth:`PidFd.wait`.

        Without a deadline, a child of ours costs one blocking ``waitid``.
        Otherwise the wait sleeps in ``poll`` on the pidfd and on a wake fd
        that a ``close()`` from another thread makes readable: the wait then
        returns the status if one was recorded meanwhile (a sweep reaped
        the child and its owner closed the pidfd), else raises ``ValueError``.
        """
        status = self.status
        if status is not None:
            return status
        if when is None and not self._foreign:
            status = self.reap_blocking()
            if status is not None:
                return status
        return self._poll_wait(timeout, when)

    def reap_blocking(self) -> WaitStatus | None:
        """One blocking ``waitid(P_PIDFD, WEXITED|__WALL)``: the whole wait for a child.

        It returns when the child is reapable, and at once with ``ECHILD``
        for a process that is not (or no longer) ours to reap, which then
        takes the polling path. Signals run their handlers and the call is
        retried (PEP 475). ``None`` also for a ``PIDFD_NONBLOCK`` pidfd.
        """
        # The buffer, allocated before sleeping, not after waking; it is also
        # this wait's token as a user of the fd, which tells _echild that a
        # reap is under way.
        buf = syscalls.new_wait_buffer()
        status = None
        echild = False
        callback = None
        try:
            try:
                with self.lock:
                    if self.status is not None:
                        return self.status
                    if self.closed:
                        raise ValueError("I/O operation on closed PidFd")
                    self.users.add(buf)
                    fd = self.number
                try:
                    status = syscalls.waitid_with(_P_PIDFD, fd, WEXITED, buf)
                except ChildProcessError:
                    echild = True
            finally:
                try:
                    if status is None:  # reaped, then cut short by an exception?
                        status = syscalls.reaped_status(buf)
                    if status is not None:
                        # Recorded before the token goes: a thread that gets
                        # ECHILD meanwhile finds the token or the status, never
                        # neither (which would make it call the child foreign).
                        with self.lock:
                            status, callback = self._settle_locked(status)
                finally:
                    self.users.discard(buf)  # a single call into C: nothing can stop it
                    if self.closed:
                        with self.lock:
                            if self.number >= 0:
                                self.close_locked()  # the last user out closes it
        finally:
            if callback is not None:  # outside the lock, even as an exception passes
                callback(status)  # type: ignore[arg-type]  # set with the callback
        if echild:
            return self._echild()
        return status

    def _poll_wait(self, timeout: float | None, when: float | None) -> WaitStatus:
        token = object()
        try:
            with self.lock:
                if self.status is not None:
                    return self.status
                # An owner that closes the pidfd once the exit is recorded (a
                # Popen) closes it only after an exit, which makes the pidfd
                # itself readable: no wake fd to make, nor two syscalls.
                wake = -1 if self.close_on_exit else self.wake_fd_locked()
                fd = self.hold_locked(token)
            return self._poll_loop(fd, wake, timeout, when)
        finally:
            self.users.discard(token)  # first, and one call into C: see FdRef
            self.release(token)

    def _poll_loop(
        self, fd: int, wake: int, timeout: float | None, when: float | None
    ) -> WaitStatus:
        if not self._foreign:
            # One WNOHANG reap first, as subprocess does: an exited child
            # costs one syscall, a running one a single extra.
            status = self._try_reap_held()
            if status is not None:
                return status
        spurious = 0
        while when is None or when > time.monotonic():
            if self._foreign and _exit_info_supported() and poll_fd(fd, select.POLLIN, 0.0):
                # An exited non-child's status appears when its parent reaps
                # it, which the kernel reports as POLLHUP (polled for with no
                # events); re-check now and then in case a kernel does not
                # wake pollers on reap.
                ready = poll_fd(fd, 0, when, _REAP_RECHECK_MS, wake)
                spurious = 0
            else:
                ready = poll_fd(fd, select.POLLIN, when, wake=wake)
            if ready < 0:  # closed under us: by an owner that recorded the exit?
                status = self.status
                if status is not None:
                    return status
                raise ValueError("the PidFd was closed while waiting")
            status = self._try_reap_held()
            if status is not None:
                return status
            now = time.monotonic()
            if when is not None and now >= when:
                break
            if ready and not self._foreign:
                spurious += 1
                pause = min(0.001 * 2**spurious, _SPURIOUS_MAX_S)
                if when is not None:
                    pause = min(pause, when - now)
                time.sleep(pause)
        else:
            status = self._try_reap_held()
            if status is not None:
                return status
        raise WaitTimeout(self.pid, timeout if timeout is not None else math.inf)

    def _try_reap_held(self) -> WaitStatus | None:
        """:meth:`try_reap` while this thread holds the fd (it may be closing meanwhile)."""
        try:
            return self.try_reap()
        except ValueError:
            status = self.status
            if status is not None:
                return status
            raise
