"""The ``pyclone3`` command: ``run``, ``wait`` and ``features``.

``pyclone3 run`` is ``timeout(1)`` on pidfds: the command is spawned with its
pidfd taken at creation, signals are sent through that pidfd, and the exit
status follows ``timeout(1)``'s conventions.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import math
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from . import __version__
from ._features import features
from ._signals import signal_or_kill
from .flags import CloneFlag
from .pidfd import PidFd
from .popen import PidfdUnavailableError, Popen
from .status import WaitStatus

TYPE_CHECKING = False  # typing itself is not imported: the command starts faster
if TYPE_CHECKING:
    from typing import Any, NoReturn

#: timeout(1)'s exit statuses.
EXIT_TIMEDOUT = 124
EXIT_FAILURE = 125  # pyclone3 itself failed
EXIT_CANNOT_INVOKE = 126
EXIT_ENOENT = 127

#: Signals pyclone3 run passes on to the command when it receives them.
FORWARDED = (
    signal.SIGALRM,
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)


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


def _name(handle: PidFd) -> str:
    """How -v names a process: ``PID:inode`` where pidfs gives the inode, else ``PID``."""
    inode = handle.inode
    return f"{handle.pid}:{inode}" if inode is not None else str(handle.pid)


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
_ALIASES = {"mnt": "mount"}


def _namespaces(value: str) -> int:
    flags = 0
    for name in value.split(","):
        name = _ALIASES.get(name, name)
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


def _differing_namespaces(pid: int) -> int:
    """The namespace types in which *pid* is not where we are (nsenter --all)."""
    flags = 0
    for flag, proc_name in NAMESPACES.values():
        try:
            theirs = os.readlink(f"/proc/{pid}/ns/{proc_name}")
            ours = os.readlink(f"/proc/self/ns/{proc_name}")
        except FileNotFoundError:
            continue  # no such namespace type on this kernel
        if theirs != ours:
            flags |= flag
    return flags


def _exit_status(returncode: int) -> int:
    """The shell's convention: 128 + N for death by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def _report_rusage(proc: Popen[bytes]) -> None:
    try:
        status = proc.pidfd.status
    except PidfdUnavailableError:  # the vfork path: no pidfd, no rusage
        status = None
    ru = status.rusage if status is not None else None
    if ru is None:
        print("pyclone3: no resource usage was reported", file=sys.stderr)
        return
    print(
        f"pyclone3: user {ru.ru_utime:.3f}s system {ru.ru_stime:.3f}s "
        f"max RSS {ru.ru_maxrss} KiB, {ru.ru_minflt} minor / {ru.ru_majflt} major faults, "
        f"{ru.ru_nvcsw} voluntary / {ru.ru_nivcsw} involuntary context switches",
        file=sys.stderr,
    )


def cmd_run(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        print(
            "pyclone3 run: no command given (pyclone3 run [OPTIONS] -- CMD ARGS...)",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    if args.enter_ns is not None and args.enter is None:
        print("pyclone3 run: --enter-ns needs --enter PID", file=sys.stderr)
        return EXIT_FAILURE
    flags = args.unshare or 0
    uid_map: list[tuple[int, int, int]] | None = None
    gid_map: list[tuple[int, int, int]] | None = None
    if args.map_root_user:
        flags |= CloneFlag.CLONE_NEWUSER
        uid_map = [(0, os.getuid(), 1)]
        gid_map = [(0, os.getgid(), 1)]
    setns: tuple[PidFd | int, int] | None = None
    target = None
    try:
        if args.enter is not None:
            pid, inode = args.enter
            try:
                target = PidFd.open(pid, inode=inode)
            except OSError as exc:
                given = f"{pid}:{inode}" if inode is not None else str(pid)
                print(f"pyclone3 run: cannot enter {given}: {exc.strerror}", file=sys.stderr)
                return EXIT_FAILURE
            # Read by PID from /proc: the pidfd, open meanwhile, keeps the PID its own.
            enter = args.enter_ns if args.enter_ns is not None else _differing_namespaces(pid)
            if enter:
                setns = (target, enter)
        if not args.foreground and not args.kill_tree:
            _lead_a_process_group()
        proc = Popen(
            command,
            pdeathsig=args.pdeathsig,
            clone_flags=flags,
            uid_map=uid_map,
            gid_map=gid_map,
            cgroup=args.cgroup,
            kill_tree=bool(args.kill_tree),
            start_new_session=bool(args.kill_tree),
            setns=setns,
        )
    except ValueError as exc:
        print(f"pyclone3 run: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:
        return _spawn_error(command[0], exc)
    finally:
        if target is not None:
            target.close()

    return _supervise(proc, args, tree=args.kill_tree)


def _spawn_error(program: str, exc: OSError) -> int:
    if exc.filename is not None and os.fsdecode(exc.filename) != program:
        # Not the program's: the cgroup, a namespace, an ID map.
        print(f"pyclone3 run: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILURE
    if exc.filename is None:
        print(f"pyclone3 run: cannot create the process: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILURE
    if isinstance(exc, FileNotFoundError):
        print(f"pyclone3 run: {program}: {exc.strerror}", file=sys.stderr)
        return EXIT_ENOENT
    if isinstance(exc, PermissionError):
        print(f"pyclone3 run: {program}: {exc.strerror}", file=sys.stderr)
        return EXIT_CANNOT_INVOKE
    # timeout(1): an exec failure other than ENOENT is 126 (ELOOP, ENAMETOOLONG, ...).
    print(f"pyclone3 run: cannot run {program}: {exc.strerror}", file=sys.stderr)
    return EXIT_CANNOT_INVOKE


def _lead_a_process_group() -> None:
    """Become the leader of a process group of our own, as timeout(1) does.

    The command is born into it, and so is everything it starts that does
    not leave: on timeout the whole group is signalled. From an interactive
    shell we lead our job's group already, and the command keeps the
    terminal. Refused for a session leader, which is then left as it is.
    """
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)


def _signal_our_group(sig: int) -> None:
    """*sig* to every other process of our process group (``--foreground`` not given).

    We ignore it meanwhile, as timeout(1) does, so it does not come back to
    us as a signal to forward. SIGKILL cannot be ignored: it goes member by
    member, each named by a pidfd checked to be in our group once open.
    """
    if sig == signal.SIGKILL:
        _kill_group_members()
        return
    previous = signal.signal(sig, signal.SIG_IGN)
    try:
        with contextlib.suppress(ProcessLookupError):
            os.kill(0, sig)
    finally:
        signal.signal(sig, previous)


def _kill_group_members() -> None:
    me = os.getpid()
    group = os.getpgid(0)
    held = features().pidfd_open
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        pid = int(entry)
        try:
            if os.getpgid(pid) != group:
                continue
            if not held:  # no pidfds (before 5.3): by PID, as kill(0) would reach it
                os.kill(pid, signal.SIGKILL)
                continue
            with PidFd.open(pid) as member:
                if os.getpgid(pid) == group:  # still ours, now that the pidfd holds it
                    signal_or_kill(member, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            continue  # gone, or (a setuid member) not ours to signal


def _supervise(proc: Popen[bytes], args: argparse.Namespace, *, tree: bool) -> int:
    group = not tree and not args.foreground

    def send(sig: int) -> None:
        if tree:
            proc.kill_tree(sig)
            return
        proc.send_signal(sig)  # through its pidfd: never a recycled PID
        if group:
            _signal_our_group(sig)

    def forward(signum: int, frame: object) -> None:
        send(signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    timed_out = False
    # As timeout(1): a duration of 0 disables the timeout, or the SIGKILL.
    timeout = args.timeout or None
    kill_after = args.kill_after or None
    try:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            send(args.signal)
            if args.signal not in (signal.SIGKILL, signal.SIGCONT):
                send(signal.SIGCONT)  # a stopped command must wake to act on it, as timeout(1)
            try:
                proc.wait(timeout=kill_after)
            except subprocess.TimeoutExpired:
                send(signal.SIGKILL)
                proc.wait()
        if tree:
            # What the command left behind (reparented to us, the subreaper)
            # goes with it, as the help promises.
            from . import tree as process_tree

            process_tree.kill_orphans(proc.pid)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if args.rusage:
        _report_rusage(proc)
    assert proc.returncode is not None
    if timed_out and proc.returncode != -signal.SIGKILL:
        return EXIT_TIMEDOUT
    return _exit_status(proc.returncode)


def cmd_wait(args: argparse.Namespace) -> int:
    handles: list[PidFd] = []
    try:
        for pid, inode in args.pids:
            given = f"{pid}:{inode}" if inode is not None else str(pid)
            try:
                handles.append(PidFd.open(pid, inode=inode))
            except ProcessLookupError:
                print(f"pyclone3 wait: no process {given}", file=sys.stderr)
                return EXIT_FAILURE
            except OSError as exc:
                print(f"pyclone3 wait: cannot watch {given}: {exc.strerror}", file=sys.stderr)
                return EXIT_FAILURE
        names = {h: _name(h) for h in handles} if args.verbose else {}
        deadline = None if args.timeout is None else time.monotonic() + args.timeout
        poller = select.poll()
        by_fd = {h.fileno(): h for h in handles}
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        while by_fd:
            ready = poller.poll(_ms_left(deadline))
            if not ready:
                left = " ".join(str(h.pid) for h in by_fd.values())
                print(
                    f"pyclone3 wait: still running after {args.timeout}s: {left}", file=sys.stderr
                )
                return EXIT_TIMEDOUT
            for fd, _ in ready:
                handle = by_fd.pop(fd)
                poller.unregister(fd)
                if args.verbose:
                    _output(f"{names[handle]} {_how_it_ended(handle)}")
        if not args.exit_status:
            return 0
        return _last_status(handles[-1], deadline, args.timeout)
    finally:
        for handle in handles:
            handle.close()


def _ms_left(deadline: float | None) -> int | None:
    if deadline is None:
        return None
    return max(math.ceil(min((deadline - time.monotonic()) * 1000, 2**31 - 1)), 0)


def _known_status(handle: PidFd) -> WaitStatus | None:
    """How an exited process ended, if the kernel keeps it now (PIDFD_INFO_EXIT, 6.15+)."""
    try:
        return handle.try_wait()
    except ChildProcessError:  # an older kernel: it exited, nobody can say how
        return None


def _how_it_ended(handle: PidFd) -> str:
    status = _known_status(handle)
    if status is None:
        return "exited"
    return _describe(status)


def _describe(status: WaitStatus) -> str:
    if status.signal is not None:
        return f"was killed by {signal.Signals(status.signal).name}"
    return f"exited with status {status.exit_code}"


def _last_status(handle: PidFd, deadline: float | None, timeout: float | None) -> int:
    """--exit-status: the last process's status, as the shell's ``wait`` gives it.

    The kernel records it when the process's parent reaps it, so a zombie is
    waited for until then, within the same time limit.
    """
    try:
        left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        status = handle.wait(left)
    except TimeoutError:
        print(
            f"pyclone3 wait: {handle.pid} has exited but its parent has not reaped it "
            f"after {timeout}s: no status yet",
            file=sys.stderr,
        )
        return EXIT_TIMEDOUT
    except ChildProcessError:
        print(
            f"pyclone3 wait: cannot tell how {handle.pid} ended: this kernel does not keep "
            "the status of a process that is not our child (PIDFD_INFO_EXIT, Linux 6.15+)",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    code = status.returncode
    assert code is not None  # wait() returns an end, not a stop
    return _exit_status(code)


def cmd_features(args: argparse.Namespace) -> int:
    report = features()
    _output(report.to_json() if args.json else report)
    return 0


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
    run.add_argument(
        "command", nargs=argparse.REMAINDER, metavar="-- CMD ARGS...", help="the command to run"
    )
    run.set_defaults(func=cmd_run)

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
    wait.set_defaults(func=cmd_wait)

    feats = sub.add_parser("features", help="report what this kernel and sandbox allow")
    feats.add_argument("--json", action="store_true", help="as JSON, for scripts")
    feats.set_defaults(func=cmd_features)
    return parser


class _OutputError(Exception):
    """Our standard output could not be written (a full disk, a closed pipe)."""


def _output(text: object) -> None:
    """Print to stdout now: a write error is ours to report, not the interpreter's at exit."""
    if sys.stdout is None:  # started with fd 1 closed: there is nowhere to write
        raise _OutputError(OSError(errno.EBADF, os.strerror(errno.EBADF)))
    try:
        print(text, flush=True)
    except OSError as exc:
        raise _OutputError(exc) from None


def _output_failed(exc: OSError) -> int:
    # Nothing more may reach the broken stdout: not even the flush at exit.
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    if exc.errno == errno.EPIPE:  # the reader is gone, as `| head` does: quietly
        return 128 + signal.SIGPIPE
    print(f"pyclone3: cannot write the output: {exc.strerror}", file=sys.stderr)
    return EXIT_FAILURE


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.action is None:  # `python -m pyclone3`: the feature report
            return cmd_features(args)
        return int(args.func(args))
    except _OutputError as failed:
        return _output_failed(failed.args[0])
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
