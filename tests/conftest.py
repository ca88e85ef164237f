"""Shared helpers: real children, and a leak check around every test."""

from __future__ import annotations

import contextlib
import os
import resource
import select
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any, Callable

import pytest

import pyclone3
from pyclone3 import CloneFlag, PidFd, syscalls


def users_of(pidfd: PidFd) -> int:
    """How many long uses (a wait, a sweep, an event loop's reader) hold *pidfd*'s fd."""
    from pyclone3.pidfd import state_of

    return len(state_of(pidfd).fd.users)


def open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


def children() -> dict[int, str]:
    """This process's children, zombies included: PID -> state letter."""
    me = os.getpid()
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="ascii", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == me:
            found[int(name)] = fields[0]
    return found


def thread_sleeps() -> int:
    """How many times this thread has gone to sleep (voluntary context switches)."""
    return resource.getrusage(resource.RUSAGE_THREAD).ru_nvcsw


def zombies() -> list[int]:
    """PIDs of this process's children that are zombies."""
    return [pid for pid, state in children().items() if state == "Z"]


@contextlib.contextmanager
def polled_from_another_thread(procs: Sequence[Any]) -> Iterator[None]:
    """Call ``poll()`` on each of *procs*, over and over, in another thread
    while the block runs; fail if any call raised."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def poller() -> None:
        try:
            while not stop.is_set():
                for p in procs:
                    p.poll()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=poller)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive() and not errors, errors


@contextlib.contextmanager
def subprocess_without_posix_spawn() -> Iterator[None]:
    """subprocess as its fork_exec path behaves: 3.13 may take os.posix_spawn
    instead, which refuses an empty argv or env name and fails where glibc's
    clone3 is refused, where its own fork_exec path (and pyclone3) does not."""
    saved = getattr(subprocess, "_USE_POSIX_SPAWN", False)
    subprocess._USE_POSIX_SPAWN = False  # type: ignore[attr-defined]
    try:
        yield
    finally:
        subprocess._USE_POSIX_SPAWN = saved  # type: ignore[attr-defined]


def fork_child(body: Callable[[], int | None], *, exit_signal: int = signal.SIGCHLD) -> PidFd:
    """Run *body* in a child with a pidfd; its return is the exit code.

    The child is made by clone3(CLONE_PIDFD) where the kernel and sandbox
    allow it; else by fork() and pidfd_open (race-free here: nothing else in
    the test may reap it); without pidfds at all, the test is skipped.
    """
    if FEATURES.clone3 and FEATURES.clone_pidfd:
        pid, fd = syscalls.clone3(flags=CloneFlag.CLONE_PIDFD, exit_signal=exit_signal)
    elif FEATURES.pidfd_open and exit_signal == signal.SIGCHLD:
        pid = os.fork()
        fd = syscalls.pidfd_open(pid) if pid else None
    else:
        pytest.skip(f"no way to take a child's pidfd here ({FEATURES.notes})")
    if pid == 0:
        code = 70
        try:
            result = body()
            code = 0 if result is None else result
        except BaseException:  # pragma: no cover - reported through the exit code
            pass
        finally:
            os._exit(code)
    assert fd is not None
    return PidFd(fd, pid=pid)


def spawn(*argv: str) -> PidFd:
    """Run a program; its PidFd.

    Through pyclone3's own spawn core, which runs no Python in the child:
    a fork_child that runs Python to exec can deadlock in malloc when a
    thread of the test (say, one just joined and still exiting) holds a
    libc lock at the fork. fork_child is the fallback on a path without
    a pidfd.
    """
    child = pyclone3.spawn(list(argv))
    if child.pidfd is not None:
        return child.pidfd
    os.waitpid(child.pid, 0)  # pragma: no cover - the vfork path
    return fork_child(lambda: os.execv(argv[0], list(argv)))


def sleeper(seconds: float = 30.0) -> PidFd:
    return spawn("/bin/sleep", str(seconds))


def _end_strays(known: set[int]) -> list[int]:
    """Kill and reap this process's children not in *known*; their PIDs.

    Each is our own unreaped child, so its PID is still its own: killing and
    reaping it by PID cannot reach a stranger.
    """
    strays = sorted(set(children()) - known)
    for pid in strays:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.__dict__.get("__WALL", 0x40000000))
    return strays


#: Every process this run starts inherits ``PYCLONE3_TEST_RUN=<token>`` in its
#: environment, unless a test hands it an environment of its own. That is how
#: no_leaks finds what a test left that is no longer our child: a grandchild,
#: orphaned and re-parented to init or to a subreaper. A nested run (the sandbox
#: and guard tests start pytest in a child) marks its own processes with its own
#: token.
RUN_MARK = "PYCLONE3_TEST_RUN"
_RUN_TOKEN = f"{os.getpid()}-{uuid.uuid4().hex}"
os.environ[RUN_MARK] = _RUN_TOKEN
_RUN_ENTRY = f"{RUN_MARK}={_RUN_TOKEN}".encode()
_TICKS = os.sysconf("SC_CLK_TCK")


def _boot_ticks() -> int:
    """Now, as /proc/PID/stat counts a process's start time (clock ticks since boot)."""
    return int(time.clock_gettime(time.CLOCK_BOOTTIME) * _TICKS)


def _started_at(pid: int) -> int | None:
    """*pid*'s start time in clock ticks since boot, or None if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in "ZX":
        return None
    return int(fields[19])


def _marked(pid: int) -> bool:
    """Whether *pid* carries this run's mark (unreadable: a zombie, or not ours to read)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return _RUN_ENTRY in f.read().split(b"\0")
    except OSError:
        return False


def _end_marked_strays(since: int, grace: float = 0.5) -> list[int]:
    """Kill the live processes that carry this run's mark and started at or
    after *since* (clock ticks since boot); their PIDs.

    They are the ones no longer our children, which _end_strays cannot see.
    Each is given *grace* seconds to end on its own first (one killed by the
    test may still be on its way out), then SIGKILLed through a pidfd taken
    and checked against its start time and mark: never a recycled PID. Where
    pidfd_open is refused (a sandboxed run) it is killed by PID after the
    same check, with the small race that leaves.
    """
    me = os.getpid()
    found: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        pid = int(name)
        started = _started_at(pid)
        # A tick of slack: the test's start is rounded down, the process's too.
        if started is not None and started >= since - 1 and _marked(pid):
            found[pid] = started
    if not found:
        return []
    handles: dict[int, int | None] = {}
    for pid, started in found.items():
        fd = None
        with contextlib.suppress(OSError):
            fd = os.pidfd_open(pid)
        if _started_at(pid) == started and _marked(pid):  # the same process, still live
            handles[pid] = fd
        elif fd is not None:
            os.close(fd)
    deadline = time.monotonic() + grace
    left = []
    try:
        for pid, fd in handles.items():
            while True:
                remaining = deadline - time.monotonic()
                if fd is not None:
                    gone = bool(select.select([fd], [], [], max(remaining, 0))[0])
                else:
                    gone = _started_at(pid) != found[pid]
                    if not gone and remaining > 0:
                        time.sleep(min(0.01, remaining))
                        continue
                break
            if gone:
                continue
            left.append(pid)
            try:
                if fd is not None:
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
                elif _started_at(pid) == found[pid]:
                    os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            except OSError:  # pidfd_send_signal refused by a sandbox
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    finally:
        for fd in handles.values():
            if fd is not None:
                os.close(fd)
    return sorted(left)


@pytest.fixture(autouse=True)
def no_leaks() -> object:
    """Every test must leave no fd, no process, and no subreaper flag behind.

    A child the test left, running or a zombie, is killed and reaped here
    and fails that test: it cannot linger into, and fail, a later one. So
    is a process no longer our child (a grandchild orphaned to init or to
    a subreaper) that carries this run's mark in its environment and
    started during the test (see RUN_MARK): a left child's own children
    are found that way once it is killed. What this cannot see: a process
    started with an environment of its own without the mark (``env={}``);
    one forked from this process that did not exec (its /proc environ is
    the one this process was started with, from before the mark was set);
    one whose environment may not be read (another user's, when the suite
    is not run as root).
    """
    from pyclone3 import tree

    before = open_fds()
    known = set(children())
    since = _boot_ticks()
    subreaper = tree.is_child_subreaper()
    yield
    strays = _end_strays(known)
    descendants = _end_marked_strays(since)
    if tree.is_child_subreaper() != subreaper:
        tree.set_child_subreaper(subreaper)
        raise AssertionError("the test left this process's child-subreaper flag changed")
    leaked = open_fds() - before
    # An fd that is gone again by now was a transient (e.g. a listdir handle).
    leaked = {fd for fd in leaked if os.path.exists(f"/proc/self/fd/{fd}")}
    assert not leaked, f"leaked fds: {sorted(leaked)}"
    assert not strays, f"child processes left behind (killed and reaped now): {strays}"
    assert not descendants, (
        f"processes left behind that are no longer our children (killed now): {descendants}"
    )
    assert zombies() == [], "zombie children left behind"


_CATCHABLE = sorted(set(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP})


def _signal_state() -> tuple[dict[int, Any], set[int]]:
    """This process's Python-level signal handlers, and the main thread's signal mask."""
    handlers: dict[int, Any] = {sig: signal.getsignal(sig) for sig in _CATCHABLE}
    mask: set[int] = set(signal.pthread_sigmask(signal.SIG_BLOCK, []))
    return handlers, mask


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:  # a real-time signal between SIGRTMIN and SIGRTMAX
        return f"signal {sig}"


@pytest.fixture(autouse=True)
def signals_restored() -> object:
    """Every test must leave the signal handlers and the signal mask as it found them.

    A handler or mask a test leaves changed would change what every later
    test sees, and what each child it starts inherits (an ignored signal
    stays ignored across exec). It is put back here, and fails that test.
    """
    handlers, mask = _signal_state()
    yield
    now_handlers, now_mask = _signal_state()
    changed = [
        _signal_name(sig) for sig, handler in handlers.items() if now_handlers[sig] != handler
    ]
    for sig, handler in handlers.items():
        if now_handlers[sig] != handler and handler is not None:
            signal.signal(sig, handler)
    if now_mask != mask:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        changed.append("the signal mask")
    assert not changed, f"the test left signal dispositions changed (restored now): {changed}"


@pytest.fixture
def sigint_default() -> object:
    """SIGINT handled as Python does by default (KeyboardInterrupt) for the test.

    For a test that needs its children to get SIGINT's default action. A
    run started with SIGINT ignored (as ``pytest &`` is in a non-interactive
    shell) passes the ignore on to every child it starts: an ignored signal
    stays ignored across exec, where a handled one becomes SIG_DFL.
    """
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        if previous is not None:  # None: set outside Python, and not ours to put back
            signal.signal(signal.SIGINT, previous)


requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

NOBODY = 65534


def _nobody_cannot_reach() -> str | None:
    """Why a process dropped to nobody could not run this checkout's code, if it cannot.

    A checkout in a private directory (``mktemp -d`` makes one 0700) keeps
    nobody from reading the package and the virtual environment.
    """
    for top in {os.path.dirname(os.path.dirname(os.path.abspath(__file__))), sys.prefix}:
        path = top
        while True:
            mode = os.stat(path).st_mode
            if not mode & 0o001:
                return f"nobody cannot enter {path} (mode {mode & 0o777:o})"
            parent = os.path.dirname(path)
            if parent == path:
                break
            path = parent
    return None


#: Set when tests that drop to nobody cannot run here (see _nobody_cannot_reach).
NOBODY_REASON = _nobody_cannot_reach()


def become_nobody() -> None:
    """In a disposable child: drop to uid/gid nobody if root (else stay as we are).

    A change of credentials makes the process (and its children) undumpable,
    which hides /proc/CHILD/uid_map from it; a login would not be, so the
    dumpable flag is set back.
    """
    if os.geteuid() == 0:
        import ctypes

        os.setgroups([])
        os.setresgid(NOBODY, NOBODY, NOBODY)
        os.setresuid(NOBODY, NOBODY, NOBODY)
        ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE


def _userns_allowed() -> bool:
    try:
        with open("/proc/sys/user/max_user_namespaces") as f:
            return int(f.read()) > 0
    except OSError:
        return False


requires_userns = pytest.mark.skipif(
    not _userns_allowed(), reason="user namespaces are disabled here"
)

FEATURES = pyclone3.features()


def require(name: str) -> pytest.MarkDecorator:
    """Skip unless this kernel and sandbox support feature *name*."""
    return pytest.mark.skipif(
        not getattr(FEATURES, name),
        reason=f"kernel/sandbox lacks {name} ({FEATURES.notes.get(name, 'unsupported')})",
    )


PYTHON = sys.executable


def _threads_work() -> bool:
    import threading

    try:
        thread = threading.Thread(target=lambda: None)
        thread.start()
    except RuntimeError:
        return False
    thread.join()
    return True


def _stdlib_spawns() -> bool:
    import subprocess

    try:
        subprocess.run(["/bin/true"], check=True)
    except OSError:
        return False
    return True


#: False where subprocess itself cannot spawn: on 3.13 its spawn goes
#: through glibc's clone3, which a clone3-EPERM profile refuses.
STDLIB_SPAWNS = _stdlib_spawns()
needs_stdlib_spawn = pytest.mark.skipif(
    not STDLIB_SPAWNS, reason="subprocess cannot spawn here (glibc's clone3 refused with EPERM)"
)

#: False where no thread can be created: glibc 2.34+ creates threads with
#: clone3 and gives up on EPERM, as under old Docker seccomp profiles.
THREADS_WORK = _threads_work()
needs_threads = pytest.mark.skipif(
    not THREADS_WORK, reason="no thread can be created here (clone3 refused with EPERM)"
)


_LEGACY_CLONE_PIDFD: list[bool] = []


def _legacy_clone_pidfd() -> bool:
    """Whether clone(CLONE_PIDFD) works here (qemu-user and some filters refuse it)."""
    if not _LEGACY_CLONE_PIDFD:
        try:
            child = pyclone3.spawn(["/bin/true"], spawn_path="clone")
        except OSError:
            _LEGACY_CLONE_PIDFD.append(False)
        else:
            if child.pidfd is not None:
                if FEATURES.waitid_pidfd:
                    child.pidfd.wait()
                else:
                    os.waitpid(child.pid, 0)
                child.pidfd.close()
            _LEGACY_CLONE_PIDFD.append(child.pidfd is not None)
    return _LEGACY_CLONE_PIDFD[0]


def _path_unavailable(path: str) -> str | None:
    from pyclone3._clone3 import lib

    if path == "clone3" and not (lib.HAS_CLONE3_SPAWN and FEATURES.clone_pidfd):
        return "clone3 spawn unsupported here"
    if path in ("clone", "vfork_pidfd") and not FEATURES.pidfd_open:
        return "no pidfds on this kernel"
    if path == "clone" and not _legacy_clone_pidfd():
        return "clone(CLONE_PIDFD) refused here"
    return None


def _clone_paths() -> tuple[str, ...]:
    from pyclone3._clone3 import lib

    paths = ("clone",) if FEATURES.pidfd_open and _legacy_clone_pidfd() else ()
    if FEATURES.clone3 and FEATURES.clone_pidfd and lib.HAS_CLONE3_SPAWN:
        paths = ("clone3", *paths)
    return paths


#: The clone paths this kernel and sandbox allow (CLONE_PIDFD on clone: 5.2).
CLONE_PATHS = _clone_paths()


requires_clone_options = pytest.mark.skipif(
    not CLONE_PATHS, reason="neither clone3 nor clone(CLONE_PIDFD) is allowed here"
)


@pytest.fixture(params=pyclone3.SPAWN_PATHS)
def spawn_path(request: pytest.FixtureRequest) -> object:
    """Run the test once per spawn path, forced with set_spawn_path."""
    path = request.param
    reason = _path_unavailable(path)
    if reason:
        pytest.skip(reason)
    pyclone3.set_spawn_path(path)
    try:
        yield path
    finally:
        pyclone3.set_spawn_path(None)


def reap_every_child(signum: int, frame: object) -> None:
    """A SIGCHLD handler that reaps whatever it can, as a FastChildWatcher does."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


class malloc_churn:
    """A thread allocating and freeing memory as fast as it can, while in the block."""

    def __enter__(self) -> malloc_churn:
        import threading

        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._churn)
        self._thread.start()
        return self

    def _churn(self) -> None:
        while not self._stop.is_set():
            [bytearray(4096) for _ in range(100)]

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _scope_reason() -> str | None:
    """Why a pyclone3.Scope cannot be tested here, or None."""
    from pyclone3.scope import Scope

    try:
        with Scope() as probe:
            if not os.path.exists(os.path.join(probe.path, "cgroup.kill")):
                return "no cgroup.kill (Linux 5.14+)"
    except (OSError, ValueError) as exc:
        return f"no scope can be made here: {exc}"
    return None


#: Why scope tests are skipped here (no writable cgroup v2), or None.
SCOPE_REASON = _scope_reason()


def scope_dirs() -> set[str]:
    """The cgroup directories the scope tests made below ours (the default parent)."""
    from pyclone3.scope import own_cgroup

    parent = own_cgroup()
    mine = f"pyclone3-{os.getpid()}-"  # not another run's, which may share the parent
    return {name for name in os.listdir(parent) if name.startswith(mine)}


@pytest.fixture
def no_cgroup_left() -> Iterator[None]:
    """The test must leave no cgroup directory behind (removed, and failed, if it does)."""
    from pyclone3.scope import own_cgroup

    before = scope_dirs()
    yield
    left = scope_dirs() - before
    for name in left:
        path = os.path.join(own_cgroup(), name)
        with contextlib.suppress(OSError), open(os.path.join(path, "cgroup.kill"), "w") as f:
            f.write("1")
        for _ in range(100):
            try:
                os.rmdir(path)
                break
            except OSError:
                time.sleep(0.05)
    assert not left, f"cgroup directories left behind (removed now): {sorted(left)}"
