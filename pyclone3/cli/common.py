"""What the ``pyclone3`` command's parts share: exit statuses, output, defaults.

Loaded on every start of the command, so it imports nothing argparse needs.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys

from ..flags import CloneFlag

TYPE_CHECKING = False  # typing itself is not imported: the command starts faster

#: timeout(1)'s exit statuses.
EXIT_TIMEDOUT = 124
EXIT_FAILURE = 125  # pyclone3 itself failed, or was used wrongly
EXIT_CANNOT_INVOKE = 126
EXIT_ENOENT = 127

#: unshare(1)'s names for the namespace types, and their /proc/PID/ns names.
NAMESPACES = {
    "mount": (CloneFlag.CLONE_NEWNS, "mnt"),
    "uts": (CloneFlag.CLONE_NEWUTS, "uts"),
    "ipc": (CloneFlag.CLONE_NEWIPC, "ipc"),
    "net": (CloneFlag.CLONE_NEWNET, "net"),
    "pid": (CloneFlag.CLONE_NEWPID, "pid"),
    "user": (CloneFlag.CLONE_NEWUSER, "user"),
    "cgroup": (CloneFlag.CLONE_NEWCGROUP, "cgroup"),
    "time": (CloneFlag.CLONE_NEWTIME, "time"),
}


#: nsenter(1) and /proc/PID/ns call the mount namespace "mnt".
ALIASES = {"mnt": "mount"}


#: The sandbox options of ``pyclone3 run`` (:mod:`pyclone3.cli.sandbox_args`), not given.
SANDBOX_DEFAULTS = {
    "rlimit": None,
    "no_new_privs": False,
    "nice": None,
    "oom_score_adj": None,
    "cpu_affinity": None,
    "cap_drop": None,
    "cap_add": None,
    "deny_syscall": None,
    "landlock_ro": None,
    "landlock_rw": None,
    "landlock_bind": None,
    "landlock_connect": None,
}


#: What ``pyclone3 run`` is given when an option is not: the parser's
#: defaults, and the fast path's (see ``pyclone3.cli.main``).
RUN_DEFAULTS = {
    "timeout": None,
    "signal": signal.SIGTERM,
    "kill_after": None,
    "foreground": False,
    "rusage": False,
    "pdeathsig": None,
    "unshare": None,
    "map_root_user": False,
    "cgroup": None,
    "enter": None,
    "enter_ns": None,
    "kill_tree": False,
    **SANDBOX_DEFAULTS,
    "scope": False,
    "cgroup_parent": None,
    "pids_max": None,
    "memory_max": None,
}


def exit_status(returncode: int) -> int:
    """The shell's convention: 128 + N for death by signal N."""
    return 128 - returncode if returncode < 0 else returncode


class OutputError(Exception):
    """Our standard output could not be written (a full disk, a closed pipe)."""


def output(text: object) -> None:
    """Print to stdout now: a write error is ours to report, not the interpreter's at exit."""
    if sys.stdout is None:  # started with fd 1 closed: there is nowhere to write
        raise OutputError(OSError(errno.EBADF, os.strerror(errno.EBADF)))
    try:
        print(text, flush=True)
    except OSError as exc:
        raise OutputError(exc) from None


def output_failed(exc: OSError) -> int:
    # Nothing more may reach the broken stdout: not even the flush at exit.
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    if exc.errno == errno.EPIPE:  # the reader is gone, as `| head` does: quietly
        return 128 + signal.SIGPIPE
    print(f"pyclone3: cannot write the output: {exc.strerror}", file=sys.stderr)
    return EXIT_FAILURE


if TYPE_CHECKING:
    import argparse
    import types

    #: The parsed arguments: argparse's, or the fast path's for a plain ``run``.
    Args = argparse.Namespace | types.SimpleNamespace
