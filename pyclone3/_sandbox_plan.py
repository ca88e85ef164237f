"""The sandbox options as the child reads them, and what its failed steps raise.

:func:`sandbox_struct` turns :class:`~pyclone3.sandbox.SandboxOptions` into
``struct pyclone3_sandbox`` (``pyclone3/_clone3.h``): every buffer made
here, the Landlock ruleset built here, so that the child
(``pyclone3/_sandbox_child.c``) only makes syscalls. :func:`sandbox_error`
is the exception for a step the child could not take.
"""

from __future__ import annotations

import errno
import os

from ._capabilities import CAPABILITIES, cap_last_cap
from ._clone3 import ffi, lib
from .sandbox import RLIM_INFINITY, SandboxOptions, rlimit_name

# typing is not imported at run time (see pyclone3/__init__.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["sandbox_error", "sandbox_struct"]

_LONG_BITS = ffi.sizeof("unsigned long") * 8
_KEEPCAPS_DETAIL = 254  # CHILD_KEEPCAPS_DETAIL in _sandbox_child.c


def sandbox_struct(opts: SandboxOptions, keep: list[Any]) -> tuple[Any, int]:
    """The C struct for *opts* (its buffers appended to *keep*) and the Landlock fd, or -1.

    The caller owns the fd and closes it once the child has exec'd or failed.
    """
    sb = ffi.new("struct pyclone3_sandbox *")
    keep.append(sb)
    sb.landlock_fd = -1
    if opts.rlimits:
        limits = ffi.new("struct pyclone3_rlimit[]", [list(r) for r in opts.rlimits])
        keep.append(limits)
        sb.rlimits = limits
        sb.n_rlimits = len(opts.rlimits)
    if opts.nice is not None:
        sb.set_nice = 1
        sb.nice = opts.nice
    if opts.oom_score_adj is not None:
        text = ffi.new("char[]", str(opts.oom_score_adj).encode())
        keep.append(text)
        sb.oom_score_adj = text
        sb.oom_score_adj_len = len(text) - 1
    if opts.cpu_affinity is not None:
        n_longs = max(opts.cpu_affinity) // _LONG_BITS + 1
        words = [0] * n_longs
        for cpu in opts.cpu_affinity:
            words[cpu // _LONG_BITS] |= 1 << (cpu % _LONG_BITS)
        mask = ffi.new("unsigned long[]", words)
        keep.append(mask)
        sb.cpu_mask = mask
        sb.cpu_mask_size = ffi.sizeof(mask)
    if opts.capabilities is not None:
        every = (1 << (cap_last_cap() + 1)) - 1
        kept = sum(1 << cap for cap in opts.capabilities)
        sb.drop_caps = 1
        sb.cap_drop = every & ~kept
    if opts.ambient_capabilities:
        sb.cap_ambient = sum(1 << cap for cap in opts.ambient_capabilities)
    if opts.no_new_privs:
        sb.no_new_privs = 1
    if opts.seccomp is not None:
        program = ffi.new("char[]", opts.seccomp)
        keep.append(program)
        sb.seccomp_filter = program
        sb.seccomp_len = len(opts.seccomp) // 8
    if opts.landlock is not None:
        sb.landlock_fd = opts.landlock.ruleset_fd()
    return sb, sb.landlock_fd


def _limit_text(value: int) -> str:
    return "unlimited" if value == RLIM_INFINITY else str(value)


def _what(step: int, detail: int, err: int, opts: SandboxOptions | None) -> str:
    """The step, as the error message names it, with the privilege the kernel wants."""
    denied = err in (errno.EPERM, errno.EACCES)
    if step == lib.SPAWN_ERR_RLIMIT:
        what = "setting a resource limit"
        if opts is not None and 0 <= detail < len(opts.rlimits):
            resource, soft, hard = opts.rlimits[detail]
            name = rlimit_name(resource)
            what = f"setting {name} to ({_limit_text(soft)}, {_limit_text(hard)})"
            if denied:
                what += ": raising a hard limit needs CAP_SYS_RESOURCE"
                if name == "RLIMIT_NOFILE":
                    what += ", and no limit goes above fs.nr_open"
        return what
    if step == lib.SPAWN_ERR_NICE:
        return "setpriority (nice)" + (": lowering nice needs CAP_SYS_NICE" if denied else "")
    if step == lib.SPAWN_ERR_OOM_SCORE_ADJ:
        return "writing /proc/self/oom_score_adj" + (
            ": lowering it needs CAP_SYS_RESOURCE" if denied else ""
        )
    if step == lib.SPAWN_ERR_AFFINITY:
        return "sched_setaffinity (cpu_affinity)" + (
            ": none of these CPUs is online and allowed here" if err == errno.EINVAL else ""
        )
    if step == lib.SPAWN_ERR_CAPS:
        if detail < len(CAPABILITIES):
            return f"dropping {CAPABILITIES[detail]} from the bounding set" + (
                ": that needs CAP_SETPCAP" if denied else ""
            )
        if detail == _KEEPCAPS_DETAIL:
            return "prctl(PR_SET_KEEPCAPS)"
        return "setting the inheritable capabilities and clearing the ambient set" + (
            ": an ambient capability must be one we hold, and in the bounding set"
            if denied
            else ""
        )
    if step == lib.SPAWN_ERR_AMBIENT:
        name = CAPABILITIES[detail] if detail < len(CAPABILITIES) else f"capability {detail}"
        return f"raising {name} in the ambient set" + (
            ": it must be one we hold, and in the bounding set" if denied else ""
        )
    if step == lib.SPAWN_ERR_NO_NEW_PRIVS:
        return "prctl(PR_SET_NO_NEW_PRIVS)"
    if step == lib.SPAWN_ERR_LANDLOCK:
        return "landlock_restrict_self" + (
            ": Landlock needs no_new_privs=True or CAP_SYS_ADMIN" if denied else ""
        )
    # lib.SPAWN_ERR_SECCOMP
    if denied:
        return "installing the seccomp filter: it needs no_new_privs=True or CAP_SYS_ADMIN"
    if err == errno.EINVAL:
        return "installing the seccomp filter: the kernel found it invalid"
    return "installing the seccomp filter"


def sandbox_error(step: int, err: int, opts: SandboxOptions | None) -> OSError:
    """The exception for sandbox step *step* (with its detail bits) failing with *err*.

    An ``OSError`` of *err*, so ``PermissionError`` for ``EPERM`` and
    ``EACCES``, whose message names the step.
    """
    shift = lib.SPAWN_ERR_DETAIL_SHIFT
    what = _what(step & ((1 << shift) - 1), step >> shift, err, opts)
    return OSError(err, f"{os.strerror(err)} (in the child, before exec: {what})")
