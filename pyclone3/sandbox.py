"""Sandbox at birth: limits, priority, capabilities, no_new_privs, seccomp and Landlock.

:func:`pyclone3.spawn` and :class:`pyclone3.Popen` take these as keywords;
the child sets them on itself in C, between clone and exec, where
``preexec_fn`` would run Python (and may deadlock a threaded program):

*rlimits*
    ``{resource: (soft, hard)}`` or ``{resource: limit}`` (both the same),
    with *resource* a ``resource.RLIMIT_*`` number or its name (``"NOFILE"``
    or ``"RLIMIT_NOFILE"``) and ``resource.RLIM_INFINITY`` for no limit, as
    ``prlimit(1)`` sets them.
*nice*
    the child's nice value, -20..19 (``setpriority``; lowering it below
    ours needs ``CAP_SYS_NICE``).
*oom_score_adj*
    -1000..1000, written to ``/proc/self/oom_score_adj`` (lowering it needs
    ``CAP_SYS_RESOURCE``).
*cpu_affinity*
    the CPUs the child may run on (``sched_setaffinity``).
*capabilities*
    the capabilities the child may keep, by number or name (``"CAP_KILL"``
    or ``"kill"``): every other one is dropped from its bounding and
    inheritable sets and its ambient set is cleared. After exec a root
    child (no *uid*, or ``uid=0``) holds exactly these, those of ours among
    them, permitted and effective; a child given a non-root *uid* holds
    only its *ambient_capabilities* (and what a file's capabilities give,
    within these). An empty set drops them all. Dropping needs
    ``CAP_SETPCAP``.
*ambient_capabilities*
    capabilities raised in the child's ambient set, as ``setpriv
    --ambient-caps`` and systemd's ``AmbientCapabilities=`` do: a child
    given a non-root *uid* then holds exactly these, permitted, effective
    and ambient, after exec, and its own children keep them across their
    execs (a setuid or file-capability program, or a change of uid, clears
    the ambient set). The child puts them in its inheritable set, sets
    ``PR_SET_KEEPCAPS`` before its uid change (which clears the ambient set
    whatever KEEPCAPS says) and raises them after it. Each must be among
    *capabilities* when both are given (``ValueError``); each must be one
    we hold and in our bounding set, else the spawn raises
    ``PermissionError``. Any other ambient capability is cleared.
*no_new_privs*
    ``PR_SET_NO_NEW_PRIVS``: exec never grants privileges again (setuid
    bits and file capabilities are ignored). Inherited by every descendant.
*seccomp*
    a classic-BPF filter, as bytes of ``struct sock_filter`` or a
    :class:`pyclone3.seccomp.SeccompFilter`, installed with
    ``seccomp(SECCOMP_SET_MODE_FILTER)``. The kernel takes a filter only
    from a process with no_new_privs or ``CAP_SYS_ADMIN``.
*landlock*
    a :class:`pyclone3.landlock.Landlock` ruleset, built in the parent and
    enforced by the child with ``landlock_restrict_self``. Like seccomp, it
    needs no_new_privs or ``CAP_SYS_ADMIN``.

The child takes the steps in this order, each after the setup
``subprocess`` does (fds, cwd, umask, signals, session, process group):
rlimits, nice, oom_score_adj, CPU affinity, capabilities (each may need a
privilege the next step gives up), then the change of groups, gid and uid,
``pdeathsig``, then the ambient capabilities, no_new_privs, Landlock,
``close_fds`` and, last, right before ``execve``, the seccomp filter (it
needs to allow only ``execve``, and ``write`` and ``exit_group`` for a
failure report, not the setup). With *preexec_fn*, it runs after every
step but the seccomp filter. With the options of
:mod:`pyclone3.clone_options`, every step runs in the child's new
namespaces, after its ID maps are written: root of a new user namespace, it
may drop capabilities and install a filter or a ruleset, but what the
kernel checks against the initial user namespace (raising a hard limit,
lowering nice or oom_score_adj) is still refused.

:func:`check_sandbox_options` checks every value in the parent, before any
syscall, raising ``TypeError`` or ``ValueError``. What depends on privilege
or on the system (a hard limit above ours, an offline CPU) is left to the
kernel: the spawn then raises the ``OSError`` the child got
(``PermissionError`` for ``EPERM`` and ``EACCES``), naming the step and, for
a privilege, what the kernel wants. The program never runs half set up.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping

from ._capabilities import CAPABILITIES, capability_number
from ._frozen import Frozen

# typing is not imported at run time (see pyclone3/__init__.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .landlock import Landlock
    from .seccomp import SeccompFilter

__all__ = [
    "CAPABILITIES",
    "RLIM_INFINITY",
    "SandboxOptions",
    "capability_number",
    "check_sandbox_options",
    "rlimit_number",
    "sandbox_if_any",
]

#: No limit, as the kernel has it (Python's ``resource.RLIM_INFINITY``, -1, is taken too).
RLIM_INFINITY = 2**64 - 1

_NICE_MIN, _NICE_MAX = -20, 19
_OOM_MIN, _OOM_MAX = -1000, 1000
_CPU_MAX = 8192  # the kernel's largest NR_CPUS
_BPF_MAXINSNS = 4096
_SOCK_FILTER_SIZE = 8


class SandboxOptions(Frozen):
    """Checked sandbox options, as :func:`check_sandbox_options` returns them.

    *rlimits* holds ``(resource, soft, hard)`` triples with
    :data:`RLIM_INFINITY` for no limit; *capabilities* is the set kept, or
    ``None`` to leave them; *ambient_capabilities* the set raised;
    *seccomp* the filter's bytes. Immutable.
    """

    __match_args__ = (
        "rlimits",
        "nice",
        "oom_score_adj",
        "cpu_affinity",
        "capabilities",
        "no_new_privs",
        "seccomp",
        "landlock",
        "ambient_capabilities",
    )

    rlimits: tuple[tuple[int, int, int], ...] = ()
    nice: int | None = None
    oom_score_adj: int | None = None
    cpu_affinity: frozenset[int] | None = None
    capabilities: frozenset[int] | None = None
    no_new_privs: bool = False
    seccomp: bytes | None = None
    landlock: Landlock | None = None
    ambient_capabilities: frozenset[int] = frozenset()

    def __init__(
        self,
        rlimits: tuple[tuple[int, int, int], ...] = (),
        nice: int | None = None,
        oom_score_adj: int | None = None,
        cpu_affinity: frozenset[int] | None = None,
        capabilities: frozenset[int] | None = None,
        no_new_privs: bool = False,
        seccomp: bytes | None = None,
        landlock: Landlock | None = None,
        ambient_capabilities: frozenset[int] = frozenset(),
    ) -> None:
        set_ = object.__setattr__
        set_(self, "rlimits", rlimits)
        set_(self, "nice", nice)
        set_(self, "oom_score_adj", oom_score_adj)
        set_(self, "cpu_affinity", cpu_affinity)
        set_(self, "capabilities", capabilities)
        set_(self, "no_new_privs", no_new_privs)
        set_(self, "seccomp", seccomp)
        set_(self, "landlock", landlock)
        set_(self, "ambient_capabilities", ambient_capabilities)


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    return operator.index(value)


def _rlimit_names() -> dict[str, int]:
    import resource

    return {
        name[len("RLIMIT_") :]: getattr(resource, name)
        for name in dir(resource)
        if name.startswith("RLIMIT_") and name != "RLIMIT_OFILE"  # BSD's alias of NOFILE
    }


def rlimit_name(number: int) -> str:
    """``"RLIMIT_NOFILE"`` for ``resource.RLIMIT_NOFILE``, and so on."""
    for name, value in _rlimit_names().items():
        if value == number:
            return f"RLIMIT_{name}"
    return f"resource {number}"


def rlimit_number(resource: int | str) -> int:
    """A resource as a ``resource.RLIMIT_*`` number: from the number or the name, any case."""
    names = _rlimit_names()
    if isinstance(resource, str):
        key = resource.upper()
        key = key[len("RLIMIT_") :] if key.startswith("RLIMIT_") else key
        if key not in names:
            raise ValueError(
                f"unknown resource {resource!r}; choose from {', '.join(sorted(names))}"
            )
        return names[key]
    number = _int(resource, "an rlimits key")
    if number not in names.values():
        raise ValueError(f"unknown resource number {number}")
    return number


def _limit(value: Any, what: str) -> int:
    number = _int(value, what)
    if number == -1:  # resource.RLIM_INFINITY as Python has it
        return RLIM_INFINITY
    if not 0 <= number <= RLIM_INFINITY:
        raise ValueError(f"{what} must be 0..2**64-1 or RLIM_INFINITY, got {number}")
    return number


def _check_rlimits(rlimits: Any) -> tuple[tuple[int, int, int], ...]:
    if not isinstance(rlimits, Mapping):
        raise TypeError(f"rlimits must be a mapping, not {type(rlimits).__name__}")
    out: dict[int, tuple[int, int, int]] = {}
    for key, value in rlimits.items():
        number = rlimit_number(key)
        name = rlimit_name(number)
        if number in out:
            raise ValueError(f"rlimits sets {name} twice")
        if isinstance(value, tuple):
            if len(value) != 2:
                raise ValueError(f"{name}: a limit is (soft, hard) or one int, got {value!r}")
            soft = _limit(value[0], f"{name} soft limit")
            hard = _limit(value[1], f"{name} hard limit")
        else:
            soft = hard = _limit(value, f"{name} limit")
        if soft > hard:
            raise ValueError(f"{name}: the soft limit {soft} is above the hard limit {hard}")
        out[number] = (number, soft, hard)
    return tuple(out.values())


def _check_seccomp(value: Any) -> bytes:
    from .seccomp import SeccompFilter

    if isinstance(value, SeccompFilter):
        return value.program
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(
            f"seccomp must be bytes of struct sock_filter or a SeccompFilter, "
            f"not {type(value).__name__}"
        )
    program = bytes(value)
    n, rest = divmod(len(program), _SOCK_FILTER_SIZE)
    if rest or not 1 <= n <= _BPF_MAXINSNS:
        raise ValueError(
            f"seccomp: a filter is 1..{_BPF_MAXINSNS} instructions of {_SOCK_FILTER_SIZE} "
            f"bytes, got {len(program)} bytes"
        )
    return program


def check_sandbox_options(
    *,
    rlimits: Mapping[int | str, int | tuple[int, int]] | None = None,
    nice: int | None = None,
    oom_score_adj: int | None = None,
    cpu_affinity: Iterable[int] | None = None,
    capabilities: Iterable[int | str] | None = None,
    no_new_privs: bool = False,
    seccomp: bytes | SeccompFilter | None = None,
    landlock: Landlock | None = None,
    ambient_capabilities: Iterable[int | str] | None = None,
) -> SandboxOptions:
    """Check the sandbox options (see above) and return them normalized.

    Raises ``TypeError`` for a wrong type and ``ValueError`` for a value no
    kernel takes; makes no syscall beyond reading ``cap_last_cap``.
    """
    limits = _check_rlimits(rlimits) if rlimits is not None else ()
    if nice is not None:
        nice = _int(nice, "nice")
        if not _NICE_MIN <= nice <= _NICE_MAX:
            raise ValueError(f"nice must be {_NICE_MIN}..{_NICE_MAX}, got {nice}")
    if oom_score_adj is not None:
        oom_score_adj = _int(oom_score_adj, "oom_score_adj")
        if not _OOM_MIN <= oom_score_adj <= _OOM_MAX:
            raise ValueError(f"oom_score_adj must be {_OOM_MIN}..{_OOM_MAX}, got {oom_score_adj}")
    cpus = None
    if cpu_affinity is not None:
        if isinstance(cpu_affinity, (str, bytes)) or not isinstance(cpu_affinity, Iterable):
            raise TypeError("cpu_affinity must be an iterable of CPU numbers")
        cpus = frozenset(_int(cpu, "cpu_affinity entries") for cpu in cpu_affinity)
        if not cpus:
            raise ValueError("cpu_affinity must name at least one CPU")
        if min(cpus) < 0 or max(cpus) >= _CPU_MAX:
            raise ValueError(f"cpu_affinity: CPU numbers are 0..{_CPU_MAX - 1}")
    caps = None
    if capabilities is not None:
        if isinstance(capabilities, (str, bytes)) or not isinstance(capabilities, Iterable):
            raise TypeError("capabilities must be an iterable of capability numbers or names")
        caps = frozenset(capability_number(cap) for cap in capabilities)
    ambient: frozenset[int] = frozenset()
    if ambient_capabilities is not None:
        if isinstance(ambient_capabilities, (str, bytes)) or not isinstance(
            ambient_capabilities, Iterable
        ):
            raise TypeError("ambient_capabilities must be an iterable of capabilities")
        ambient = frozenset(capability_number(cap) for cap in ambient_capabilities)
        if caps is not None and not ambient <= caps:
            names = ", ".join(CAPABILITIES[cap] for cap in sorted(ambient - caps))
            raise ValueError(
                f"ambient_capabilities {names} must be among capabilities (the bounding set)"
            )
    if not isinstance(no_new_privs, bool):
        raise TypeError(f"no_new_privs must be a bool, not {type(no_new_privs).__name__}")
    program = _check_seccomp(seccomp) if seccomp is not None else None
    if landlock is not None:
        from .landlock import Landlock

        if not isinstance(landlock, Landlock):
            raise TypeError(f"landlock must be a Landlock, not {type(landlock).__name__}")
    return SandboxOptions(
        limits, nice, oom_score_adj, cpus, caps, no_new_privs, program, landlock, ambient
    )


def sandbox_if_any(
    rlimits: Mapping[int | str, int | tuple[int, int]] | None = None,
    nice: int | None = None,
    oom_score_adj: int | None = None,
    cpu_affinity: Iterable[int] | None = None,
    capabilities: Iterable[int | str] | None = None,
    no_new_privs: bool = False,
    seccomp: bytes | SeccompFilter | None = None,
    landlock: Landlock | None = None,
    ambient_capabilities: Iterable[int | str] | None = None,
) -> SandboxOptions | None:
    """:func:`check_sandbox_options`, or ``None`` when no option is given (no cost then)."""
    if (
        rlimits is None
        and nice is None
        and oom_score_adj is None
        and cpu_affinity is None
        and capabilities is None
        and no_new_privs is False
        and seccomp is None
        and landlock is None
        and ambient_capabilities is None
    ):
        return None
    return check_sandbox_options(
        rlimits=rlimits,
        nice=nice,
        oom_score_adj=oom_score_adj,
        cpu_affinity=cpu_affinity,
        capabilities=capabilities,
        no_new_privs=no_new_privs,
        seccomp=seccomp,
        landlock=landlock,
        ambient_capabilities=ambient_capabilities,
    )
