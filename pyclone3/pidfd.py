"""An owned process handle: :class:`PidFd`.

A ``PidFd`` is the public face of a ``ChildState`` (``_child.py``), which
owns what is known of the process (its pidfd, whether and how it ended);
this module adds what a handle does: identity, signals, namespaces.
"""

from __future__ import annotations

import errno
import operator
import os
import select
import signal
import warnings
from types import TracebackType

from . import syscalls
from ._child import ChildState
from ._features import features
from ._waiting import WaitTimeout, deadline, poll_fd
from .flags import PidfdFlag, PidfdInfoFlag, PidfdSignalFlag
from .status import WaitStatus

# typing is not imported at run time (see pyclone3/__init__.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["PidFd", "WaitTimeout"]

_UNKNOWN: Any = object()  # no identity key worked out yet


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


def adopt(fd: int, pid: int) -> PidFd:
    """Own a pidfd that pyclone3 itself just received: no checks, no lookups."""
    self = PidFd.__new__(PidFd)
    self._child = ChildState(fd, pid)
    self._identity_key = _UNKNOWN
    return self


def adopt_spawned(cell: Any, spawn: Any) -> PidFd:
    """Own the pidfd a spawn left in *cell* (``int[1]``) for the child ``spawn.child_pid``.

    The spawn's record is cleared in the same breath as the ``PidFd`` takes
    over (no call in between, so no signal handler can run there): at every
    moment exactly one of the two owns the fd. Until the caller of
    ``Popen()``/``spawn()`` has it, the ``PidFd`` kills and reaps the child
    if it is dropped (:attr:`ChildState.abandon_on_drop`).
    """
    self = PidFd.__new__(PidFd)
    state = ChildState(cell[0], spawn.child_pid)
    state.abandon_on_drop = True
    self._identity_key = _UNKNOWN
    self._child = state
    cell[0] = -1
    spawn.child_pid = -1
    return self


# state_of(pidfd): the ``ChildState`` (``_child.py``) behind *pidfd*, the owner
# of its process's life, for pyclone3's own modules (``Popen``, the
# many-children waits, asyncio), which record and read the exit through it.
# A C-level getter: every Popen asks for it as it spawns.
if TYPE_CHECKING:

    def state_of(pidfd: PidFd) -> ChildState: ...

else:
    state_of = operator.attrgetter("_child")


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

    __slots__ = ("__weakref__", "_child", "_identity_key")

    def __init__(self, fd: int, *, pid: int | None = None) -> None:
        """Take ownership of the pidfd *fd*.

        *pid*, if known, saves a lookup; otherwise it is read with
        ``PIDFD_GET_INFO`` (Linux 6.13+) or from ``/proc/self/fdinfo``.
        Raises ``ValueError`` if *fd* is not a pidfd, ``TypeError`` if not
        an int.
        """
        if isinstance(fd, bool) or not isinstance(fd, int):
            raise TypeError(f"fd must be an int, not {type(fd).__name__}")
        if fd < 0:
            raise ValueError(f"fd must be a non-negative file descriptor, got {fd}")
        if pid is None:
            pid = _pid_of(fd)
        elif isinstance(pid, bool) or not isinstance(pid, int):
            raise TypeError(f"pid must be an int, not {type(pid).__name__}")
        self._identity_key = _UNKNOWN
        self._child = ChildState(fd, pid)

    @classmethod
    def open(
        cls, pid: int, *, nonblock: bool = False, thread: bool = False, inode: int | None = None
    ) -> PidFd:
        """Open a pidfd for process *pid* (``pidfd_open(2)``).

        Racy by nature if *pid* might already be reaped and reused: prefer a
        pidfd taken at creation, or pass the process's *inode* (see
        :attr:`inode`, and util-linux's ``PID:inode`` notation): the pidfd
        opened is then checked to name that very process, and
        ``ProcessLookupError`` is raised if *pid* now names another. *inode*
        needs pidfs (Linux 6.9+; ``OSError(EOPNOTSUPP)`` before).
        *nonblock* sets ``PIDFD_NONBLOCK`` (5.10+); *thread* sets
        ``PIDFD_THREAD`` (6.9+) so *pid* may name a thread. Raises
        ``ProcessLookupError`` if there is no such process, and whatever
        :func:`pyclone3.syscalls.pidfd_open` raises.
        """
        if inode is not None and (isinstance(inode, bool) or not isinstance(inode, int)):
            raise TypeError(f"inode must be an int, not {type(inode).__name__}")
        if inode is not None and inode <= 0:
            raise ValueError(f"inode must be positive, got {inode}")
        if inode is not None and not features().pidfd_identity:
            raise OSError(
                errno.EOPNOTSUPP, "PID:inode names need pidfs (Linux 6.9+)", f"{pid}:{inode}"
            )
        flags = 0
        if nonblock:
            flags |= PidfdFlag.PIDFD_NONBLOCK
        if thread:
            flags |= PidfdFlag.PIDFD_THREAD
        fd = syscalls.pidfd_open(pid, flags)
        self = cls(fd, pid=pid)
        if inode is not None and self.inode != inode:
            # The PID was reused: the process that had that inode is gone.
            self.close()
            raise ProcessLookupError(errno.ESRCH, os.strerror(errno.ESRCH), f"{pid}:{inode}")
        return self

    # ---- ownership -------------------------------------------------------

    def fileno(self) -> int:
        """The pidfd's number, for ``poll``/``select``/event loops; the ``PidFd`` keeps it."""
        child = self._child
        with child.lock:
            return child.fileno_locked()

    @property
    def closed(self) -> bool:
        """``True`` once :meth:`close` or :meth:`detach` was called."""
        return self._child.closed

    def close(self) -> None:
        """Close the pidfd. Closing twice is allowed and does nothing.

        If another thread is inside a call on this ``PidFd``, the ``close(2)``
        happens when that call returns; a :meth:`wait` in another thread
        then ends (with the status, if one was recorded meanwhile, else with
        ``ValueError``).
        """
        self._child.close()

    def detach(self) -> int:
        """Give up ownership: return the fd without closing it (the ``PidFd`` is closed)."""
        return self._child.detach()

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
        child = getattr(self, "_child", None)
        if child is None:
            return
        if child.closed:
            if child.number >= 0 or child.users:
                child.finalize()  # what a close interrupted by a raising handler left open
            return
        if child.abandon_on_drop:  # a spawn that never reached its caller
            child.kill_on_drop()
            return
        if child.close_on_exit and child.status is not None:
            # Its owner's close, cut short by a signal handler's exception:
            # nothing was forgotten by the user, so no warning.
            child.finalize()
            return
        try:
            warnings.warn(f"unclosed {self!r}", ResourceWarning, stacklevel=2, source=self)
        finally:  # even when warnings are errors, the fd must not leak
            child.close()

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
            child = self._child
            with child.lock:
                if not child.closed and features().pidfd_identity:
                    st = os.fstat(child.fileno_locked())
                    key = (st.st_dev, st.st_ino)
                self._identity_key = key
        return key  # type: ignore[no-any-return]

    @property
    def inode(self) -> int | None:
        """The pidfs inode number that names this process for ever (Linux 6.9+), else ``None``.

        Every pidfd of one process shares it, and no other process of this
        boot ever has it: with the PID, it makes util-linux's ``PID:inode``
        name, which :meth:`open` takes back (``PidFd.open(pid, inode=...)``).
        Worked out on first use while open, then kept.
        """
        key = self._identity()
        return key[1] if key is not None else None

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
        child = self._child
        status = child.status
        state = f" {status!r}" if status is not None else ""
        if child.closed:
            return f"<PidFd pid={child.pid} closed{state}>"
        return f"<PidFd fd={child.number} pid={child.pid}{state}>"

    # ---- about the process -----------------------------------------------

    @property
    def pid(self) -> int:
        """The process's PID in this PID namespace when the ``PidFd`` was made.

        -1 if it had already been reaped then; 0 if it is not visible from
        this namespace. Use it for display and logs, not to act on: the
        number may name another process after the reap.
        """
        return self._child.pid

    @property
    def status(self) -> WaitStatus | None:
        """The exit status once known (by :meth:`wait`, :meth:`try_wait`, ``Popen``,
        ``wait_all`` ...), else ``None``. Makes no syscall; still answers after
        :meth:`close`.
        """
        return self._child.status

    @property
    def returncode(self) -> int | None:
        """The known status's :attr:`~pyclone3.WaitStatus.returncode`, else ``None``.

        Makes no syscall: it is ``None`` until the exit has been seen.
        """
        status = self._child.status
        return status.returncode if status is not None else None

    def is_alive(self) -> bool:
        """``True`` until the process exits (one ``poll`` with timeout 0; reaps nothing)."""
        child = self._child
        if child.status is not None:
            return False
        with child.lock:
            return poll_fd(child.fileno_locked(), select.POLLIN, 0.0) == 0

    def info(self, mask: int = PidfdInfoFlag.PIDFD_INFO_PID) -> syscalls.PidfdInfo:
        """``PIDFD_GET_INFO`` (Linux 6.13+): see :func:`pyclone3.syscalls.pidfd_get_info`."""
        child = self._child
        with child.lock:
            return syscalls.pidfd_get_info(child.fileno_locked(), mask)

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
        child = self._child
        if child.status is not None:
            raise ProcessLookupError(errno.ESRCH, f"process {child.pid} has exited")
        with child.lock:  # held: a close() from another thread waits for the signal
            fd = child.fileno_locked()
            if not flags & PidfdSignalFlag.PIDFD_SIGNAL_PROCESS_GROUP and poll_fd(
                fd, select.POLLIN, 0.0
            ):
                raise ProcessLookupError(errno.ESRCH, f"process {child.pid} has exited")
            syscalls.pidfd_send_signal(fd, sig, flags)

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
        return self._child.try_reap()

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
        child = self._child
        status = child.status
        if status is not None:
            return status
        return child.wait(timeout, None if timeout is None else deadline(timeout))

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
        child = self._child
        with child.lock:
            syscalls.setns(child.fileno_locked(), flags)

    def getfd(self, targetfd: int) -> int:
        """Duplicate fd *targetfd* of the process into this one (``pidfd_getfd(2)``).

        Returns a new ``O_CLOEXEC`` fd owned by the caller; see
        :func:`pyclone3.syscalls.pidfd_getfd` for what it raises.
        """
        child = self._child
        with child.lock:
            return syscalls.pidfd_getfd(child.fileno_locked(), targetfd)
