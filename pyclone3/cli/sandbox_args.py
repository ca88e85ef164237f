"""``pyclone3 run``'s sandbox options, in the conventions of prlimit(1), setpriv(1) and bwrap(1).

Each value is checked as it is parsed: a bad one is argparse's one-line
usage error, exit status 125. :func:`sandbox_keywords` turns the parsed
arguments into ``Popen``'s keywords (:mod:`pyclone3.sandbox`).
"""

from __future__ import annotations

import argparse
import errno

TYPE_CHECKING = False  # typing itself is not imported: the command starts faster
if TYPE_CHECKING:
    from typing import Any

    from .common import Args

__all__ = ["add_sandbox_arguments", "sandbox_keywords"]

_SIZES = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_UNLIMITED = ("unlimited", "infinity")


def _limit(value: str) -> int:
    """A limit as prlimit(1) writes it: a number, with K, M, G or T (binary), or unlimited."""
    if value.lower() in _UNLIMITED:
        return -1
    scale = _SIZES.get(value[-1:].upper())
    digits = value[:-1] if scale is not None else value
    if not digits.isdigit():
        raise argparse.ArgumentTypeError(f"not a limit: {value!r} (a number, 1G, or unlimited)")
    return int(digits) * (scale or 1)


def _rlimit(value: str) -> tuple[int, int | tuple[int, int]]:
    """``NAME=LIMIT`` or ``NAME=SOFT:HARD``, as prlimit's ``--nofile=SOFT:HARD``."""
    from ..sandbox import rlimit_number

    name, equals, limits = value.partition("=")
    if not equals:
        raise argparse.ArgumentTypeError(f"not NAME=LIMIT or NAME=SOFT:HARD: {value!r}")
    try:
        resource = rlimit_number(name)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    soft, colon, hard = limits.partition(":")
    if not colon:
        return resource, _limit(soft)
    pair = (_limit(soft), _limit(hard))
    if (pair[0] if pair[0] >= 0 else 2**64) > (pair[1] if pair[1] >= 0 else 2**64):
        raise argparse.ArgumentTypeError(f"{value!r}: the soft limit is above the hard limit")
    return resource, pair


def _ranged(low: int, high: int, what: str) -> Any:
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            number = high + 1
        if not low <= number <= high:
            raise argparse.ArgumentTypeError(f"{what} must be {low}..{high}, not {value!r}")
        return number

    return parse


def _cpus(value: str) -> frozenset[int]:
    """A CPU list as taskset -c takes it: ``0-3,6``."""
    cpus: set[int] = set()
    for part in value.split(","):
        first, dash, last = part.partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise argparse.ArgumentTypeError(f"not a CPU list: {value!r} (as 0-3,6)")
        cpus.update(range(int(first), int(last if dash else first) + 1))
    if not cpus or max(cpus) >= 8192:
        raise argparse.ArgumentTypeError(f"not a CPU list: {value!r} (CPUs 0..8191)")
    return frozenset(cpus)


def _caps(value: str) -> frozenset[int] | None:
    """``all``, or capabilities by name with or without ``CAP_``, comma-separated."""
    from ..sandbox import capability_number

    if value.lower() == "all":
        return None
    try:
        return frozenset(capability_number(name) for name in value.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _deny(value: str) -> tuple[str, int | str]:
    """``NAME``, ``NAME:ERRNO`` (a number or a name as ``EACCES``) or ``NAME:kill``."""
    from ..seccomp import KILL, syscall_number

    name, colon, action = value.partition(":")
    try:
        syscall_number(name)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not colon:
        return name, errno.EPERM
    if action.lower() == KILL:
        return name, KILL
    number = int(action) if action.isdigit() else getattr(errno, action.upper(), None)
    if not isinstance(number, int) or not 1 <= number <= 4095:
        raise argparse.ArgumentTypeError(f"not an errno or 'kill': {action!r}")
    return name, number


def _port(value: str) -> int:
    """A TCP port, 0..65535."""
    if not value.isdigit() or int(value) > 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port: {value!r} (0..65535)")
    return int(value)


def add_sandbox_arguments(parser: argparse.ArgumentParser) -> None:
    """The sandbox group of ``pyclone3 run``."""
    group = parser.add_argument_group(
        "sandbox",
        "set by CMD's process on itself just before exec, in this order; "
        "--deny-syscall and --landlock-* imply --no-new-privs, as bwrap does",
    )
    add = group.add_argument
    add(
        "--rlimit",
        type=_rlimit,
        action="append",
        metavar="NAME=SOFT[:HARD]",
        help="a resource limit (NOFILE=256, AS=1G, CORE=0:unlimited), as prlimit(1)",
    )
    add("--nice", type=_ranged(-20, 19, "--nice"), metavar="N", help="CMD's nice value")
    add(
        "--oom-score-adj",
        type=_ranged(-1000, 1000, "--oom-score-adj"),
        metavar="N",
        help="CMD's oom_score_adj (-1000..1000)",
    )
    add("--cpus", dest="cpu_affinity", type=_cpus, metavar="LIST", help="CPUs, as taskset -c")
    add(
        "--cap-drop",
        type=_caps,
        action="append",
        metavar="all|CAP,...",
        help="drop capabilities from CMD's bounding set (and clear its ambient set)",
    )
    add(
        "--cap-add",
        type=_caps,
        action="append",
        metavar="CAP,...",
        help="with --cap-drop all: the capabilities CMD keeps",
    )
    add("--no-new-privs", action="store_true", help="exec never grants privileges again")
    add(
        "--deny-syscall",
        type=_deny,
        action="append",
        metavar="NAME[:ERRNO]",
        help="a seccomp filter fails this syscall with ERRNO (default EPERM), or kills (:kill)",
    )
    add(
        "--landlock-ro",
        action="append",
        metavar="PATH",
        help="Landlock: CMD may read only beneath these paths (and the --landlock-rw ones)",
    )
    add(
        "--landlock-rw",
        action="append",
        metavar="PATH",
        help="Landlock: CMD may write only beneath these paths",
    )
    add(
        "--landlock-bind",
        type=_port,
        action="append",
        metavar="PORT",
        help="Landlock: CMD may bind only these TCP ports (Linux 6.7, Landlock ABI 4)",
    )
    add(
        "--landlock-connect",
        type=_port,
        action="append",
        metavar="PORT",
        help="Landlock: CMD may connect only to these TCP ports (Linux 6.7, Landlock ABI 4)",
    )


def sandbox_keywords(args: Args) -> dict[str, Any]:
    """``Popen``'s sandbox keywords for the parsed *args*; empty when none was given."""
    keywords: dict[str, Any] = {}
    if args.rlimit:
        keywords["rlimits"] = dict(args.rlimit)
    for name in ("nice", "oom_score_adj", "cpu_affinity"):
        if getattr(args, name) is not None:
            keywords[name] = getattr(args, name)
    if args.cap_drop or args.cap_add:
        from .._capabilities import cap_last_cap

        kept = set(range(cap_last_cap() + 1))
        for dropped in args.cap_drop or ():
            kept -= kept if dropped is None else dropped
        for added in args.cap_add or ():
            kept |= set(range(cap_last_cap() + 1)) if added is None else added
        keywords["capabilities"] = frozenset(kept)
    nnp = bool(args.no_new_privs)
    if args.deny_syscall:
        from ..seccomp import deny

        keywords["seccomp"] = deny(dict(args.deny_syscall))
        nnp = True
    paths = args.landlock_ro or args.landlock_rw
    if paths or args.landlock_bind or args.landlock_connect:
        from ..landlock import Landlock

        # Ports alone leave the filesystem alone; a path restricts writing everywhere else.
        keywords["landlock"] = Landlock(
            ro=args.landlock_ro,
            rw=(args.landlock_rw or ()) if paths else None,
            bind_tcp=args.landlock_bind,
            connect_tcp=args.landlock_connect,
        )
        nnp = True
    if nnp:
        keywords["no_new_privs"] = True
    return keywords
