"""Popen(scope=...), spawn(scope=...), run(scope=True): a child's whole scope, for real."""

from __future__ import annotations

import os
import select
import subprocess
import time

import pytest
from conftest import SCOPE_REASON, scope_dirs

import pyclone3
from pyclone3 import Popen, Scope

pytestmark = [
    pytest.mark.skipif(SCOPE_REASON is not None, reason=SCOPE_REASON or ""),
    pytest.mark.usefixtures("no_cgroup_left"),
]

#: Prints "ready" once a double-forked daemon and a setsid escapee run, then sleeps.
DAEMONS = (
    "(setsid sleep 300 </dev/null >/dev/null 2>&1 &); "
    "setsid sleep 300 </dev/null >/dev/null 2>&1 & "
    "echo ready; exec sleep 300"
)


def cgroup_of(pid: int) -> str:
    with open(f"/proc/{pid}/cgroup") as f:
        return next(line[3:].strip() for line in f if line.startswith("0::"))


def test_the_child_is_born_in_a_scope_of_its_own() -> None:
    with Popen(["/bin/sh", "-c", DAEMONS], stdout=subprocess.PIPE, scope=True) as p:
        assert p.stdout is not None and p.stdout.readline() == b"ready\n"
        made = p.scope
        assert made is not None and os.path.basename(made.path) in cgroup_of(p.pid)
        assert len(made.members()) == 3
        p.kill()
        assert p.wait(10) == -9
        # Removed once the child was reaped and the rest was gone.
        assert made.closed and not os.path.exists(made.path)


def test_terminate_reaches_every_member() -> None:
    with Popen(["/bin/sh", "-c", DAEMONS], stdout=subprocess.PIPE, scope=True) as p:
        assert p.stdout is not None and p.stdout.readline() == b"ready\n"
        made = p.scope
        assert made is not None
        handles = made.pidfds()
        try:
            p.terminate()
            assert p.wait(10) == -15
            for h in handles:
                # Readable once the member has exited; whether this kernel (or
                # sandbox) can also say how is not what this test is about.
                assert select.select([h], [], [], 10)[0] == [h], h
        finally:
            for h in handles:
                h.close()


def test_run_timeout_kills_the_whole_scope() -> None:
    """The grandchild holds the output pipe: without the scope it would go on running."""
    began = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        pyclone3.run(
            ["/bin/sh", "-c", "sleep 300 & exec sleep 300"],
            capture_output=True,
            timeout=0.5,
            scope=True,
        )
    assert time.monotonic() - began < 5


def test_communicate_does_not_hang_on_a_daemon_once_the_scope_is_killed() -> None:
    with Popen(
        ["/bin/sh", "-c", "(sleep 300 &); echo hi"], stdout=subprocess.PIPE, scope=True
    ) as p:
        assert p.wait(10) == 0  # the daemon still holds stdout
        made = p.scope
        assert made is not None and not made.closed and len(made.members()) == 1
        p.kill()
        out, _ = p.communicate(timeout=10)
        assert out == b"hi\n"
    assert made.closed


def test_an_empty_scope_goes_when_the_child_is_reaped() -> None:
    p = Popen(["/bin/true"], scope=True)
    assert p.wait() == 0
    assert p.scope is not None and p.scope.closed


def test_the_end_of_the_with_block_kills_what_is_left() -> None:
    with Popen(["/bin/sh", "-c", "(sleep 300 &)"], scope=True) as p:
        assert p.wait(10) == 0
        made = p.scope
        assert made is not None and made.populated
    assert made.closed and not os.path.exists(made.path)


def test_a_failed_spawn_leaves_no_scope() -> None:
    before = scope_dirs()
    with pytest.raises(FileNotFoundError):
        Popen(["/nonexistent/program"], scope=True)
    with pytest.raises(ValueError, match="preexec_fn"):
        Popen(["/bin/true"], scope=True, preexec_fn=lambda: None)
    assert scope_dirs() == before


def test_a_given_scope_is_the_callers() -> None:
    with Scope() as given:
        with Popen(["/bin/sh", "-c", "(sleep 300 &)"], scope=given) as p:
            assert p.wait(10) == 0
            assert p.scope is given
        assert not given.closed and len(given.members()) == 1  # not ours to end
        child = pyclone3.spawn(["/bin/true"], scope=given)
        assert child.pidfd is not None
        with child.pidfd:
            assert child.pidfd.wait(10).returncode == 0
    assert given.closed


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"scope": "yes"}, TypeError),
        ({"scope": True, "cgroup": "/sys/fs/cgroup"}, ValueError),
        ({"scope": True, "kill_tree": True}, ValueError),
    ],
)
def test_bad_scope_arguments(kwargs: dict[str, object], error: type[Exception]) -> None:
    before = scope_dirs()
    with pytest.raises(error):
        Popen(["/bin/true"], **kwargs)  # type: ignore[call-overload]
    assert scope_dirs() == before


def test_spawn_takes_only_a_scope_object() -> None:
    with pytest.raises(TypeError, match=r"make one with pyclone3\.Scope"):
        pyclone3.spawn(["/bin/true"], scope=True)  # type: ignore[arg-type]
    with Scope() as given, pytest.raises(ValueError, match="scope-cgroup"):
        pyclone3.spawn(["/bin/true"], scope=given, cgroup=given.path)


def test_without_a_scope_nothing_changes() -> None:
    with Popen(["/bin/true"]) as p:
        assert p.scope is None
        assert p.wait() == 0
