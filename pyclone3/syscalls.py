"""The typed low level: one function per syscall, checked and documented.

Each function makes exactly the syscall its name says, through pyclone3's
compiled cffi module. Arguments are checked before the call (``TypeError``
for a wrong type, ``ValueError`` for a value no kernel accepts); a kernel
refusal becomes the ``OSError`` subclass Python picks for its errno
(``ProcessLookupError`` for ``ESRCH``, ``ChildProcessError`` for ``ECHILD``,
``PermissionError`` for ``EPERM``, ...). ``EINTR`` is retried where PEP 475
says it should be. File descriptors that come back are owned by the caller
and have ``O_CLOEXEC`` set.

Unknown flag bits are passed through, so that flags newer than pyclone3 can
be tried; the kernel answers ``EINVAL`` for those it does not know either.
"""

from __future__ import annotations

import errno
import functools
import operator
import os
import signal
from collections.abc import Iterable

from ._clone3 import ffi, lib
from ._errors import raise_errno
from ._frozen import Frozen
from .flags import CloneFlag, PidfdInfoFlag
from .status import WaitStatus, status_from_kernel

# typing is not imported at run time (see pyclone3/__init__.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Protocol, Union

__all__ = [
    "FdLike",
    "PidfdInfo",
    "clone3",
    "close_range",
    "get_child_subreaper",
    "pidfd_get_info",
    "pidfd_getfd",
    "pidfd_open",
    "pidfd_send_signal",
    "set_child_subreaper",
    "setns",
    "waitid",
]

_INT_MAX = 2**31 - 1
_UINT_MAX = 2**32 - 1
_U64_MAX = 2**64 - 1
_NSIG = 65  # signal numbers run 1..64 on Linux
_MAX_PID_NS_LEVEL = 32


if TYPE_CHECKING:

    class _HasFileno(Protocol):
        def fileno(self) -> int: ...

    #: A file descriptor: an ``int`` or any object with a ``fileno()`` method.
    FdLike = Union[int, _HasFileno]
else:
    # The type alias is made on first use, and typing imported then.
    _ALIASES = ("FdLike", "_HasFileno")

    def __getattr__(name: str) -> Any:
        if name not in _ALIASES:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        from typing import Protocol, Union

        class _HasFileno(Protocol):
            __qualname__ = "_HasFileno"

            def fileno(self) -> int: ...

        globals().update(_HasFileno=_HasFileno, FdLike=Union[int, _HasFileno])
        return globals()[name]

    def __dir__() -> list[str]:
        return sorted({*globals(), *_ALIASES})


def _int(name: str, value: object) -> int:
    if isinstance(value, bool) or not hasattr(type(value), "__index__"):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    return operator.index(value)  # type: ignore[arg-type]


def _ranged(name: str, value: object, low: int, high: int) -> int:
    number = _int(name, value)
    if not low <= number <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {number}")
    return number


def _fd(name: str, obj: object) -> int:
    if not isinstance(obj, int) and hasattr(obj, "fileno"):
        obj = obj.fileno()
    fd = _int(name, obj)
    if fd < 0:
        raise ValueError(f"{name} must be a non-negative file descriptor, got {fd}")
    if fd > _INT_MAX:
        raise ValueError(f"{name} is not a valid file descriptor: {fd}")
    return fd


def _flags(name: str, value: object, high: int = _UINT_MAX) -> int:
    return _ranged(name, value, 0, high)


def pidfd_open(pid: int, flags: int = 0) -> int:
    """Open a pidfd for the process *pid*.

    C call: ``syscall(SYS_pidfd_open, pid, flags)``; see ``pidfd_open(2)``.

    *flags* is 0 or :attr:`~pyclone3.flags.PidfdFlag.PIDFD_NONBLOCK` (Linux
    5.10+) and/or :attr:`~pyclone3.flags.PidfdFlag.PIDFD_THREAD` (6.9+, *pid*
    may then be any thread). Returns the new fd (``O_CLOEXEC``), owned by the
    caller.

    Opening a pidfd by PID is racy if the process may already have been
    reaped and its PID reused; a child's pidfd is best taken at creation
    (``CLONE_PIDFD``).

    Raises:
        ProcessLookupError: no such process (``ESRCH``).
        OSError: ``EINVAL`` for bad *flags*, or *pid* not a thread-group
            leader without ``PIDFD_THREAD``; ``EMFILE``/``ENFILE``;
            ``ENOSYS`` before Linux 5.3.
        ValueError: *pid* is not positive.
        TypeError: an argument is not an int.
    """
    pid = _ranged("pid", pid, 1, _INT_MAX)
    flags = _flags("flags", flags)
    fd = lib.sys_pidfd_open(pid, flags)
    if fd < 0:
        raise_errno(ffi.errno)
    return int(fd)


def pidfd_send_signal(pidfd: FdLike, sig: int, flags: int = 0) -> None:
    """Send signal *sig* to the process that *pidfd* refers to.

    C call: ``syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, flags)``; see
    ``pidfd_send_signal(2)``. A pidfd names one process for ever, so a
    recycled PID can never receive the signal. *sig* 0 checks that the
    process still exists. *flags* are
    :class:`~pyclone3.flags.PidfdSignalFlag` bits (Linux 6.9+).

    Raises:
        ProcessLookupError: the process has exited (``ESRCH``), even if not
            yet reaped.
        PermissionError: not allowed to signal it (``EPERM``).
        OSError: ``EBADF`` (not a pidfd), ``EINVAL`` (bad signal or flags).
        ValueError: *sig* outside 0..64, or a negative fd.
        TypeError: an argument has the wrong type.
    """
    fd = _fd("pidfd", pidfd)
    sig = _ranged("sig", sig, 0, _NSIG - 1)
    flags = _flags("flags", flags)
    if lib.sys_pidfd_send_signal(fd, sig, ffi.NULL, flags) < 0:
        raise_errno(ffi.errno)


def pidfd_getfd(pidfd: FdLike, targetfd: int, flags: int = 0) -> int:
    """Duplicate file descriptor *targetfd* of the process *pidfd* into this one.

    C call: ``syscall(SYS_pidfd_getfd, pidfd, targetfd, flags)``; see
    ``pidfd_getfd(2)`` (Linux 5.6+). Needs ptrace access to the target
    (``PTRACE_MODE_ATTACH_REALCREDS``). *flags* must be 0 today. Returns
    the new fd (``O_CLOEXEC``), owned by the caller.

    Raises:
        OSError: ``EBADF`` (*targetfd* not open in the target, or *pidfd*
            not a pidfd), ``EPERM``, ``ESRCH``, ``EMFILE``, ``ENOSYS``.
        ValueError, TypeError: bad arguments.
    """
    fd = _fd("pidfd", pidfd)
    target = _fd("targetfd", targetfd)
    flags = _flags("flags", flags)
    newfd = lib.sys_pidfd_getfd(fd, target, flags)
    if newfd < 0:
        raise_errno(ffi.errno)
    return int(newfd)


def close_range(first: int, last: int, flags: int = 0) -> None:
    """Close every fd from *first* to *last*, inclusive (``last`` may be ``2**32 - 1``).

    C call: ``syscall(SYS_close_range, first, last, flags)``; see
    ``close_range(2)`` (Linux 5.9+). With ``CLOSE_RANGE_UNSHARE`` the calling
    *thread* first takes an fd table of its own: never pass it in a
    multi-threaded program, where that thread would stop seeing the fds the
    others open.

    Raises:
        OSError: ``EINVAL`` (*first* > *last*, or an unknown flag),
            ``ENOSYS`` (before 5.9), ``EPERM`` (a seccomp filter).
        ValueError, TypeError: bad arguments.
    """
    lo = _ranged("first", first, 0, _UINT_MAX)
    hi = _ranged("last", last, 0, _UINT_MAX)
    flags = _flags("flags", flags)
    if lib.sys_close_range(lo, hi, flags) < 0:
        raise_errno(ffi.errno)


def waitid(idtype: int, id: FdLike, options: int) -> WaitStatus | None:
    """Wait for a state change of a child, with its resource usage.

    C call: ``syscall(SYS_waitid, idtype, id, &siginfo, options, &rusage)``;
    see ``waitid(2)``. Unlike :func:`os.waitid` it takes ``P_PIDFD``
    (Linux 5.4+; *id* is then the pidfd, an int or an object with
    ``fileno()``) and fills the fifth, ``struct rusage *``, argument:
    :attr:`WaitStatus.rusage <pyclone3.WaitStatus.rusage>` is set whenever
    the child was reaped (not with ``WNOWAIT``, nor for a stop or continue).

    *options* combine :class:`~pyclone3.flags.WaitFlag` bits and must ask for
    at least one of ``WEXITED``, ``WSTOPPED``, ``WCONTINUED``. Returns
    ``None`` when ``WNOHANG`` is given and no child has changed state yet,
    or when the pidfd is ``PIDFD_NONBLOCK`` and its process still runs
    (the kernel's ``EAGAIN``). ``EINTR`` is retried (PEP 475).

    Raises:
        ChildProcessError: no such child, or it was already reaped
            (``ECHILD``).
        OSError: ``EINVAL`` (bad options or idtype; ``P_PIDFD`` before 5.4),
            ``EBADF`` (not a pidfd).
        ValueError, TypeError: bad arguments.
    """
    idtype = _ranged("idtype", idtype, 0, _INT_MAX)
    ident = _fd("id", id) if idtype == lib.P_PIDFD else _ranged("id", id, 0, _INT_MAX)
    options = _flags("options", options)
    if options > _INT_MAX:  # __WCLONE is the sign bit of the C int
        options -= 2**32
    return waitid_with(idtype, ident, options, new_wait_buffer())


#: A fresh C buffer for one waitid call: its siginfo and the child's rusage.
#: PidFd makes one before it sleeps, so that nothing is allocated between the
#: wake-up and the reap. A buffer serves one call: the status of a reap keeps
#: it, for its ``rusage``. (A partial: made without a Python frame.)
new_wait_buffer = functools.partial(ffi.new, "struct pyclone3_waitbuf *")
_WAIT_BUFFER = ffi.typeof("struct pyclone3_waitbuf *")


def is_wait_buffer(obj: object) -> bool:
    """Whether *obj* is a buffer from :func:`new_wait_buffer`."""
    return isinstance(obj, ffi.CData) and ffi.typeof(obj) is _WAIT_BUFFER


def reaped_status(buf: Any) -> WaitStatus | None:
    """The status in *buf* (from :func:`new_wait_buffer`) if a ``waitid`` reaped into it.

    The kernel fills the buffer only on success, so a pid there means the
    child was reaped. For a reap path whose making of the status was cut
    short (a signal handler's exception landing in :func:`waitid_with` after
    the syscall): the exit can still be recorded, with its rusage.
    """
    if buf.pid <= 0:
        return None
    return status_from_kernel(buf.pid, buf.code, buf.status, buf.uid, buf)


_REAPED_CODES = (lib.CLD_EXITED, lib.CLD_KILLED, lib.CLD_DUMPED)
_WNOWAIT = lib.WNOWAIT


def waitid_with(idtype: int, ident: int, options: int, buf: Any) -> WaitStatus | None:
    """:func:`waitid` into *buf* (from :func:`new_wait_buffer`), with no argument checks.

    For callers whose arguments are known good (the reap paths of
    :class:`~pyclone3.PidFd`); errors raise as :func:`waitid` raises them.
    """
    while lib.sys_waitid_into(idtype, ident, buf, options) < 0:
        err = ffi.errno
        if err == errno.EINTR:
            continue
        if err == errno.EAGAIN and idtype == lib.P_PIDFD:
            return None
        raise_errno(err)
    if buf.pid == 0:
        return None
    code = buf.code
    reaped = code in _REAPED_CODES and not options & _WNOWAIT
    return status_from_kernel(buf.pid, code, buf.status, buf.uid, buf if reaped else None)


#: The namespace flags setns(2) takes.
NAMESPACE_FLAGS = (
    CloneFlag.CLONE_NEWNS
    | CloneFlag.CLONE_NEWCGROUP
    | CloneFlag.CLONE_NEWUTS
    | CloneFlag.CLONE_NEWIPC
    | CloneFlag.CLONE_NEWUSER
    | CloneFlag.CLONE_NEWPID
    | CloneFlag.CLONE_NEWNET
    | CloneFlag.CLONE_NEWTIME
)


def setns(fd: FdLike, nstype: int) -> None:
    """Move the calling *thread* into namespaces of another process.

    C call: ``syscall(SYS_setns, fd, nstype)``; see ``setns(2)``. With a
    pidfd (Linux 5.8+), *nstype* is one or more ``CLONE_NEW*`` flags and the
    thread enters all of them at once, atomically; with a ``/proc/PID/ns/*``
    file, 0 or the one matching flag. Entering a PID namespace affects the
    thread's future children only; a user namespace needs a single-threaded
    process.

    Raises:
        PermissionError: ``EPERM`` (``CAP_SYS_ADMIN`` in the target
            namespace's owning user namespace is needed).
        OSError: ``EINVAL`` (a bad flag; a pidfd before 5.8; a
            multi-threaded process and ``CLONE_NEWUSER``), ``EBADF``,
            ``ESRCH`` (the process has exited).
        ValueError: a flag that is not a namespace flag.
        TypeError: an argument has the wrong type.
    """
    target = _fd("fd", fd)
    flags = _flags("nstype", nstype)
    if flags & ~NAMESPACE_FLAGS:
        raise ValueError(f"not namespace flags: {CloneFlag(flags & ~NAMESPACE_FLAGS)!r}")
    if lib.sys_setns(target, flags) < 0:
        raise_errno(ffi.errno)


class PidfdInfo(Frozen):
    """What the ``PIDFD_GET_INFO`` ioctl returned (``struct pidfd_info``).

    Only the fields whose bit is set in *mask* are meaningful; the
    others are ``None``. IDs are as seen from the caller's namespaces.
    Immutable; equal to another ``PidfdInfo`` with the same fields.
    """

    __match_args__ = (
        "mask",
        "pid",
        "tgid",
        "ppid",
        "ruid",
        "rgid",
        "euid",
        "egid",
        "suid",
        "sgid",
        "fsuid",
        "fsgid",
        "cgroupid",
        "exit_code",
        "coredump_mask",
    )

    mask: PidfdInfoFlag
    pid: int | None
    tgid: int | None
    ppid: int | None
    ruid: int | None
    rgid: int | None
    euid: int | None
    egid: int | None
    suid: int | None
    sgid: int | None
    fsuid: int | None
    fsgid: int | None
    cgroupid: int | None
    #: The raw ``wait(2)``-style status word (``PIDFD_INFO_EXIT``, 6.15+).
    exit_code: int | None
    coredump_mask: int | None

    def __init__(
        self,
        mask: PidfdInfoFlag,
        pid: int | None,
        tgid: int | None,
        ppid: int | None,
        ruid: int | None,
        rgid: int | None,
        euid: int | None,
        egid: int | None,
        suid: int | None,
        sgid: int | None,
        fsuid: int | None,
        fsgid: int | None,
        cgroupid: int | None,
        exit_code: int | None,
        coredump_mask: int | None,
    ) -> None:
        set_ = object.__setattr__
        set_(self, "mask", mask)
        set_(self, "pid", pid)
        set_(self, "tgid", tgid)
        set_(self, "ppid", ppid)
        set_(self, "ruid", ruid)
        set_(self, "rgid", rgid)
        set_(self, "euid", euid)
        set_(self, "egid", egid)
        set_(self, "suid", suid)
        set_(self, "sgid", sgid)
        set_(self, "fsuid", fsuid)
        set_(self, "fsgid", fsgid)
        set_(self, "cgroupid", cgroupid)
        set_(self, "exit_code", exit_code)
        set_(self, "coredump_mask", coredump_mask)

    def wait_status(self) -> WaitStatus | None:
        """The exit status as a :class:`~pyclone3.WaitStatus`, if reported."""
        if self.exit_code is None:
            return None
        return WaitStatus.from_wait_status(self.pid or 0, self.exit_code)


def pidfd_get_info(pidfd: FdLike, mask: int = PidfdInfoFlag.PIDFD_INFO_PID) -> PidfdInfo:
    """Ask the kernel about the process behind *pidfd*.

    C call: ``ioctl(pidfd, PIDFD_GET_INFO, &info)`` with ``info.mask = mask``;
    see ``include/uapi/linux/pidfd.h`` (Linux 6.13+). PID and credentials
    always come back; the cgroup id when available; the exit status only
    when ``PIDFD_INFO_EXIT`` is asked (6.15+) and the process has been
    reaped, by anyone.

    Raises:
        ProcessLookupError: the process was reaped and no exit information
            was asked for or kept (``ESRCH``).
        OSError: ``ENOTTY`` before Linux 6.13 or for a file that is not a
            pidfd; ``EBADF``.
        ValueError, TypeError: bad arguments.
    """
    fd = _fd("pidfd", pidfd)
    info = ffi.new("struct pidfd_info *")
    info.mask = _flags("mask", mask, _U64_MAX)
    if lib.sys_pidfd_get_info(fd, info) < 0:
        raise_errno(ffi.errno)
    got = PidfdInfoFlag(info.mask & sum(PidfdInfoFlag))
    has_pid = bool(got & PidfdInfoFlag.PIDFD_INFO_PID)
    has_creds = bool(got & PidfdInfoFlag.PIDFD_INFO_CREDS)

    def pick(present: bool, value: int) -> int | None:
        return int(value) if present else None

    return PidfdInfo(
        mask=got,
        pid=pick(has_pid, info.pid),
        tgid=pick(has_pid, info.tgid),
        ppid=pick(has_pid, info.ppid),
        ruid=pick(has_creds, info.ruid),
        rgid=pick(has_creds, info.rgid),
        euid=pick(has_creds, info.euid),
        egid=pick(has_creds, info.egid),
        suid=pick(has_creds, info.suid),
        sgid=pick(has_creds, info.sgid),
        fsuid=pick(has_creds, info.fsuid),
        fsgid=pick(has_creds, info.fsgid),
        cgroupid=pick(bool(got & PidfdInfoFlag.PIDFD_INFO_CGROUPID), info.cgroupid),
        exit_code=pick(bool(got & PidfdInfoFlag.PIDFD_INFO_EXIT), info.exit_code),
        coredump_mask=pick(bool(got & PidfdInfoFlag.PIDFD_INFO_COREDUMP), info.coredump_mask),
    )


#: Flags that would make a child share this interpreter's memory, threads or
#: signal handlers, or that need user pointers the Python layer does not take.
_CLONE3_UNSAFE = (
    CloneFlag.CLONE_VM
    | CloneFlag.CLONE_THREAD
    | CloneFlag.CLONE_SIGHAND
    | CloneFlag.CLONE_SETTLS
    | CloneFlag.CLONE_PARENT_SETTID
    | CloneFlag.CLONE_CHILD_SETTID
    | CloneFlag.CLONE_CHILD_CLEARTID
)


def clone3(
    *,
    flags: int = 0,
    exit_signal: int = signal.SIGCHLD,
    set_tid: Iterable[int] | None = None,
    cgroup: int | str | os.PathLike[str] | None = None,
) -> tuple[int, int | None]:
    """Create a child process, like :func:`os.fork`, through ``clone3(2)``.

    C call: ``syscall(SYS_clone3, &args, sizeof args)`` wrapped in the
    interpreter's fork hooks (``PyOS_BeforeFork``/``PyOS_AfterFork_*``, as
    :func:`os.fork` does), so the child goes on running Python. Returns
    ``(0, None)`` in the child and ``(pid, pidfd)`` in the parent, where
    *pidfd* is the new child's pidfd (``O_CLOEXEC``, owned by the caller)
    if *flags* has ``CLONE_PIDFD``, else ``None``. Everything
    :func:`os.fork` warns about applies, and more: the C library's own fork
    handlers do not run (``clone3`` has no libc wrapper), so if another
    thread holds a libc lock (``malloc``'s, say) at that instant the child
    can deadlock. Call it where no other thread runs, or use
    :func:`pyclone3.spawn` / :class:`pyclone3.Popen` to run a program.

    *flags*: :class:`~pyclone3.flags.CloneFlag` bits. Flags that would make
    the child share the interpreter's memory, threads or signal handlers
    (``CLONE_VM``, ``CLONE_THREAD``, ``CLONE_SIGHAND``, ``CLONE_SETTLS``,
    ``CLONE_*_SETTID``, ``CLONE_CHILD_CLEARTID``) raise ``ValueError``.
    *exit_signal*: the signal the parent gets when the child exits (0 for
    none; the child must then be waited for with ``__WALL``).
    *set_tid*: the PIDs to give the child in each PID namespace level,
    innermost first (``CAP_SYS_ADMIN`` in those namespaces; Linux 5.5+).
    *cgroup*: a cgroup v2 directory (path or fd) to start the child in;
    sets ``CLONE_INTO_CGROUP`` (Linux 5.7+).

    Raises:
        PermissionError: ``EPERM``, e.g. a namespace flag or *set_tid*
            without privilege, or a seccomp filter.
        OSError: ``ENOSYS`` before Linux 5.3 (or filtered); ``EINVAL`` for
            flag combinations the kernel rejects; ``EAGAIN`` at
            ``RLIMIT_NPROC``; ``EEXIST`` for a *set_tid* PID in use;
            ``ENOMEM``; ``EMFILE``.
        ValueError: unsafe flags, *exit_signal* outside 0..64, more than 32
            *set_tid* entries, ``CLONE_INTO_CGROUP`` without *cgroup*.
        TypeError: an argument has the wrong type.
    """
    flags = _flags("flags", flags, _U64_MAX)
    unsafe = CloneFlag(flags & _CLONE3_UNSAFE)
    if unsafe:
        raise ValueError(
            f"clone3() from Python cannot use {unsafe!r}: the child would share "
            "the interpreter's state; use the spawn API"
        )
    exit_signal = _ranged("exit_signal", exit_signal, 0, _NSIG - 1)
    tids: list[int] = []
    if set_tid is not None:
        if isinstance(set_tid, (str, bytes)):
            raise TypeError("set_tid must be an iterable of ints")
        tids = [_ranged("set_tid item", t, 1, _INT_MAX) for t in set_tid]
        if len(tids) > _MAX_PID_NS_LEVEL:
            raise ValueError(f"set_tid has {len(tids)} entries; at most 32 are allowed")
    if cgroup is None and flags & CloneFlag.CLONE_INTO_CGROUP:
        raise ValueError("CLONE_INTO_CGROUP needs cgroup= (a cgroup v2 directory)")

    cgroup_fd = -1
    close_cgroup = False
    if cgroup is not None:
        if isinstance(cgroup, (str, os.PathLike)):
            cgroup_fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            close_cgroup = True
        else:
            cgroup_fd = _fd("cgroup", cgroup)
        flags |= CloneFlag.CLONE_INTO_CGROUP
    pid = -1
    pidfd = ffi.new("int *", -1)
    try:
        args = ffi.new("struct clone_args *")
        tid_array = ffi.new("int32_t[]", tids) if tids else ffi.NULL
        args.flags = flags
        args.pidfd = int(ffi.cast("uintptr_t", pidfd))
        args.exit_signal = exit_signal
        size = lib.CLONE_ARGS_SIZE_VER0
        if tids:
            args.set_tid = int(ffi.cast("uintptr_t", tid_array))
            args.set_tid_size = len(tids)
            size = lib.CLONE_ARGS_SIZE_VER1
        if cgroup_fd >= 0:
            args.cgroup = cgroup_fd
            size = lib.CLONE_ARGS_SIZE_VER2
        pid = lib.fork_clone3(args, size)
        if pid < 0:
            raise_errno(ffi.errno)
    finally:
        # A CLONE_FILES child shares our fd table: only the parent closes.
        if close_cgroup and not (pid == 0 and flags & CloneFlag.CLONE_FILES):
            os.close(cgroup_fd)
    if pid == 0:
        return 0, None
    return int(pid), (int(pidfd[0]) if flags & CloneFlag.CLONE_PIDFD else None)


def set_child_subreaper(on: bool = True) -> None:
    """``prctl(PR_SET_CHILD_SUBREAPER, on)``: make this process a child subreaper, or stop.

    Orphans anywhere below a subreaper are reparented to it (not to init),
    and it must reap them. A property of the whole process, kept across
    ``execve`` and inherited by no child.
    """
    if lib.pyclone3_set_child_subreaper(1 if on else 0) < 0:
        raise_errno(ffi.errno)


def get_child_subreaper() -> bool:
    """``prctl(PR_GET_CHILD_SUBREAPER)``: whether this process is a child subreaper."""
    value = lib.pyclone3_get_child_subreaper()
    if value < 0:
        raise_errno(ffi.errno)
    return bool(value)
