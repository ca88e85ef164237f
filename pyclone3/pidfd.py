"""An owned process handle: :class:`PidFd`."""

from __future__ import annotations

import contextlib
import errno
import math
import numbers
import os
import select
import signal
import sys
import threading
import time
import warnings
from types import TracebackType
from typing import Any

from . import syscalls
from ._clone3 import ffi, lib
from ._features import features
from .flags import IdType, PidfdFlag, PidfdInfoFlag, PidfdSignalFlag, WaitFlag
from .status import WaitStatus

__all__ = ["PidFd", "WaitTimeout"]

_POLL_MAX_MS = 2**31 - 1
_eventfd = getattr(os, "eventfd", None)  # Python 3.10+
_EFD_FLAGS = getattr(os, "EFD_CLOEXEC", 0) | getattr(os, "EFD_NONBLOCK", 0)
_ONE = (1).to_bytes(8, sys.byteorder)  # an eventfd takes an 8-byte count; a pipe, any bytes
_UNKNOWN: Any = object()  # no identity key worked out yet
_FAST_TIMEOUT_MAX = 1e9  # seconds; NaN, infinities and the rest take the full check
#: While a non-child's zombie waits for its own parent to reap it, re-check
#: at least this often in case the kernel does not wake pollers on reap.
_REAP_RECHECK_MS = 100
#: Longest pause after a spurious wake-up (readable pidfd, nothing to reap).
_SPURIOUS_MAX_S = 0.05


class _SweepCount:
    """How many sweeps (:func:`pyclone3.wait_all`, :func:`pyclone3.iter_exits`) are reaping now.

    A sweep reaps in C, outside the PidFds' locks, and records the statuses
    afterwards. A thread whose ``waitid`` gets ``ECHILD`` while one runs may
    have lost the child to it, so it waits for the sweep to finish (see
    :meth:`PidFd._echild`) before taking the process for a non-child.
    """

    __slots__ = ("_lock", "active")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.active = 0

    def __enter__(self) -> None:
        with self._lock:
            self.active += 1

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            self.active -= 1


_sweeps = _SweepCount()


class WaitTimeout(TimeoutError):
    """:meth:`PidFd.wait` gave up: the process had not exited in time.

    A :class:`TimeoutError`; :attr:`pid` and :attr:`timeout` tell which wait.
    The process is untouched: call :meth:`PidFd.wait` again to go on waiting.
    """

    def __init__(self, pid: int, timeout: float) -> None:
        super().__init__(f"process {pid} did not exit within {timeout} seconds")
        self.pid = pid
        self.timeout = timeout


def _deadline(timeout: float | None) -> float | None:
    """Monotonic deadline for *timeout* seconds; ``None`` means never."""
    if timeout is None:
        return None
    kind = type(timeout)
    if (kind is float or kind is int) and 0 <= timeout < _FAST_TIMEOUT_MAX:
        return time.monotonic() + timeout  # the common case, checked cheaply
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
        raise TypeError(f"timeout must be a number or None, not {type(timeout).__name__}")
    seconds = float(timeout)
    if math.isnan(seconds):
        raise ValueError("timeout must not be NaN")
    if seconds == math.inf:
        return None
    return time.monotonic() + max(seconds, 0.0)


def _poll(
    fd: int, events: int, deadline: float | None, cap_ms: int | None = None, wake: int = -1
) -> int:
    """poll(2) *fd* until an event or *deadline*; return revents (0 if none).

    One ``poll`` call per wait however long it is (a wait past ~24 days,
    ``poll``'s limit, takes one more call per 24 days); ``select.poll``
    retries on signals itself (PEP 475). With *cap_ms*, return 0 after at
    most that long even if *deadline* is further away. If *wake* (a pipe's
    read end) turns readable, raise ``ValueError``: the PidFd was closed.
    """
    poller = select.poll()
    poller.register(fd, events)
    if wake >= 0:
        poller.register(wake, select.POLLIN)
    while True:
        if deadline is None:
            ms = -1
        else:
            remaining = deadline - time.monotonic()
            # min first: a deadline 1e300 s away would overflow ceil().
            ms = 0 if remaining <= 0 else math.ceil(min(remaining * 1000, _POLL_MAX_MS))
        capped = cap_ms is not None and (ms < 0 or ms > cap_ms)
        ready = poller.poll(cap_ms if capped else ms)
        for ready_fd, _ in ready:
            if ready_fd == wake:
                raise ValueError("the PidFd was closed while waiting")
        if ready:
            return ready[0][1]
        if capped or (deadline is not None and time.monotonic() >= deadline):
            return 0


def _pid_of(fd: int) -> int:
    """The PID behind pidfd *fd* (-1 once reaped); ValueError if not a pidfd."""
    try:
        info = syscalls.pidfd_get_info(fd)
    except ProcessLookupError:
        return -1
    except OSError as exc:
        if exc.errno not in (errno.ENOTTY, errno.EINVAL, errno.ENOSYS, errno.EPERM):
            raise
    else:
        return info.pid if info.pid is not None else -1
    try:
        with open(f"/proc/self/fdinfo/{fd}", encoding="ascii") as f:
            for line in f:
                if line.startswith("Pid:"):
                    return int(line.split()[1])
    except OSError as exc:
        raise ValueError(f"fd {fd} is not an open pidfd ({exc.strerror})") from None
    raise ValueError(f"fd {fd} is not a pidfd")


class PidFd:
    """An owned pidfd: a file descriptor that names one process for ever.

    Unlike a PID, a pidfd cannot come to mean another process once its own
    is reaped: :meth:`send_signal` can never hit a stranger, and
    :meth:`wait` sleeps in ``poll(2)`` until the process exits, with no
    polling loop. Get one with :meth:`open`, from a pyclone3 spawn, or wrap
    a pidfd you own with ``PidFd(fd)``.

    The fd is ``O_CLOEXEC`` and closed by :meth:`close`, by ``with``, or
    (with a :class:`ResourceWarning`, as files do) when garbage-collected.
    Methods of a closed ``PidFd`` raise :class:`ValueError`. A ``PidFd`` may
    be shared between threads: :meth:`close` from one thread while another
    is inside a call defers the real ``close(2)`` until that call returns,
    so an fd number is never reused under anyone's feet.

    For a child of this process, :meth:`wait` and :meth:`try_wait` reap it
    (``waitid(P_PIDFD)``) and keep the result: later calls return the same
    :class:`~pyclone3.WaitStatus`. Reap a child through one owner only.
    """

    __slots__ = (
        "__weakref__",
        "_closing",
        "_fd",
        "_foreign",
        "_identity_key",
        "_lock",
        "_pid",
        "_reaping",
        "_status",
        "_users",
        "_wake",
    )

    def __init__(self, fd: int, *, pid: int | None = None) -> None:
        """Take ownership of the pidfd *fd*.

        *pid*, if known, saves a lookup; otherwise it is read with
        ``PIDFD_GET_INFO`` (Linux 6.13+) or from ``/proc/self/fdinfo``.
        Raises ``ValueError`` if *fd* is not a pidfd, ``TypeError`` if not
        an int.
        """
        self._fd = -1
        self._closing = True  # until fully built, so __del__ stays quiet
        if isinstance(fd, bool) or not isinstance(fd, int):
            raise TypeError(f"fd must be an int, not {type(fd).__name__}")
        if fd < 0:
            raise ValueError(f"fd must be a non-negative file descriptor, got {fd}")
        if pid is None:
            pid = _pid_of(fd)
        elif isinstance(pid, bool) or not isinstance(pid, int):
            raise TypeError(f"pid must be an int, not {type(pid).__name__}")
        self._pid = pid
        self._lock = threading.Lock()
        self._users = 0
        self._status: WaitStatus | None = None
        self._foreign = False
        self._reaping = 0
        self._wake: tuple[int, int] | None = None
        self._identity_key: Any = _UNKNOWN
        self._fd = fd
        self._closing = False

    @classmethod
    def _adopt(cls, fd: int, pid: int) -> PidFd:
        """Own a pidfd that pyclone3 itself just received (no checks, no lookups)."""
        self = cls.__new__(cls)
        self._pid = pid
        self._lock = threading.Lock()
        self._users = 0
        self._status = None
        self._foreign = False
        self._reaping = 0
        self._wake = None
        self._identity_key = _UNKNOWN
        self._fd = fd
        self._closing = False
        return self

    @classmethod
    def open(cls, pid: int, *, nonblock: bool = False, thread: bool = False) -> PidFd:
        """Open a pidfd for process *pid* (``pidfd_open(2)``).

        Racy by nature if *pid* might already be reaped and reused: prefer a
        pidfd taken at creation. *nonblock* sets ``PIDFD_NONBLOCK``
        (5.10+); *thread* sets ``PIDFD_THREAD`` (6.9+) so *pid* may name a
        thread. Raises ``ProcessLookupError`` if there is no such process,
        and whatever :func:`pyclone3.syscalls.pidfd_open` raises.
        """
        flags = 0
        if nonblock:
            flags |= PidfdFlag.PIDFD_NONBLOCK
        if thread:
            flags |= PidfdFlag.PIDFD_THREAD
        fd = syscalls.pidfd_open(pid, flags)
        return cls(fd, pid=pid)

    # ---- ownership -------------------------------------------------------

    def _open_fd_locked(self) -> int:
        if self._closing:
            raise ValueError("I/O operation on closed PidFd")
        return self._fd

    def _close_if_unused_locked(self) -> None:
        if self._closing and self._users == 0 and self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)
            self._close_wake_locked()

    def _close_wake_locked(self) -> None:
        if self._wake is not None:
            for end in set(self._wake):  # one fd for an eventfd, two for a pipe
                os.close(end)
            self._wake = None

    def _wake_waiters_locked(self) -> None:
        """Closed while in use: make the waiters in wait() give up (see _poll)."""
        if self._wake is not None and self._users > 0:
            with contextlib.suppress(BlockingIOError):
                os.write(self._wake[1], _ONE)

    def _wake_fd(self) -> int:
        """The fd close() writes to, made on first need: an eventfd (a pipe on 3.9).

        Raises ``ValueError`` if the PidFd is closed already: a close() made
        before the wake fd existed could not write to it.
        """
        with self._lock:
            self._open_fd_locked()
            if self._wake is None:
                if _eventfd is not None:
                    efd = _eventfd(0, _EFD_FLAGS)
                    self._wake = (efd, efd)
                else:  # pragma: no cover - Python 3.9
                    r, w = os.pipe()
                    os.set_blocking(w, False)
                    self._wake = (r, w)
            return self._wake[0]

    def _acquire(self) -> int:
        with self._lock:
            fd = self._open_fd_locked()
            self._users += 1
            return fd

    def _release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._closing:
                self._close_if_unused_locked()

    def fileno(self) -> int:
        """The pidfd's number, for ``poll``/``select``/event loops; the ``PidFd`` keeps it."""
        with self._lock:
            return self._open_fd_locked()

    @property
    def closed(self) -> bool:
        """``True`` once :meth:`close` or :meth:`detach` was called."""
        return self._closing

    def close(self) -> None:
        """Close the pidfd. Closing twice is allowed and does nothing.

        If another thread is inside a call on this ``PidFd``, the ``close(2)``
        happens when that call returns.
        """
        with self._lock:
            self._closing = True
            self._wake_waiters_locked()
            self._close_if_unused_locked()

    def detach(self) -> int:
        """Give up ownership: return the fd without closing it (the ``PidFd`` is closed)."""
        with self._lock:
            fd = self._open_fd_locked()
            self._closing = True
            self._wake_waiters_locked()
            self._fd = -1
            if self._users == 0:
                self._close_wake_locked()
            return fd

    def __enter__(self) -> PidFd:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_closing", True):
            return
        try:
            warnings.warn(f"unclosed {self!r}", ResourceWarning, stacklevel=2, source=self)
        finally:  # even when warnings are errors, the fd must not leak
            self.close()

    # ---- identity ---------------------------------------------------------------

    def _identity(self) -> tuple[int, int] | None:
        """``(st_dev, st_ino)`` of the pidfd where that names the process (pidfs).

        Worked out once, on first use while open, then kept: a ``PidFd`` first
        compared or hashed after :meth:`close`, or on a kernel before 6.9, has
        no key and is equal only to itself.
        """
        key = self._identity_key
        if key is _UNKNOWN:
            key = None
            with self._lock:
                if not self._closing and features().pidfd_identity:
                    st = os.fstat(self._fd)
                    key = (st.st_dev, st.st_ino)
                self._identity_key = key
        return key  # type: ignore[no-any-return]

    def __eq__(self, other: object) -> bool:
        """Two ``PidFd`` objects are equal when they name the same process.

        On Linux 6.9+ (pidfs) every pidfd of a process shares one inode, which
        identifies the process for ever; supervisors can key tables by
        ``PidFd``. Before 6.9 (:attr:`Features.pidfd_identity
        <pyclone3.Features.pidfd_identity>` false) a ``PidFd`` equals only
        itself. Compare or hash while open (the key is kept once known).
        """
        if self is other:
            return True
        if not isinstance(other, PidFd):
            return NotImplemented
        mine = self._identity()
        return mine is not None and mine == other._identity()

    def __hash__(self) -> int:
        key = self._identity()
        return hash(key) if key is not None else id(self) >> 4

    def __repr__(self) -> str:
        status = self._status
        state = f" {status!r}" if status is not None else ""
        if self._closing:
            return f"<PidFd pid={self._pid} closed{state}>"
        return f"<PidFd fd={self._fd} pid={self._pid}{state}>"

    # ---- about the process -----------------------------------------------

    @property
    def pid(self) -> int:
        """The process's PID in this PID namespace when the ``PidFd`` was made.

        -1 if it had already been reaped then; 0 if it is not visible from
        this namespace. Use it for display and logs, not to act on: the
        number may name another process after the reap.
        """
        return self._pid

    @property
    def returncode(self) -> int | None:
        """The known status's :attr:`~pyclone3.WaitStatus.returncode`, else ``None``.

        Makes no syscall: it is ``None`` until :meth:`wait` or :meth:`try_wait`
        has seen the exit.
        """
        status = self._status
        return status.returncode if status is not None else None

    def is_alive(self) -> bool:
        """``True`` until the process exits (one ``poll`` with timeout 0; reaps nothing)."""
        if self._status is not None:
            return False
        fd = self._acquire()
        try:
            return _poll(fd, select.POLLIN, 0.0) == 0
        finally:
            self._release()

    def _poll_ready(self) -> bool:
        """Whether the pidfd is readable now (the process has exited); no reap."""
        return _poll(self._fd, select.POLLIN, 0.0) != 0

    def info(self, mask: int = PidfdInfoFlag.PIDFD_INFO_PID) -> syscalls.PidfdInfo:
        """``PIDFD_GET_INFO`` (Linux 6.13+): see :func:`pyclone3.syscalls.pidfd_get_info`."""
        fd = self._acquire()
        try:
            return syscalls.pidfd_get_info(fd, mask)
        finally:
            self._release()

    # ---- signals -----------------------------------------------------------

    def send_signal(self, sig: int, *, flags: int = 0) -> None:
        """Send *sig* through the pidfd (``pidfd_send_signal(2)``).

        Raises ``ProcessLookupError`` once the process has exited, reaped or
        not (the kernel itself silently accepts signals to a zombie; this
        method checks the pidfd's readiness first). *flags* are
        :class:`~pyclone3.flags.PidfdSignalFlag` bits, e.g.
        ``PIDFD_SIGNAL_PROCESS_GROUP`` (6.9+) to signal the process group
        the process leads (before 6.9, :func:`pyclone3.tree.kill_tree`
        reaches the group and the rest of the tree through pidfds too;
        ``os.killpg`` would go by number). Other errors as
        :func:`pyclone3.syscalls.pidfd_send_signal`.
        """
        if isinstance(sig, bool) or not isinstance(sig, int):
            raise TypeError(f"sig must be an int, not {type(sig).__name__}")
        if isinstance(flags, bool) or not isinstance(flags, int):
            raise TypeError(f"flags must be an int, not {type(flags).__name__}")
        if self._status is not None:
            raise ProcessLookupError(errno.ESRCH, f"process {self._pid} has exited")
        fd = self._acquire()
        try:
            if not flags & PidfdSignalFlag.PIDFD_SIGNAL_PROCESS_GROUP and _poll(
                fd, select.POLLIN, 0.0
            ):
                raise ProcessLookupError(errno.ESRCH, f"process {self._pid} has exited")
            syscalls.pidfd_send_signal(fd, sig, flags)
        finally:
            self._release()

    def _send_signal_or_kill(self, sig: int) -> None:
        """send_signal, or, where pidfd_send_signal is missing (ENOSYS), kill(2)
        once the pidfd shows the process still runs: then it is unreaped and
        its PID cannot name another process (short of a reap in between,
        the window subprocess always has). For callers that mirror
        subprocess (Popen, kill_tree); :meth:`send_signal` itself never
        falls back.
        """
        try:
            self.send_signal(sig)
        except OSError as exc:
            if exc.errno != errno.ENOSYS:
                raise
            if not self.is_alive():
                raise ProcessLookupError(errno.ESRCH, f"process {self._pid} has exited") from None
            os.kill(self._pid, sig)

    def terminate(self) -> None:
        """Send ``SIGTERM`` (see :meth:`send_signal`)."""
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """Send ``SIGKILL`` (see :meth:`send_signal`)."""
        self.send_signal(signal.SIGKILL)

    # ---- waiting ------------------------------------------------------------

    def try_wait(self) -> WaitStatus | None:
        """The exit status if the process has exited, else ``None``; never blocks.

        For a child this reaps it (one ``waitid(P_PIDFD, WEXITED|WNOHANG|__WALL)``).
        For anything else see :meth:`wait`.
        """
        if self._status is not None:
            return self._status
        fd = self._acquire()
        try:
            return self._try_reap(fd)
        finally:
            self._release()

    def wait(self, timeout: float | None = None) -> WaitStatus:
        """Wait for the process to exit and return its :class:`~pyclone3.WaitStatus`.

        Without a timeout this is one blocking ``waitid(P_PIDFD, WEXITED|__WALL)``.
        With one, it sleeps in ``poll(2)`` on the pidfd, then reaps with
        ``waitid(P_PIDFD, WNOHANG)``: two syscalls for a child, however long
        the wait, with no wake-up before the exit. *timeout* is in seconds;
        ``None`` or ``math.inf`` waits for ever, 0 or less only checks
        once, and any huge value is fine. On timeout :class:`WaitTimeout`
        (a :class:`TimeoutError`) is raised and the process is untouched;
        the wait may be repeated. Signal handlers run during the wait
        (``KeyboardInterrupt`` interrupts it); ``EINTR`` never escapes.

        For a process that is *not* a child of this one (or a child that
        someone else reaped), waiting still works: on Linux 6.15+
        (``PIDFD_INFO_EXIT``) it returns the status once the process has
        been reaped by its parent (``rusage`` is then ``None``). On older
        kernels it waits for the exit, then raises
        :class:`ChildProcessError`, as no status can be had.

        A readable pidfd with nothing to reap (a traced child, say) is
        retried with a short pause, never spun on.
        """
        if self._status is not None:
            return self._status
        deadline = None if timeout is None else _deadline(timeout)
        fd = self._acquire()
        try:
            return self._wait(fd, timeout, deadline, self._wake_fd())
        finally:
            self._release()

    def _acquire_if_open(self) -> int:
        """Like :meth:`_acquire`, but -1 (and nothing held) if the PidFd is closed."""
        with self._lock:
            if self._closing:
                return -1
            self._users += 1
            return self._fd

    def _swept(self, status: WaitStatus, close: bool) -> WaitStatus:
        """Record a reap made by a sweep of ``wait_all``/``iter_exits``, and let go of the fd.

        The sweep reaps in C, outside this lock, with the fd held through
        :meth:`_acquire_if_open`; a thread whose ``waitid`` got ``ECHILD``
        meanwhile waits for this record (see :data:`_sweeps`). With *close*
        (an owner done with the pidfd), the pidfd is closed too, in the same
        lock round.
        """
        with self._lock:
            if self._status is None:
                self._status = status
            self._users -= 1
            if close:
                self._closing = True
            if self._closing:
                self._close_if_unused_locked()
            return self._status

    def _reap_and_close(self) -> WaitStatus | None:
        """Block in ``waitid`` until the child exits, reap it and close the pidfd.

        The lean path of ``Popen.wait()`` with no timeout, for an owner done
        with the pidfd once the child is reaped: two lock rounds and one
        syscall besides the ``close``, because right after a wake-up the CPU
        is cold and every step adds to the time the caller waits. ``None``,
        with nothing changed, for anything unusual (closed, not ours to reap,
        an error): :meth:`_wait_and_close` then sorts it out.
        """
        with self._lock:
            if self._closing or self._foreign or self._status is not None:
                return None
            fd = self._fd
            self._users += 1
            self._reaping += 1  # see _echild
        status = None
        try:
            info = ffi.new("struct pyclone3_waitinfo *")
            ru = ffi.new("struct pyclone3_rusage *")
            # EINTR: the loop's next turn runs the signal handlers (PEP 475).
            while lib.sys_waitid(_P_PIDFD, fd, info, _WEXITED, ru) < 0:
                if ffi.errno != errno.EINTR:
                    break
            else:
                if info.pid:
                    status = WaitStatus._from_kernel(
                        info.pid, info.code, info.status, info.uid, ru
                    )
        finally:
            with self._lock:
                self._reaping -= 1
                self._users -= 1
                if status is not None:
                    if self._status is None:
                        self._status = status
                    status = self._status
                    self._closing = True
                    self._close_if_unused_locked()
        return status

    def _wait_and_close(self, timeout: float | None) -> WaitStatus:
        """:meth:`wait`, then :meth:`close`: for an owner done with the pidfd once reaped.

        One lock round after the wake-up instead of three: the code that runs
        between the exit and the return is the wait's latency.
        """
        status = self._status
        if status is None:
            deadline = None if timeout is None else _deadline(timeout)  # may raise: first
            if timeout is None:
                status = self._reap_and_close()  # the blocking reap, closed with it
                if status is not None:
                    return status
            fd = self._acquire()
            try:
                status = self._wait(fd, timeout, deadline)
            except BaseException:
                self._release()
                raise
            with self._lock:
                self._users -= 1
                self._closing = True
                self._close_if_unused_locked()
            return status
        self.close()
        return status

    def _wait(
        self, fd: int, timeout: float | None, deadline: float | None, wake: int = -1
    ) -> WaitStatus:
        """The wait; with *wake*, a close() from another thread ends it (ValueError)."""
        bufs = syscalls.WaitBuffers()  # allocated before sleeping, not after waking
        if deadline is None and not self._foreign and wake < 0:
            status = self._blocking_reap(fd, bufs)
            if status is not None:
                return status
        elif not self._foreign:
            # One WNOHANG reap first, as subprocess does: an exited child
            # costs one syscall, a running one a single extra.
            status = self._try_reap(fd, bufs)
            if status is not None:
                return status
        spurious = 0
        if deadline is None or deadline > time.monotonic():
            while True:
                if self._foreign and _exit_info_supported() and _poll(fd, select.POLLIN, 0.0):
                    # An exited non-child's status appears when its parent
                    # reaps it, which the kernel reports as POLLHUP (polled for
                    # with no events); re-check now and then in case a kernel
                    # does not wake pollers on reap.
                    ready = _poll(fd, 0, deadline, _REAP_RECHECK_MS, wake)
                    spurious = 0
                else:
                    ready = _poll(fd, select.POLLIN, deadline, wake=wake)
                status = self._try_reap(fd, bufs)
                if status is not None:
                    return status
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    break
                if ready and not self._foreign:
                    spurious += 1
                    pause = min(0.001 * 2**spurious, _SPURIOUS_MAX_S)
                    if deadline is not None:
                        pause = min(pause, deadline - now)
                    time.sleep(pause)
        else:
            status = self._try_reap(fd, bufs)
            if status is not None:
                return status
        raise WaitTimeout(self._pid, timeout if timeout is not None else math.inf)

    def _blocking_reap(self, fd: int, bufs: syscalls.WaitBuffers) -> WaitStatus | None:
        """Without a timeout, one blocking ``waitid(P_PIDFD, WEXITED|__WALL)`` is the whole wait.

        It returns when the child is reapable, and at once with ``ECHILD`` for
        a process that is not (or no longer) ours to reap, which then takes
        the polling path. Signals interrupt it and run their handlers (PEP 475
        retry). ``None`` also for a ``PIDFD_NONBLOCK`` pidfd (``EAGAIN``).
        """
        with self._lock:
            self._reaping += 1  # see _echild
        try:
            status = syscalls._waitid(_P_PIDFD, fd, _WEXITED, bufs)
        except ChildProcessError:
            with self._lock:
                self._reaping -= 1
            return self._echild()
        except BaseException:
            with self._lock:
                self._reaping -= 1
            raise
        with self._lock:
            self._reaping -= 1
            if status is None:
                return None
            if self._status is None:
                self._status = status
            return self._status

    def _echild(self) -> WaitStatus | None:
        """waitid said ECHILD: another thread of ours reaped it, or it is not ours.

        A thread in a blocking waitid, or a ``wait_all``/``iter_exits`` sweep,
        may have reaped the child and not yet recorded the status: wait for
        it (microseconds) before concluding that the process is foreign.
        """
        while True:
            with self._lock:
                if self._status is not None:
                    return self._status
                if self._reaping == 0 and not _sweeps.active:
                    self._foreign = True
                    return None
            time.sleep(0.0001)

    def _try_reap(self, fd: int, bufs: syscalls.WaitBuffers | None = None) -> WaitStatus | None:
        """One non-blocking attempt to learn the exit status."""
        with self._lock:
            if self._status is not None:
                return self._status
            if not self._foreign:
                try:
                    status = syscalls._waitid(
                        _P_PIDFD, fd, _WEXITED_WNOHANG, bufs or syscalls.WaitBuffers()
                    )
                except ChildProcessError:
                    pass  # decided by _echild, outside the lock
                else:
                    if status is not None:
                        self._status = status
                    return status
        if not self._foreign:
            status = self._echild()
            if status is not None:
                return status
        return self._foreign_status(fd)

    def _foreign_status(self, fd: int) -> WaitStatus | None:
        """Status of a process we cannot reap: PIDFD_INFO_EXIT, or an error."""
        if _exit_info_supported():
            try:
                info = syscalls.pidfd_get_info(fd, PidfdInfoFlag.PIDFD_INFO_EXIT)
            except ProcessLookupError:
                return None
            if info.exit_code is None:
                return None  # still running, or a zombie its parent has not reaped
            status = WaitStatus.from_wait_status(self._pid, info.exit_code)
            with self._lock:
                if self._status is None:
                    self._status = status
                return self._status
        if _poll(fd, select.POLLIN, 0.0) == 0:
            return None
        raise ChildProcessError(
            errno.ECHILD,
            f"process {self._pid} has exited, but it is not a child of this process "
            "(or was reaped elsewhere) and this kernel cannot report its status "
            "(PIDFD_INFO_EXIT needs Linux 6.15)",
        )

    def setns(self, flags: int) -> None:
        """Move the calling thread into the process's namespaces named by *flags*.

        *flags* are ``CLONE_NEW*`` :class:`~pyclone3.flags.CloneFlag` bits;
        all are entered at once (``setns(2)`` on the pidfd, Linux 5.8+). Only
        the calling thread moves; run it in a thread or process of its own.
        Raises ``ValueError`` for a non-namespace flag (or 0) and
        ``PermissionError`` without the privilege; see
        :func:`pyclone3.syscalls.setns`.
        """
        if isinstance(flags, bool) or not isinstance(flags, int):
            raise TypeError(f"flags must be CLONE_NEW* flags, not {type(flags).__name__}")
        if flags == 0:
            raise ValueError("setns() needs at least one CLONE_NEW* flag")
        fd = self._acquire()
        try:
            syscalls.setns(fd, flags)
        finally:
            self._release()

    def getfd(self, targetfd: int) -> int:
        """Duplicate fd *targetfd* of the process into this one (``pidfd_getfd(2)``).

        Returns a new ``O_CLOEXEC`` fd owned by the caller; see
        :func:`pyclone3.syscalls.pidfd_getfd` for what it raises.
        """
        fd = self._acquire()
        try:
            return syscalls.pidfd_getfd(fd, targetfd)
        finally:
            self._release()


_P_PIDFD = int(IdType.P_PIDFD)
# __WALL: a child spawned with an exit signal other than SIGCHLD (or none) is
# a "clone" child, which waitid only reports with __WCLONE or __WALL.
_WEXITED = int(WaitFlag.WEXITED | WaitFlag["__WALL"])
_WEXITED_WNOHANG = int(WaitFlag.WEXITED | WaitFlag.WNOHANG | WaitFlag["__WALL"])


def _exit_info_supported() -> bool:
    return features().pidfd_info_exit
