"""The kernel's constants as :mod:`enum` types, named exactly as the kernel names them.

Values come from the compiled module, which took them from the build
machine's headers or from pyclone3's fallbacks for older headers. Whether the
*running* kernel understands a flag is a separate question:
:func:`pyclone3.features` answers it.
"""

from __future__ import annotations

import enum

from ._clone3 import lib

__all__ = [
    "ChildCode",
    "CloneFlag",
    "IdType",
    "PidfdFlag",
    "PidfdInfoFlag",
    "PidfdSignalFlag",
    "WaitFlag",
]


class CloneFlag(enum.IntFlag):
    """Flags for ``clone3(2)``'s ``clone_args.flags`` (``CLONE_*``)."""

    CLONE_NEWTIME = lib.CLONE_NEWTIME
    CLONE_VM = lib.CLONE_VM
    CLONE_FS = lib.CLONE_FS
    CLONE_FILES = lib.CLONE_FILES
    CLONE_SIGHAND = lib.CLONE_SIGHAND
    CLONE_PIDFD = lib.CLONE_PIDFD
    CLONE_PTRACE = lib.CLONE_PTRACE
    CLONE_VFORK = lib.CLONE_VFORK
    CLONE_PARENT = lib.CLONE_PARENT
    CLONE_THREAD = lib.CLONE_THREAD
    CLONE_NEWNS = lib.CLONE_NEWNS
    CLONE_SYSVSEM = lib.CLONE_SYSVSEM
    CLONE_SETTLS = lib.CLONE_SETTLS
    CLONE_PARENT_SETTID = lib.CLONE_PARENT_SETTID
    CLONE_CHILD_CLEARTID = lib.CLONE_CHILD_CLEARTID
    CLONE_DETACHED = lib.CLONE_DETACHED
    CLONE_UNTRACED = lib.CLONE_UNTRACED
    CLONE_CHILD_SETTID = lib.CLONE_CHILD_SETTID
    CLONE_NEWCGROUP = lib.CLONE_NEWCGROUP
    CLONE_NEWUTS = lib.CLONE_NEWUTS
    CLONE_NEWIPC = lib.CLONE_NEWIPC
    CLONE_NEWUSER = lib.CLONE_NEWUSER
    CLONE_NEWPID = lib.CLONE_NEWPID
    CLONE_NEWNET = lib.CLONE_NEWNET
    CLONE_IO = lib.CLONE_IO
    CLONE_CLEAR_SIGHAND = lib.CLONE_CLEAR_SIGHAND
    CLONE_INTO_CGROUP = lib.CLONE_INTO_CGROUP


class PidfdFlag(enum.IntFlag):
    """Flags for ``pidfd_open(2)`` (``PIDFD_NONBLOCK`` 5.10+, ``PIDFD_THREAD`` 6.9+)."""

    PIDFD_NONBLOCK = lib.PIDFD_NONBLOCK
    PIDFD_THREAD = lib.PIDFD_THREAD


class PidfdSignalFlag(enum.IntFlag):
    """Flags for ``pidfd_send_signal(2)`` (``PIDFD_SIGNAL_*``, Linux 6.9+)."""

    PIDFD_SIGNAL_THREAD = lib.PIDFD_SIGNAL_THREAD
    PIDFD_SIGNAL_THREAD_GROUP = lib.PIDFD_SIGNAL_THREAD_GROUP
    PIDFD_SIGNAL_PROCESS_GROUP = lib.PIDFD_SIGNAL_PROCESS_GROUP


class PidfdInfoFlag(enum.IntFlag):
    """Bits of ``struct pidfd_info.mask`` for the ``PIDFD_GET_INFO`` ioctl (Linux 6.13+)."""

    PIDFD_INFO_PID = lib.PIDFD_INFO_PID
    PIDFD_INFO_CREDS = lib.PIDFD_INFO_CREDS
    PIDFD_INFO_CGROUPID = lib.PIDFD_INFO_CGROUPID
    PIDFD_INFO_EXIT = lib.PIDFD_INFO_EXIT
    PIDFD_INFO_COREDUMP = lib.PIDFD_INFO_COREDUMP


class IdType(enum.IntEnum):
    """``idtype`` argument of ``waitid(2)`` (``P_PIDFD`` is Linux 5.4+)."""

    P_ALL = lib.P_ALL
    P_PID = lib.P_PID
    P_PGID = lib.P_PGID
    P_PIDFD = lib.P_PIDFD


# The kernel's __WALL, __WCLONE and __WNOTHREAD start with two underscores,
# which a class body would mangle; the functional API keeps them verbatim.
WaitFlag = enum.IntFlag(
    "WaitFlag",
    [
        ("WNOHANG", lib.WNOHANG),
        ("WSTOPPED", lib.WSTOPPED),
        ("WUNTRACED", lib.WUNTRACED),
        ("WEXITED", lib.WEXITED),
        ("WCONTINUED", lib.WCONTINUED),
        ("WNOWAIT", lib.WNOWAIT),
        ("__WNOTHREAD", lib.__WNOTHREAD),
        ("__WALL", lib.__WALL),
        ("__WCLONE", lib.__WCLONE),
    ],
    module=__name__,
)
WaitFlag.__doc__ = "``options`` of ``waitid(2)``: ``W*`` flags, and ``__WALL`` & co."


class ChildCode(enum.IntEnum):
    """``si_code`` values of a ``SIGCHLD`` ``siginfo_t`` as ``waitid(2)`` returns them."""

    CLD_EXITED = lib.CLD_EXITED
    CLD_KILLED = lib.CLD_KILLED
    CLD_DUMPED = lib.CLD_DUMPED
    CLD_TRAPPED = lib.CLD_TRAPPED
    CLD_STOPPED = lib.CLD_STOPPED
    CLD_CONTINUED = lib.CLD_CONTINUED
