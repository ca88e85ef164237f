"""The error channel: how a child that failed before exec tells the parent, and what it raises.

A child sharing our memory writes its failed step and errno into the spawn
struct; a child in a copy of our memory writes the same two ints into an
error pipe, which reaches EOF when it execs. Either way the parent raises
what ``subprocess`` raises for that step.
"""

from __future__ import annotations

import os
import sys

from ._clone3 import ffi, lib

# typing is not imported at run time (see pyclone3/__init__.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "BAD_REPORT",
    "PREEXEC_REPORT",
    "REPORT_SIZE",
    "SANDBOX_STEPS",
    "STEPS",
    "ChildFailed",
    "child_error",
    "parse_report",
    "read_report",
]


class ChildFailed(Exception):
    """The child was created but failed before or at exec; it has been reaped."""

    def __init__(self, pid: int, step: int, err: int, returncode: int | None) -> None:
        super().__init__(pid, step, err)
        self.pid = pid
        self.step = step
        self.err = err
        self.returncode = returncode


#: What a failing child writes to its error pipe: step, errno.
_REPORT = "int[2]"
REPORT_SIZE = ffi.sizeof(_REPORT)
#: The step of a report that is not one well-formed record.
BAD_REPORT = -1
#: The steps of the child's sandbox (pyclone3/_sandbox_child.c), whose
#: reports _sandbox_plan turns into exceptions.
SANDBOX_STEPS = frozenset(
    {
        lib.SPAWN_ERR_RLIMIT,
        lib.SPAWN_ERR_NICE,
        lib.SPAWN_ERR_OOM_SCORE_ADJ,
        lib.SPAWN_ERR_AFFINITY,
        lib.SPAWN_ERR_CAPS,
        lib.SPAWN_ERR_NO_NEW_PRIVS,
        lib.SPAWN_ERR_LANDLOCK,
        lib.SPAWN_ERR_SECCOMP,
        lib.SPAWN_ERR_AMBIENT,
    }
)
STEPS = SANDBOX_STEPS | {
    lib.SPAWN_ERR_NOEXEC,
    lib.SPAWN_ERR_CHDIR,
    lib.SPAWN_ERR_EXEC,
    lib.SPAWN_ERR_PREEXEC,
    lib.SPAWN_ERR_PIDFD,
    lib.SPAWN_ERR_CGROUP,
    lib.SPAWN_ERR_SETNS,
    lib.SPAWN_ERR_FILES,
}
#: The bits of a step that name it; the sandbox steps carry a detail above
#: them (which rlimit, which capability).
_STEP_MASK = (1 << lib.SPAWN_ERR_DETAIL_SHIFT) - 1
_DETAIL_MAX = 255
_ERRNO_MAX = 4095  # the kernel's errno range
#: Until 3.13, subprocess named the cwd for any failure before exec.
_CWD_FOR_ANY_STEP = sys.version_info < (3, 13)
#: What a forked child writes when preexec_fn raised: made here, not in the child.
PREEXEC_REPORT = ffi.buffer(ffi.new(_REPORT, (lib.SPAWN_ERR_PREEXEC, 0)))[:]


def read_report(errpipe_r: int) -> bytes:
    """Read to EOF (the child exec'd or died) or past one full report."""
    report = b""
    while len(report) <= REPORT_SIZE:
        part = os.read(errpipe_r, 64)
        if not part:
            break
        report += part
    return report


def parse_report(data: bytes) -> tuple[int, int] | None:
    """Read what a child wrote to its error pipe.

    ``None`` if nothing (it exec'd); else ``(step, errno)``; anything but one
    well-formed record (a short or long write, an unknown step, an errno out
    of range) is ``(BAD_REPORT, 0)``, never an exception.
    """
    if not data:
        return None
    if len(data) != REPORT_SIZE:
        return (BAD_REPORT, 0)
    step, err = ffi.from_buffer(_REPORT, data)
    if (
        step < 0
        or step & _STEP_MASK not in STEPS
        or step >> lib.SPAWN_ERR_DETAIL_SHIFT > _DETAIL_MAX
        or not 0 <= err <= _ERRNO_MAX
    ):
        return (BAD_REPORT, 0)
    return (step, err)


def child_error(
    step: int, err: int, cwd: Any, executable: Any, cgroup: Any = None, sandbox: Any = None
) -> BaseException:
    """The exception subprocess raises for a child that failed at *step*.

    As this Python's ``subprocess`` names them: the executable for a failed
    exec, the cwd for a failed ``chdir``, and for the other steps before
    exec the cwd too before 3.13, no filename from 3.13 on. A refused move
    into the cgroup names *cgroup* (the request's ``display_cgroup``, a
    scope's path, or ``cgroup=`` as given if a path). A failed
    sandbox step (*sandbox*: the spawn's
    :class:`~pyclone3.sandbox.SandboxOptions`) raises an ``OSError`` naming it.
    """
    if step > _STEP_MASK or step in SANDBOX_STEPS:
        from ._sandbox_plan import sandbox_error

        return sandbox_error(step, err, sandbox)
    if step == lib.SPAWN_ERR_PREEXEC or step == BAD_REPORT:
        import subprocess

        if step == BAD_REPORT:
            return subprocess.SubprocessError("Bad error report from the child process")
        return subprocess.SubprocessError("Exception occurred in preexec_fn.")
    if step == lib.SPAWN_ERR_EXEC:
        filename = executable
    elif step == lib.SPAWN_ERR_CGROUP:
        filename = cgroup if not isinstance(cgroup, int) else None  # an fd names nothing
    elif step == lib.SPAWN_ERR_CHDIR or (step == lib.SPAWN_ERR_NOEXEC and _CWD_FOR_ANY_STEP):
        filename = cwd
    else:
        filename = None
    return OSError(err, os.strerror(err), filename)
