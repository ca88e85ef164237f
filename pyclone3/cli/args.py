"""The ``pyclone3`` command's arguments: argparse, in timeout(1)'s and util-linux's ways."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import sys

from .. import __version__
from .common import ALIASES, EXIT_FAILURE, NAMESPACES, RUN_DEFAULTS
from .sandbox_args import add_sandbox_arguments

TYPE_CHECKING = False  # typing itself is not imported: the command starts faster
if TYPE_CHECKING:
    from typing import Any, NoReturn


def _signal(value: str) -> signal.Signals:
    name = value.upper()
    if name.isdigit():
        try:
            return signal.Signals(int(name))
        except ValueError:
            raise argparse.ArgumentTypeError(f"no signal numbered {value}") from None
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return signal.Signals[name]
    except KeyError:
        raise argparse.ArgumentTypeError(
            f"unknown signal {value!r} (try TERM, KILL, INT, HUP or a number)"
        ) from None


def _pid(value: str) -> int:
    try:
        pid = int(value)
    except ValueError:
        pid = 0
    if not 0 < pid < 2**31:
        raise argparse.ArgumentTypeError(f"not a process ID: {value!r}")
    return pid


def _process(value: str) -> tuple[int, int | None]:
    """``PID`` or util-linux's ``PID:inode`` (pidfs): a process no PID reuse can stand in for."""
    pid, colon, inode = value.partition(":")
    if not colon:
        return _pid(value), None
    try:
        number = int(inode)
    except ValueError:
        number = 0
    if number <= 0 or number >= 2**64:
        raise argparse.ArgumentTypeError(f"not a process ID or PID:inode: {value!r}")
    return _pid(pid), number


def _duration(value: str) -> float:
    units = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    scale = units.get(value[-1:])
    number = value[:-1] if scale is not None else value
    try:
        seconds = float(number) * (scale or 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a duration: {value!r} (seconds, or a number with s, m, h or d)"
        ) from None
    if math.isnan(seconds) or seconds < 0:
        raise argparse.ArgumentTypeError(f"a duration must be 0 or more, not {value!r}")
    return seconds


def _pids_max(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise argparse.ArgumentTypeError(f"not a number of processes: {value!r}")
    return number


def _memory_max(value: str) -> str:
    from ..scope import Scope  # here, not at the top: only this option needs it

    try:
        Scope.check_limits(memory_max=value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a size: {value!r} (bytes, or a number with K, M, G or T, or max)"
        ) from None
    return value


def _namespaces(value: str) -> int:
    flags = 0
    for name in value.split(","):
        name = ALIASES.get(name, name)
        if name not in NAMESPACES:
            raise argparse.ArgumentTypeError(
                f"unknown namespace {name!r} (choose from {', '.join(NAMESPACES)})"
            )
        flags |= NAMESPACES[name][0]
    return flags


class _AddNamespaces(argparse.Action):
    """Each use adds its namespaces: a repeated --unshare must not drop the earlier ones."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, (getattr(namespace, self.dest) or 0) | int(values))  # type: ignore[call-overload]


def _terminal_columns() -> int:
    """``shutil.get_terminal_size().columns``, without importing shutil."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0 and sys.__stdout__ is not None:
        with contextlib.suppress(ValueError, OSError):  # closed, or not a terminal
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
    return columns or 80


class _Formatter(argparse.HelpFormatter):
    """argparse's help formatter, given its width: it would import shutil for it.

    argparse makes a formatter for each argument added, and the first one
    imported shutil (and zlib, bz2 and lzma with it) for the terminal's
    width: about 1.5 ms of the command's start-up.
    """

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
        **kwargs: Any,
    ) -> None:
        if width is None:
            width = _terminal_columns() - 2
        super().__init__(prog, indent_increment, max_help_position, width, **kwargs)


class _Parser(argparse.ArgumentParser):
    """argparse, with timeout(1)'s conventions for a usage error: one line, exit 125.

    argparse's own exit status, 2, could not be told from a command's. Its
    sub-command parsers are _Parsers too, and all use _Formatter.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_FAILURE, f"{self.prog}: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    """The parser; ``args.action`` names the command (``None`` for none)."""
    parser = _Parser(
        prog="pyclone3",
        description="Run, wait for and inspect processes through pidfds, race-free. "
        "With no command, print the feature report.",
        epilog="Exit status of 'run' follows timeout(1): the command's own status, "
        "124 if it timed out, 128+N if it died of signal N, 125 if pyclone3 failed, "
        "126 if the command cannot be run, 127 if it was not found.",
    )
    parser.add_argument("--version", action="version", version=f"pyclone3 {__version__}")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="action", metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run a command, killing it through its pidfd on timeout",
        description="Run CMD with its pidfd taken at creation. On --timeout, send --signal "
        "through the pidfd (never to a recycled PID), then SIGKILL after --kill-after. "
        "SIGALRM, SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 are passed on to CMD.",
    )
    run.add_argument(
        "-t",
        "--timeout",
        type=_duration,
        metavar="DURATION",
        help="time limit: seconds, or with a suffix s, m, h or d; 0 disables it",
    )
    run.add_argument(
        "-s",
        "--signal",
        type=_signal,
        default=signal.SIGTERM,
        metavar="SIG",
        help="signal to send on timeout (default TERM)",
    )
    run.add_argument(
        "-k",
        "--kill-after",
        type=_duration,
        metavar="DURATION",
        help="also send KILL if CMD still runs this long after the signal (0: never)",
    )
    run.add_argument(
        "--foreground",
        action="store_true",
        help="as timeout(1): do not make a process group of our own, so that CMD, run "
        "from a script, may read from the terminal; signals then reach CMD only, not "
        "the processes it started",
    )
    run.add_argument(
        "--rusage", action="store_true", help="print CMD's resource usage to stderr when it ends"
    )
    run.add_argument(
        "--pdeathsig",
        type=_signal,
        metavar="SIG",
        help="signal CMD gets if pyclone3 itself dies (even of SIGKILL)",
    )
    linux = run.add_argument_group(
        "Linux isolation", "CMD is born with these: it never runs outside them"
    )
    linux.add_argument(
        "--unshare",
        type=_namespaces,
        action=_AddNamespaces,
        metavar="NS[,NS...]",
        help="new namespaces: " + ", ".join(NAMESPACES) + " (as unshare(1))",
    )
    linux.add_argument(
        "-r",
        "--map-root-user",
        action="store_true",
        help="a new user namespace where CMD runs as root, mapped to you (as unshare -r)",
    )
    linux.add_argument(
        "--cgroup", metavar="PATH", help="start CMD inside this cgroup v2 directory"
    )
    linux.add_argument(
        "--enter",
        type=_process,
        metavar="PID[:INODE]",
        help="start CMD inside PID's namespaces (as nsenter -t PID -a)",
    )
    linux.add_argument(
        "--enter-ns",
        type=_namespaces,
        action=_AddNamespaces,
        metavar="NS[,NS...]",
        help="with --enter: only these namespaces (default: each one that differs from ours)",
    )
    linux.add_argument(
        "--kill-tree",
        action="store_true",
        help="signals, on timeout too, go to CMD's whole process tree, and what is left of "
        "it when CMD ends is killed and reaped (CMD gets a new session)",
    )
    add_sandbox_arguments(run)
    scope = run.add_argument_group(
        "Scope",
        "CMD in a cgroup of its own, which nothing it starts can leave (cgroup v2: "
        "'pyclone3 features' says whether one can be made here)",
    )
    scope.add_argument(
        "--scope",
        action="store_true",
        help="signals, on timeout too, reach every process in CMD's scope (daemons and "
        "setsid escapees included); what is left when CMD ends is killed, and the scope "
        "removed. --timeout alone uses a scope too where one can be made, and leaves what "
        "CMD started unless CMD timed out",
    )
    scope.add_argument(
        "--cgroup-parent",
        metavar="PATH",
        help="with --scope: make it below this cgroup v2 directory (default: our own cgroup)",
    )
    scope.add_argument(
        "--pids-max", type=_pids_max, metavar="N", help="with --scope: at most N processes"
    )
    scope.add_argument(
        "--memory-max",
        type=_memory_max,
        metavar="SIZE",
        help="with --scope: at most SIZE of memory (bytes, or with K, M, G, T)",
    )
    run.add_argument(
        "command", nargs=argparse.REMAINDER, metavar="-- CMD ARGS...", help="the command to run"
    )
    # Every run option's default, from the table the fast path uses too.
    run.set_defaults(**RUN_DEFAULTS)

    wait = sub.add_parser(
        "wait",
        help="wait for processes (not only children) to exit",
        description="Wait until every PID has exited, through pidfds: a PID that is reused "
        "meanwhile cannot fool it. Exits 0 (or, with --exit-status, the last PID's status), "
        "124 on timeout, 125 if a PID does not exist or on a usage error.",
    )
    wait.add_argument(
        "pids",
        type=_process,
        nargs="+",
        metavar="PID[:INODE]",
        help="a process ID, or PID:inode (pidfs, Linux 6.9+) to name one process for ever",
    )
    wait.add_argument("-t", "--timeout", type=_duration, metavar="DURATION")
    wait.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="print each exit, as PID:INODE where the kernel has them, with how it ended "
        "where the kernel keeps that",
    )
    wait.add_argument(
        "--exit-status",
        action="store_true",
        help="exit with the last PID's status, as the shell's wait: its exit code, or 128+N "
        "for signal N (Linux 6.15+ keeps it for any process once its parent has reaped it)",
    )

    feats = sub.add_parser("features", help="report what this kernel and sandbox allow")
    feats.add_argument("--json", action="store_true", help="as JSON, for scripts")
    return parser
