"""Spawn-time Linux options: namespaces, ``exit_signal``, ``set_tid``, cgroup, ID maps, setns.

:func:`pyclone3.spawn` and :class:`pyclone3.Popen` take these as keywords;
:func:`check_clone_options` checks and normalizes them before any syscall.
It raises ``ValueError`` naming the rule for every combination the kernel
would refuse with ``EINVAL`` whoever asks; what depends on privilege or on
the system's state (``EPERM``, ``ENOSPC``, ``EUSERS``, ``EEXIST``, ``EBUSY``)
is left to the kernel, whose ``OSError`` the spawn raises.

The rules, each with the kernel code it mirrors (``kernel/fork.c``,
``kernel/pid.c``; versions are where the rule first applies):

``spawn-flags``
    Only the flags in :data:`SPAWN_CLONE_FLAGS` are options; the spawn core
    owns the rest (``CLONE_VM``, ``CLONE_VFORK``, ``CLONE_PIDFD``,
    ``CLONE_INTO_CGROUP``, ...). Unknown bits are refused as ``clone3`` does.
``parent-exit-signal`` (5.3, ``clone3_args_valid``)
    ``CLONE_PARENT`` takes no exit signal (or 0): the child inherits the
    caller's.
``parent-of-init`` (2.6.36, ``copy_process``)
    The init of a PID namespace (PID 1) may not use ``CLONE_PARENT``.
``exit-signal-range`` (5.3, ``clone3_args_valid``)
    An exit signal is 0 (none) to 64 (``_NSIG``).
``set-tid-size`` (5.5, ``copy_clone_args_from_user``)
    ``set_tid`` holds at most 32 (``MAX_PID_NS_LEVEL``) PIDs; an empty one
    means none.
``set-tid-depth`` (5.5, ``alloc_pid``)
    No more PIDs than the child has PID namespace levels: this process's
    depth + 1, + 1 more with ``CLONE_NEWPID``.
``set-tid-range`` (5.5, ``alloc_pid``)
    Each PID is at least 1 and below ``/proc/sys/kernel/pid_max``.
``set-tid-newpid`` (5.5, ``alloc_pid``)
    In a new PID namespace the first process is PID 1: with
    ``CLONE_NEWPID``, ``set_tid[0]`` must be 1.

pyclone3's own rules, for options it adds on top of ``clone3``:

``maps-need-newuser``
    ``uid_map``, ``gid_map`` and ``setgroups`` describe a new user
    namespace: they need ``CLONE_NEWUSER``.
``setns-flags``
    ``setns`` enters namespaces by type: a non-empty set of ``CLONE_NEW*``
    flags, none of which the child also creates.
``no-preexec``
    None of these options combine with *preexec_fn* (the ``fork()`` path
    cannot create namespaces) or with ``create_pidfd=False``.

``CLONE_NEWTIME`` and ``uid_map``/``gid_map`` make the spawn core create
the child without shared memory (the kernel refuses ``CLONE_VM`` with
``CLONE_NEWTIME``, and the child must wait for its maps); ``set_tid`` and
``CLONE_NEWTIME`` need ``clone3``; the other flags also work on the
``clone`` path. On a kernel or sandbox without ``CLONE_INTO_CGROUP`` the
child moves itself into *cgroup* (by writing to its ``cgroup.procs``) before
anything of the program runs, or the spawn fails: it never runs outside.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence

from ._frozen import Frozen
from .flags import CloneFlag

# typing is not imported at run time (see pyclone3/__init__.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Union

    from .pidfd import PidFd

__all__ = [
    "NAMESPACE_FLAGS",
    "SPAWN_CLONE_FLAGS",
    "CloneOptions",
    "IdMap",
    "check_clone_options",
    "options_if_any",
    "options_with_cgroup",
]

#: The ``CLONE_NEW*`` flags, one per namespace type.
NAMESPACE_FLAGS = (
    CloneFlag.CLONE_NEWNS
    | CloneFlag.CLONE_NEWPID
    | CloneFlag.CLONE_NEWNET
    | CloneFlag.CLONE_NEWUTS
    | CloneFlag.CLONE_NEWIPC
    | CloneFlag.CLONE_NEWUSER
    | CloneFlag.CLONE_NEWCGROUP
    | CloneFlag.CLONE_NEWTIME
)

#: The clone flags a spawn accepts as options.
SPAWN_CLONE_FLAGS = NAMESPACE_FLAGS | CloneFlag.CLONE_PARENT | CloneFlag.CLONE_CLEAR_SIGHAND

# Plain ints: ~ on an IntFlag complements within its known bits only.
_SPAWN_BITS = int(SPAWN_CLONE_FLAGS)
_NS_BITS = int(NAMESPACE_FLAGS)
_CLEAR_SIGHAND = int(CloneFlag.CLONE_CLEAR_SIGHAND)
MAX_PID_NS_LEVEL = 32
_INT_MAX = 2**31 - 1
_NSIG = 64

if TYPE_CHECKING:
    #: An ID map, as text in the kernel's ``/proc/PID/uid_map`` format or as
    #: ``(ID inside, ID outside, count)`` lines.
    IdMap = Union[str, Sequence[tuple[int, int, int]]]
    StrOrBytesPath = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]
else:
    # The type aliases are made on first use, and typing imported then.
    _ALIASES = ("IdMap", "StrOrBytesPath")

    def __getattr__(name: str) -> Any:
        if name not in _ALIASES:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        from typing import Union

        globals().update(
            IdMap=Union[str, Sequence[tuple[int, int, int]]],
            StrOrBytesPath=Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"],
        )
        return globals()[name]

    def __dir__() -> list[str]:
        return sorted({*globals(), *_ALIASES})


class CloneOptions(Frozen):
    """Checked spawn-time options, as :func:`check_clone_options` returns them.

    Immutable; equal to another ``CloneOptions`` with the same fields.
    """

    __match_args__ = (
        "flags",
        "exit_signal",
        "set_tid",
        "cgroup",
        "uid_map",
        "gid_map",
        "setgroups",
        "setns",
    )

    flags: int = 0
    exit_signal: int = signal.SIGCHLD
    set_tid: tuple[int, ...] = ()
    cgroup: StrOrBytesPath | int | None = None
    uid_map: bytes | None = None
    gid_map: bytes | None = None
    setgroups: bool | None = None
    setns: tuple[PidFd | int, int] | None = None

    def __init__(
        self,
        flags: int = 0,
        exit_signal: int = signal.SIGCHLD,
        set_tid: tuple[int, ...] = (),
        cgroup: StrOrBytesPath | int | None = None,
        uid_map: bytes | None = None,
        gid_map: bytes | None = None,
        setgroups: bool | None = None,
        setns: tuple[PidFd | int, int] | None = None,
    ) -> None:
        set_ = object.__setattr__
        set_(self, "flags", flags)
        set_(self, "exit_signal", exit_signal)
        set_(self, "set_tid", set_tid)
        set_(self, "cgroup", cgroup)
        set_(self, "uid_map", uid_map)
        set_(self, "gid_map", gid_map)
        set_(self, "setgroups", setgroups)
        set_(self, "setns", setns)

    @property
    def any(self) -> bool:
        """True if any option is set (the plain spawn is the default)."""
        return bool(
            self.flags
            or self.exit_signal != signal.SIGCHLD
            or self.set_tid
            or self.cgroup is not None
            or self.uid_map is not None
            or self.gid_map is not None
            or self.setgroups is not None
            or self.setns is not None
        )

    @property
    def needs_clone3(self) -> bool:
        """Only ``clone3`` can do this (``set_tid``, ``CLONE_NEWTIME``)."""
        return bool(self.set_tid) or bool(self.flags & CloneFlag.CLONE_NEWTIME)

    @property
    def needs_clone(self) -> bool:
        """Only the ``clone`` family can do this (namespaces, ``CLONE_PARENT``, exit signal)."""
        return (
            bool(self.flags & ~_CLEAR_SIGHAND)
            or self.exit_signal != signal.SIGCHLD
            or self.needs_clone3
        )

    @property
    def fork_like(self) -> bool:
        """The child must not share our memory (ID maps to wait for, or a time namespace)."""
        time_ns = CloneFlag.CLONE_NEWTIME
        return (
            self.uid_map is not None
            or self.gid_map is not None
            or self.setgroups is not None
            or bool(self.flags & time_ns)
            or (self.setns is not None and bool(self.setns[1] & time_ns))
        )


def _flag_names(bits: int) -> str:
    return "|".join(f.name or hex(f.value) for f in CloneFlag if f.value & bits) or hex(bits)


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    return int(value)


def pid_ns_depth() -> int:
    """How deep this process's PID namespace is (0: the initial one)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"NSpid:"):
                    return len(line.split()) - 2
    except OSError:
        pass
    return 0


def _pid_max() -> int:
    try:
        with open("/proc/sys/kernel/pid_max", "rb") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1 << 22  # PID_MAX_LIMIT on 64-bit


def format_id_map(value: IdMap, what: str) -> bytes:
    """An ID map as the kernel reads it from ``/proc/PID/uid_map``: one line per range."""
    if isinstance(value, str):
        lines = [line.split() for line in value.strip().splitlines()]
        try:
            triples = [tuple(int(x) for x in line) for line in lines]
        except ValueError:
            raise ValueError(f"{what}: each line must be three integers") from None
    elif isinstance(value, (bytes, bytearray)):
        raise TypeError(f"{what} must be a str or a sequence of (inside, outside, count)")
    else:
        triples = [tuple(t) for t in value]
    if not triples:
        raise ValueError(f"{what} must not be empty")
    if len(triples) > 340:  # the kernel's limit since 4.15
        raise ValueError(f"{what} has {len(triples)} lines; the kernel takes at most 340")
    out = []
    for t in triples:
        if len(t) != 3:
            raise ValueError(f"{what}: each entry is (inside, outside, count), got {t!r}")
        inside, outside, count = (_int(x, what) for x in t)
        if min(inside, outside) < 0 or count < 1 or max(inside, outside) + count >= 1 << 32:
            raise ValueError(f"{what}: entry {t!r} is out of range")
        out.append(f"{inside} {outside} {count}\n")
    return "".join(out).encode()


def check_clone_options(
    clone_flags: int = 0,
    *,
    exit_signal: int | None = None,
    set_tid: Sequence[int] | None = None,
    cgroup: StrOrBytesPath | int | None = None,
    uid_map: IdMap | None = None,
    gid_map: IdMap | None = None,
    setgroups: bool | None = None,
    setns: tuple[PidFd | int, int] | None = None,
) -> CloneOptions:
    """Check spawn-time options against the rules above; return them normalized.

    Raises ``TypeError`` for a wrong type and ``ValueError`` naming the rule
    (``[rule-name]``) for a combination the kernel refuses; makes no syscall
    beyond reading ``/proc`` for the ``set_tid`` rules.
    """
    flags = _int(clone_flags, "clone_flags")
    if flags & ~_SPAWN_BITS:
        raise ValueError(
            f"[spawn-flags] {_flag_names(flags & ~_SPAWN_BITS)} is not a spawn option; "
            f"choose from {_flag_names(SPAWN_CLONE_FLAGS)}"
        )
    parent = bool(flags & CloneFlag.CLONE_PARENT)
    if exit_signal is None:
        sig = 0 if parent else int(signal.SIGCHLD)
    else:
        sig = _int(exit_signal, "exit_signal")
        if not 0 <= sig <= _NSIG:
            raise ValueError(f"[exit-signal-range] exit_signal must be 0..{_NSIG}, got {sig}")
        if parent and sig:
            raise ValueError(
                "[parent-exit-signal] CLONE_PARENT takes no exit_signal (or 0): "
                "the child inherits this process's"
            )
    if parent and os.getpid() == 1:
        raise ValueError("[parent-of-init] a PID namespace's init may not use CLONE_PARENT")

    tids: tuple[int, ...] = ()
    if set_tid is not None:
        if isinstance(set_tid, (str, bytes)) or not isinstance(set_tid, Sequence):
            raise TypeError("set_tid must be a sequence of PIDs, innermost namespace first")
        tids = tuple(_int(t, "set_tid entries") for t in set_tid)
        if len(tids) > MAX_PID_NS_LEVEL:
            raise ValueError(
                f"[set-tid-size] set_tid holds at most {MAX_PID_NS_LEVEL} PIDs, got {len(tids)}"
            )
        levels = pid_ns_depth() + 1 + (1 if flags & CloneFlag.CLONE_NEWPID else 0)
        if tids and len(tids) > levels:
            raise ValueError(
                f"[set-tid-depth] set_tid has {len(tids)} PIDs but the child has "
                f"{levels} PID namespace level(s)"
            )
        pid_max = _pid_max()
        for tid in tids:
            if not 1 <= tid < pid_max:
                raise ValueError(f"[set-tid-range] set_tid PID {tid} is not in 1..{pid_max - 1}")
        if tids and flags & CloneFlag.CLONE_NEWPID and tids[0] != 1:
            raise ValueError(
                "[set-tid-newpid] with CLONE_NEWPID the child is PID 1 of its namespace: "
                f"set_tid[0] must be 1, got {tids[0]}"
            )

    if cgroup is not None:
        if isinstance(cgroup, bool):
            raise TypeError("cgroup must be a path or a directory fd, not bool")
        if isinstance(cgroup, int):
            if not 0 <= cgroup <= _INT_MAX:
                raise ValueError(f"cgroup fd must be in 0..{_INT_MAX}, got {cgroup}")
        elif not isinstance(cgroup, (str, bytes, os.PathLike)):
            raise TypeError(
                f"cgroup must be a path or a directory fd, not {type(cgroup).__name__}"
            )

    newuser = bool(flags & CloneFlag.CLONE_NEWUSER)
    umap = format_id_map(uid_map, "uid_map") if uid_map is not None else None
    gmap = format_id_map(gid_map, "gid_map") if gid_map is not None else None
    if setgroups is not None and not isinstance(setgroups, bool):
        raise TypeError(f"setgroups must be a bool or None, not {type(setgroups).__name__}")
    if (umap is not None or gmap is not None or setgroups is not None) and not newuser:
        raise ValueError("[maps-need-newuser] uid_map, gid_map and setgroups need CLONE_NEWUSER")
    if gmap is not None and setgroups is None:
        setgroups = False  # as unshare -r: required for an unprivileged gid_map

    if setns is not None:
        if not isinstance(setns, tuple) or len(setns) != 2:
            raise TypeError("setns must be a (pidfd, namespace flags) pair")
        target, ns_flags = setns
        ns_flags = _int(ns_flags, "setns flags")
        if not isinstance(target, int) or isinstance(target, bool):
            from .pidfd import PidFd

            if not isinstance(target, PidFd):
                raise TypeError(
                    f"setns target must be a PidFd or an fd, not {type(target).__name__}"
                )
        if not ns_flags or ns_flags & ~_NS_BITS:
            raise ValueError(
                "[setns-flags] setns flags must be a non-empty set of "
                + _flag_names(NAMESPACE_FLAGS)
            )
        if ns_flags & flags:
            raise ValueError(
                f"[setns-flags] {_flag_names(ns_flags & flags)} both created and entered"
            )
        setns = (target, ns_flags)

    return CloneOptions(flags, sig, tids, cgroup, umap, gmap, setgroups, setns)


def options_if_any(
    clone_flags: int = 0,
    exit_signal: int | None = None,
    set_tid: Sequence[int] | None = None,
    cgroup: StrOrBytesPath | int | None = None,
    uid_map: IdMap | None = None,
    gid_map: IdMap | None = None,
    setgroups: bool | None = None,
    setns: tuple[PidFd | int, int] | None = None,
) -> CloneOptions | None:
    """:func:`check_clone_options`, or ``None`` when every option has its default.

    The plain spawn, the common case, then costs no check (about 3 us). The
    arguments may be given by position too (in this order), which is cheaper
    on a path taken by every spawn.
    """
    if (
        type(clone_flags) is int
        and not clone_flags
        and exit_signal is None
        and set_tid is None
        and cgroup is None
        and uid_map is None
        and gid_map is None
        and setgroups is None
        and setns is None
    ):
        return None
    return check_clone_options(
        clone_flags,
        exit_signal=exit_signal,
        set_tid=set_tid,
        cgroup=cgroup,
        uid_map=uid_map,
        gid_map=gid_map,
        setgroups=setgroups,
        setns=setns,
    )


def options_with_cgroup(options: CloneOptions | None, cgroup: int) -> CloneOptions:
    """*options* (``None``: the defaults) with the child born into the cgroup of fd *cgroup*.

    How a :class:`pyclone3.Scope` puts its child into its cgroup: the fd is
    checked here as ``cgroup=`` is.
    """
    if options is None:
        options = CloneOptions()
    elif options.cgroup is not None:
        raise ValueError("[scope-cgroup] scope and cgroup cannot be combined: a scope is a cgroup")
    checked = check_clone_options(cgroup=cgroup).cgroup
    return CloneOptions(
        options.flags,
        options.exit_signal,
        options.set_tid,
        checked,
        options.uid_map,
        options.gid_map,
        options.setgroups,
        options.setns,
    )
