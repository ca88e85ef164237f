"""``pyclone3 run``: ``timeout(1)`` on pidfds.

The command is spawned with its pidfd taken at creation, signals are sent
through that pidfd (and, as timeout(1) does, to the process group it was
born into), and the exit status follows ``timeout(1)``'s conventions.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys

from .._features import features
from .._signals import signal_or_kill
from ..flags import CloneFlag
from ..pidfd import PidFd
from ..popen import PidfdUnavailableError, Popen
from .common import (
    EXIT_CANNOT_INVOKE,
    EXIT_ENOENT,
    EXIT_FAILURE,
    EXIT_TIMEDOUT,
    NAMESPACES,
    SANDBOX_DEFAULTS,
    exit_status,
)

TYPE_CHECKING = False  # typing itself is not imported: the command starts faster
if TYPE_CHECKING:
    from collections.abc import Callable

    from ..scope import Scope
    from .common import Args

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


def cmd_run(args: Args) -> int:
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
    for option, given in (
        ("--cgroup-parent", args.cgroup_parent),
        ("--pids-max", args.pids_max),
        ("--memory-max", args.memory_max),
    ):
        if given is not None and not args.scope:
            print(f"pyclone3 run: {option} needs --scope", file=sys.stderr)
            return EXIT_FAILURE
    if args.scope and (args.kill_tree or args.cgroup is not None):
        print(
            "pyclone3 run: --scope cannot be combined with --kill-tree or --cgroup",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    flags = args.unshare or 0
    uid_map: list[tuple[int, int, int]] | None = None
    gid_map: list[tuple[int, int, int]] | None = None
    if args.map_root_user:
        flags |= CloneFlag.CLONE_NEWUSER
        uid_map = [(0, os.getuid(), 1)]
        gid_map = [(0, os.getgid(), 1)]
    # Handlers first, as timeout(1): a signal that comes while the command
    # is being made waits for it instead of killing us and orphaning it, and
    # a signal we inherited ignored is caught, so exec gives the command its
    # default action back.
    relay = _Relay()
    scope = None
    try:
        scope = _make_scope(args)
        if isinstance(scope, int):
            return scope
        proc = _start(command, args, flags, uid_map, gid_map, scope)
        if isinstance(proc, int):
            return proc
        return _supervise(proc, args, relay, tree=args.kill_tree, scope=scope)
    finally:
        relay.restore()
        if scope is not None and not isinstance(scope, int):
            _end_scope(scope, release=False)  # no-op once _supervise ended it


def _make_scope(args: Args) -> Scope | int | None:
    """The scope CMD runs in: asked for with --scope, or made for --timeout where one can be.

    None for none; an exit status if --scope was asked for and cannot be made.
    """
    auto = bool(
        not args.scope
        and args.timeout
        and not args.kill_tree
        and args.cgroup is None
        and args.enter is None
        and not args.foreground
    )
    if not args.scope and not (auto and features().scope):
        return None
    from ..scope import Scope  # here, not at the top: only scoped runs need it

    try:
        return Scope(args.cgroup_parent, pids_max=args.pids_max, memory_max=args.memory_max)
    except (OSError, ValueError) as exc:
        if auto:
            return None  # timeout(1)'s process group, as without a scope
        if isinstance(exc, OSError) and exc.filename is not None:
            print(f"pyclone3 run: {exc.filename}: {exc.strerror}", file=sys.stderr)
        else:
            print(f"pyclone3 run: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def _end_scope(scope: Scope, *, release: bool) -> None:
    """Kill what is left in CMD's scope and remove it; or, with *release*, let it go on outside."""
    if scope.closed:
        return
    try:
        if release:
            scope.release()
        else:
            scope.close()
    except OSError as exc:
        print(f"pyclone3 run: cannot remove the scope {scope.path}: {exc}", file=sys.stderr)


def _start(
    command: list[str],
    args: Args,
    flags: int,
    uid_map: list[tuple[int, int, int]] | None,
    gid_map: list[tuple[int, int, int]] | None,
    scope: Scope | None,
) -> Popen[bytes] | int:
    """The command started, or the exit status that says why it was not."""
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
        sandbox = {}
        if any(getattr(args, name) for name in SANDBOX_DEFAULTS):
            from .sandbox_args import sandbox_keywords

            sandbox = sandbox_keywords(args)
        if not args.foreground and not args.kill_tree and scope is None:
            _lead_a_process_group()
        return Popen(
            command,
            pdeathsig=args.pdeathsig,
            clone_flags=flags,
            uid_map=uid_map,
            gid_map=gid_map,
            cgroup=args.cgroup,
            kill_tree=bool(args.kill_tree),
            scope=scope,
            start_new_session=bool(args.kill_tree),
            setns=setns,
            **sandbox,
        )
    except ValueError as exc:
        print(f"pyclone3 run: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:
        return _spawn_error(command[0], exc)
    finally:
        if target is not None:
            target.close()


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


class _Relay:
    """Passes the signals in :data:`FORWARDED` on to the command once there is one.

    Installed before the spawn; until :meth:`attach` names where signals
    go, those received wait in order, and are passed on at once then.
    """

    def __init__(self) -> None:
        self._pending: list[int] = []
        self._send: Callable[[int], None] | None = None
        self._previous = {sig: signal.signal(sig, self._received) for sig in FORWARDED}

    def _received(self, signum: int, frame: object) -> None:
        if self._send is None:
            self._pending.append(signum)
        else:
            self._send(signum)

    def attach(self, send: Callable[[int], None]) -> None:
        self._send = send
        while self._pending:
            send(self._pending.pop(0))

    def restore(self) -> None:
        """Give back the handlers we found (idempotent)."""
        previous, self._previous = self._previous, {}
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _supervise(
    proc: Popen[bytes], args: Args, relay: _Relay, *, tree: bool, scope: Scope | None
) -> int:
    group = not tree and not args.foreground and scope is None

    def send(sig: int) -> None:
        if scope is not None and not scope.closed:
            if sig == signal.SIGKILL:
                scope.kill()
            else:
                scope.send_signal(sig)
            return
        if tree:
            proc.kill_tree(sig)
            return
        proc.send_signal(sig)  # through its pidfd: never a recycled PID
        if group:
            _signal_our_group(sig)

    relay.attach(send)
    timed_out = False
    # As timeout(1): a duration of 0 disables the timeout, or the SIGKILL.
    timeout = args.timeout or None
    kill_after = args.kill_after or None
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
        from .. import tree as process_tree

        process_tree.kill_orphans(proc.pid)
    if scope is not None:
        # --scope: nothing is left. --timeout's own scope: a command that timed
        # out leaves nothing either; one that ended in time leaves what it
        # started running, as timeout(1) does, only out of the scope.
        _end_scope(scope, release=not args.scope and not timed_out)
    relay.restore()
    if args.rusage:
        _report_rusage(proc)
    assert proc.returncode is not None
    if timed_out and proc.returncode != -signal.SIGKILL:
        return EXIT_TIMEDOUT
    return exit_status(proc.returncode)
