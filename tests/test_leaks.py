"""No fd leaks across many open/wait/close cycles (counted in /proc/self/fd)."""

from __future__ import annotations

import contextlib
import os

from conftest import fork_child, open_fds, zombies

from pyclone3 import PidFd, WaitTimeout


def test_no_fd_leak_over_1000_spawn_wait_close_cycles() -> None:
    before = len(open_fds())
    for i in range(1000):
        child = fork_child(lambda: 3)
        try:
            status = child.wait(timeout=10) if i % 2 else child.wait()
            assert status.exit_code == 3
        finally:
            child.close()
        if i % 100 == 0:
            assert len(open_fds()) == before
    assert len(open_fds()) == before
    assert zombies() == []


def test_no_fd_leak_over_1000_open_timeout_close_cycles() -> None:
    before = len(open_fds())
    me = os.getpid()
    for _ in range(1000):
        with PidFd.open(me) as own, contextlib.suppress(WaitTimeout, ChildProcessError):
            own.wait(timeout=0)
    assert len(open_fds()) == before
