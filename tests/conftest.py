"""Shared helpers: real children, and a leak check around every test."""

from __future__ import annotations

import os
import signal
import sys
from typing import Callable

import pytest

import pyclone3
from pyclone3 import CloneFlag, PidFd, syscalls


def open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


def zombies() -> list[int]:
    """PIDs of this process's children that are zombies."""
    me = os.getpid()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="ascii", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] == "Z" and int(fields[1]) == me:
            found.append(int(name))
    return found


def fork_child(body: Callable[[], int | None], *, exit_signal: int = signal.SIGCHLD) -> PidFd:
    """Run *body* in a child made by clone3(CLONE_PIDFD); its return is the exit code."""
    pid, fd = syscalls.clone3(flags=CloneFlag.CLONE_PIDFD, exit_signal=exit_signal)
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
    """Run a program in a clone3(CLONE_PIDFD) child."""
    return fork_child(lambda: os.execv(argv[0], list(argv)))


def sleeper(seconds: float = 30.0) -> PidFd:
    return spawn("/bin/sleep", str(seconds))


@pytest.fixture(autouse=True)
def no_leaks() -> object:
    """Every test must leave no fd and no zombie child behind."""
    before = open_fds()
    yield
    leaked = open_fds() - before
    # An fd that is gone again by now was a transient (e.g. a listdir handle).
    leaked = {fd for fd in leaked if os.path.exists(f"/proc/self/fd/{fd}")}
    assert not leaked, f"leaked fds: {sorted(leaked)}"
    assert zombies() == [], "zombie children left behind"


requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

FEATURES = pyclone3.features()


def require(name: str) -> pytest.MarkDecorator:
    """Skip unless this kernel and sandbox support feature *name*."""
    return pytest.mark.skipif(
        not getattr(FEATURES, name),
        reason=f"kernel/sandbox lacks {name} ({FEATURES.notes.get(name, 'unsupported')})",
    )


PYTHON = sys.executable


def _path_unavailable(path: str) -> str | None:
    from pyclone3._clone3 import lib

    if path == "clone3" and not (lib.HAS_CLONE3_SPAWN and FEATURES.clone_pidfd):
        return "clone3 spawn unsupported here"
    if path in ("clone", "vfork_pidfd") and not FEATURES.pidfd_open:
        return "no pidfds on this kernel"
    return None


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
