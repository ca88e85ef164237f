"""Scope: a cgroup of a child's own, killed and waited for as a whole, on the real kernel.

Each test leaves no cgroup directory behind (checked around every test, as
conftest's no_leaks checks fds and processes).
"""

from __future__ import annotations

import os
import select
import time
from typing import Any

import pytest
from conftest import NOBODY, SCOPE_REASON, become_nobody, fork_child, scope_dirs

import pyclone3
from pyclone3 import scope as scope_module
from pyclone3.scope import ControllerNotEnabledError, Scope, ScopeTimeout, own_cgroup

pytestmark = [
    pytest.mark.skipif(SCOPE_REASON is not None, reason=SCOPE_REASON or ""),
    pytest.mark.usefixtures("no_cgroup_left"),
]


def start(scope: Scope, script: str, *expect: bytes) -> pyclone3.SpawnedChild:
    """Run *script* with sh in *scope*; return once it printed each line in *expect*."""
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        child = pyclone3.spawn(["/bin/sh", "-c", script], cgroup=scope.fileno(), stdout=w)
    finally:
        os.close(w)
    seen = b""
    try:
        while not all(line in seen.split(b"\n") for line in expect):
            chunk = os.read(r, 4096)
            assert chunk, f"the script ended before printing {expect}: {seen!r}"
            seen += chunk
    finally:
        os.close(r)
    return child


def reap(child: pyclone3.SpawnedChild) -> int:
    assert child.pidfd is not None
    with child.pidfd:
        return child.pidfd.wait(10).returncode


#: A double-forked daemon, a setsid escapee that ignores SIGTERM, and the shell itself.
ESCAPEES = (
    "(setsid sleep 300 </dev/null >/dev/null 2>&1 &); "
    "setsid sh -c 'trap \"\" TERM; echo ignoring; exec sleep 300' &"
    "echo ready; exec sleep 300"
)


# ---- arguments, checked before anything is made ------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"parent": 3}, TypeError),
        ({"name": "a/b"}, ValueError),
        ({"name": ".."}, ValueError),
        ({"name": 5}, TypeError),
        ({"pids_max": -1}, ValueError),
        ({"pids_max": 1.5}, TypeError),
        ({"pids_max": True}, TypeError),
        ({"memory_max": "12Q"}, ValueError),
        ({"memory_max": -5}, ValueError),
        ({"memory_max": 1.0}, TypeError),
        ({"cpu_max": 0.001}, ValueError),
        ({"cpu_max": float("nan")}, ValueError),
        ({"cpu_max": "half"}, TypeError),
    ],
)
def test_bad_arguments_are_refused_before_a_cgroup_is_made(
    kwargs: dict[str, Any], error: type[Exception]
) -> None:
    before = scope_dirs()
    with pytest.raises(error):
        Scope(**kwargs)
    assert scope_dirs() == before


def test_parent_must_be_a_cgroup2_directory(tmp_path: Any) -> None:
    with pytest.raises(ValueError, match="not a directory of a cgroup v2"):
        Scope(tmp_path)
    with pytest.raises(FileNotFoundError):
        Scope("/nonexistent/cgroup")


# ---- what it is -----------------------------------------------------------------


def test_a_scope_is_a_fresh_cgroup_below_ours_removed_on_close() -> None:
    name = f"pyclone3-{os.getpid()}-named"
    with Scope(name=name) as scope:
        assert scope.path == os.path.join(own_cgroup(), name)
        assert os.path.isdir(scope.path)
        assert os.get_inheritable(scope.fileno()) is False
        assert scope.members() == [] and not scope.populated
        with pytest.raises(FileExistsError):
            Scope(name=name)
    assert scope.closed and not os.path.exists(scope.path)
    with pytest.raises(ValueError, match="closed"):
        scope.fileno()
    scope.close()  # again: nothing to do


def test_members_and_pidfds_name_the_processes_inside() -> None:
    with Scope() as scope:
        child = start(scope, "sleep 300 & echo ready; exec sleep 300", b"ready")
        members = scope.members()
        assert child.pid in members and len(members) == 2
        handles = scope.pidfds()
        try:
            assert sorted(h.pid for h in handles) == members
        finally:
            for h in handles:
                h.close()
        scope.kill()
        assert reap(child) == -9
        scope.wait(10)
        assert scope.members() == []


# ---- kill and wait -----------------------------------------------------------------


def test_kill_reaches_daemons_escapees_and_signal_ignorers() -> None:
    with Scope() as scope:
        child = start(scope, ESCAPEES, b"ready", b"ignoring")
        handles = scope.pidfds()
        try:
            assert len(handles) == 3
            scope.terminate()  # SIGTERM: all but the one that ignores it end
            reap(child)
            for h in handles:
                if h.pid != child.pid:
                    select.select([h], [], [], 5)
            assert len(scope.members()) == 1
            scope.kill()
            scope.wait(10)
            assert all(not h.is_alive() for h in handles)
        finally:
            for h in handles:
                h.close()
        assert scope.members() == [] and not scope.populated


def test_kill_of_200_members() -> None:
    with Scope() as scope:
        script = "for i in $(seq 200); do sleep 300 & done; echo ready; wait"
        child = start(scope, script, b"ready")
        assert len(scope.members()) == 201
        scope.kill()
        scope.wait(20)
        assert reap(child) == -9
    assert not os.path.exists(scope.path)


def _count_polls(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record each poll(2) a scope's cgroup.events is waited for with."""
    from pyclone3 import _cgroup

    calls: list[float] = []
    real = _cgroup.poll_fd

    def counting(*args: Any) -> int:
        calls.append(time.monotonic())
        return real(*args)  # type: ignore[no-any-return]

    monkeypatch.setattr(_cgroup, "poll_fd", counting)
    return calls


def test_wait_sleeps_until_the_last_member_is_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    """One poll(2) until the scope empties: the grandchild outlives the child, and
    wait() must neither return when the child exits nor wake up in between."""
    with Scope() as scope:
        child = start(scope, "(sleep 0.6; true) & echo ready; exec sleep 0.1", b"ready")
        polls = _count_polls(monkeypatch)
        began = time.monotonic()
        scope.wait(10)
        took = time.monotonic() - began
        assert reap(child) == 0
        assert 0.4 < took < 5, took
        assert scope.members() == []
        # One sleep, plus one for the exit of the child, which changes nothing visible here
        # on some kernels (cgroup.events notifies only when populated flips).
        assert len(polls) <= 2, polls


def test_wait_times_out_and_leaves_the_scope_alone() -> None:
    with Scope() as scope:
        child = start(scope, "echo ready; exec sleep 300", b"ready")
        began = time.monotonic()
        with pytest.raises(ScopeTimeout) as info:
            scope.wait(0.2)
        assert 0.15 < time.monotonic() - began < 3
        assert info.value.path == scope.path and isinstance(info.value, TimeoutError)
        assert scope.members() == [child.pid]
        with pytest.raises(ScopeTimeout):
            scope.close(kill=False, timeout=0.1)
        assert not scope.closed
    assert reap(child) == -9  # the with block's close() killed it


def test_kill_without_cgroup_kill_freezes_and_signals_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before Linux 5.14 (simulated: the file is looked for under another name)."""
    monkeypatch.setattr(scope_module, "KILL_FILE", "cgroup.kill-missing")
    with Scope() as scope:
        child = start(scope, ESCAPEES, b"ready", b"ignoring")
        scope.kill()
        scope.wait(10)
        assert reap(child) == -9
        with open(os.path.join(scope.path, "cgroup.freeze")) as f:
            assert f.read().strip() == "0"  # thawed again


def test_kill_without_a_freezer_signals_round_by_round(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before Linux 5.2 (simulated): no freezer either. A member forking all the
    while is caught in a later round, with what it forked meanwhile."""
    monkeypatch.setattr(scope_module, "KILL_FILE", "cgroup.kill-missing")
    monkeypatch.setattr(scope_module, "FREEZE_FILE", "cgroup.freeze-missing")
    with Scope() as scope:
        child = start(scope, "echo ready; while :; do sleep 300 & done", b"ready")
        time.sleep(0.05)  # some forked already, more to come
        assert scope.send_signal(9) > 1
        scope.wait(10)
        assert reap(child) == -9


def test_a_spawn_that_fails_in_the_scope_leaves_it_empty() -> None:
    with Scope() as scope:
        with pytest.raises(FileNotFoundError):
            pyclone3.spawn(["/nonexistent/program"], cgroup=scope.fileno())
        assert not scope.populated
    assert not os.path.exists(scope.path)


def test_close_removes_cgroups_members_made_below() -> None:
    with Scope() as scope:
        os.mkdir(os.path.join(scope.path, "inner"))
        child = start(scope, "echo ready; exec sleep 300", b"ready")
    assert reap(child) == -9
    assert not os.path.exists(scope.path)


def test_discard_removes_only_an_empty_scope() -> None:
    scope = Scope()
    child = start(scope, "echo ready; exec sleep 300", b"ready")
    assert scope.discard() is False and not scope.closed
    scope.kill()
    assert reap(child) == -9
    assert scope.discard(10) is True and scope.closed
    assert not os.path.exists(scope.path)


# ---- limits -------------------------------------------------------------------------


def _offered(controller: str) -> bool:
    with open(os.path.join(own_cgroup(), "cgroup.subtree_control")) as f:
        return controller in f.read().split()


PIDS_ENABLED = SCOPE_REASON is None and _offered("pids")


@pytest.mark.parametrize(
    ("keyword", "value", "controller"),
    [("pids_max", 10, "pids"), ("memory_max", "64M", "memory"), ("cpu_max", 0.5, "cpu")],
)
def test_a_limit_without_its_controller_is_a_clear_error(
    keyword: str, value: object, controller: str
) -> None:
    if _offered(controller):
        pytest.skip(f"the {controller} controller is enabled here")
    before = scope_dirs()
    with pytest.raises(ControllerNotEnabledError) as info:
        Scope(**{keyword: value})
    assert info.value.controller == controller
    assert f"the {controller} controller is not enabled" in str(info.value)
    assert "cgroup.controllers" in str(info.value) or "subtree_control" in str(info.value)
    assert scope_dirs() == before  # the half-made scope was removed


@pytest.mark.skipif(
    not PIDS_ENABLED,
    reason="the pids controller is not enabled in our cgroup's cgroup.subtree_control "
    "(on this machine the controllers are bound to cgroup v1)",
)
def test_pids_max_is_enforced_where_the_controller_exists() -> None:
    with Scope(pids_max=3) as scope:
        child = start(
            scope, "for i in 1 2 3 4 5; do sleep 300 & done 2>/dev/null; echo ready", b"ready"
        )
        assert len(scope.members()) <= 3
        scope.kill()
        reap(child)


# ---- unprivileged ---------------------------------------------------------------------


def test_an_undelegated_cgroup_is_a_clear_permission_error() -> None:
    parent = own_cgroup()

    def body() -> int:
        become_nobody()
        try:
            Scope()
        except PermissionError as exc:
            return 0 if exc.filename == parent and "delegated" in str(exc) else 2
        return 1

    child = fork_child(body)
    with child:
        assert child.wait(30).returncode == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a scope nobody may not enter")
@pytest.mark.parametrize("how", ["spawn", "Popen"])
def test_a_refused_spawn_into_a_scope_names_its_path(how: str) -> None:
    """CLONE_INTO_CGROUP takes the scope as an fd; the error still names the directory."""
    with Scope() as scope:

        def body() -> int:
            become_nobody()  # may not write the root-owned scope's cgroup.procs
            try:
                if how == "spawn":
                    reap(pyclone3.spawn(["/bin/true"], scope=scope))
                else:
                    pyclone3.Popen(["/bin/true"], scope=scope).wait()
            except PermissionError as exc:
                return 0 if exc.filename == scope.path else 2
            return 1

        child = fork_child(body)
        with child:
            assert child.wait(30).returncode == 0
        assert scope.members() == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to delegate a cgroup")
def test_unprivileged_scopes_in_a_delegated_cgroup() -> None:
    """As a login manager delegates a user's cgroup: chowned, and the user moved into it."""
    with Scope(name=f"pyclone3-{os.getpid()}-delegated") as delegated:
        for name in ("", "cgroup.procs", "cgroup.subtree_control", "cgroup.threads"):
            os.chown(os.path.join(delegated.path, name), NOBODY, NOBODY)

        def body() -> int:
            with open(os.path.join(delegated.path, "cgroup.procs"), "w") as f:
                f.write("0")  # as root, then no more
            become_nobody()
            with Scope() as scope:
                if os.path.dirname(scope.path) != delegated.path:
                    return 2
                child = start(scope, ESCAPEES, b"ready", b"ignoring")
                if len(scope.members()) != 3:
                    return 3
                scope.kill()
                scope.wait(10)
                if reap(child) != -9:
                    return 4
            return 0 if not os.path.exists(scope.path) else 5

        child = fork_child(body)
        with child:
            assert child.wait(60).returncode == 0
