"""wait_all, iter_exits and wait_any given scopes next to children: whole jobs, on the real kernel.

A scope counts as ended once empty, noticed by POLLPRI on its cgroup.events
in the same poll set as the pidfds: the wake-ups are counted as
test_multi.py counts them. Each test leaves no cgroup directory (checked
here), no fd, no zombie and no process (conftest's no_leaks).
"""

from __future__ import annotations

import asyncio
import os
import select
import subprocess
import time
from typing import Any

import pytest
from conftest import SCOPE_REASON, needs_threads, open_fds, zombies

import pyclone3
from pyclone3 import Popen, Scope, WaitAllTimeout, aio, iter_exits, wait_all, wait_any

pytestmark = [
    pytest.mark.skipif(SCOPE_REASON is not None, reason=SCOPE_REASON or ""),
    pytest.mark.usefixtures("no_cgroup_left"),
]


def daemonize(scope: Scope, seconds: float) -> pyclone3.PidFd:
    """A child in *scope* that leaves a double-forked daemon for *seconds* and exits 0.

    Returns the child's pidfd once the daemon runs (the caller reaps the child).
    """
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        child = pyclone3.spawn(
            ["/bin/sh", "-c", f"(setsid sleep {seconds} </dev/null >/dev/null 2>&1 &); echo ok"],
            scope=scope,
            stdout=w,
        )
    finally:
        os.close(w)
    try:
        assert os.read(r, 16) == b"ok\n"
    finally:
        os.close(r)
    assert child.pidfd is not None
    return child.pidfd


def count_polls(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record each time wait_all goes to sleep (multi.poll_fd), on a pidfd or a scope."""
    import pyclone3.multi as multi

    calls: list[float] = []
    real = multi.poll_fd

    def counting(*args: Any) -> int:
        calls.append(time.monotonic())
        return real(*args)

    monkeypatch.setattr(multi, "poll_fd", counting)
    return calls


def count_epoll_waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record each epoll_wait of iter_exits/wait_any."""
    import pyclone3.multi as multi

    calls: list[float] = []
    real_epoll = select.epoll

    class Counting:
        def __init__(self) -> None:
            self.ep = real_epoll()

        def __getattr__(self, name: str) -> object:
            return getattr(self.ep, name)

        def poll(self, *args: Any) -> object:
            calls.append(time.monotonic())
            return self.ep.poll(*args)

    monkeypatch.setattr(multi.select, "epoll", Counting)
    return calls


def test_scope_events_flags_pollpri_when_the_scope_empties() -> None:
    with Scope() as scope:
        child = daemonize(scope, 0.3)
        with child:
            assert child.wait(10).returncode == 0
        with scope.events() as events:
            assert events.populated  # the daemon
            poller = select.poll()
            poller.register(events.fileno(), select.POLLPRI)
            assert poller.poll(0) == []  # read on opening: nothing new yet
            assert poller.poll(10_000) != []
            assert not events.populated
            assert poller.poll(0) == []  # the read re-armed it
        with pytest.raises(ValueError, match="closed"):
            events.fileno()
        fresh = scope.events()
    assert not fresh.populated  # the cgroup is gone: it was empty
    fresh.close()
    with pytest.raises(ValueError, match="closed"):
        scope.events()


def test_wait_all_mixes_scopes_and_children_in_the_order_given() -> None:
    before = open_fds()
    with Scope() as scope:
        inside = daemonize(scope, 0.4)
        p = Popen(["/bin/sh", "-c", "sleep 0.2; exit 3"])
        began = time.monotonic()
        statuses = wait_all([p, scope, inside], timeout=30)
        took = time.monotonic() - began
        assert statuses[0] is not None and statuses[0].exit_code == 3
        assert statuses[1] is None  # a scope has no exit status
        assert statuses[2] is not None and statuses[2].exit_code == 0
        assert inside.closed is False and inside.status is not None  # reaped, not closed
        inside.close()
        assert took > 0.25, took  # the daemon's end, not the child's
        assert scope.members() == [] and p.returncode == 3
    assert open_fds() <= before
    assert not zombies()


def test_wait_all_sleeps_once_on_a_scope_whose_member_daemonized(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The child exits at once, its daemon 0.5 s later: with the scope given
    last, wait_all sleeps once (on the scope's cgroup.events) and the sweep
    after that wake-up reaps the child too."""
    import pyclone3.multi as multi

    monkeypatch.setattr(multi, "CATCH_UP_S", 30.0)  # no periodic sweep in the count
    with Scope() as scope:
        child = daemonize(scope, 0.5)
        polls = count_polls(monkeypatch)
        began = time.monotonic()
        with child:
            status, emptied = wait_all([child, scope], timeout=30)
            assert status is not None and status.exit_code == 0 and emptied is None
        assert time.monotonic() - began > 0.3
        assert len(polls) == 1, polls
    assert not zombies()


def test_wait_all_sleeps_not_at_all_when_every_scope_is_empty(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    polls = count_polls(monkeypatch)
    with Scope() as first, Scope() as second:
        assert wait_all([first, second], timeout=30) == [None, None]
        second.close()
        assert wait_all([first, second], timeout=30) == [None, None]  # closed: empty
    assert polls == []


def test_iter_exits_reports_a_scope_once_it_is_empty_in_exit_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    polls = count_epoll_waits(monkeypatch)
    with Scope() as scope:
        inside = daemonize(scope, 0.6)  # the scope empties after p
        p = Popen(["/bin/sh", "-c", "sleep 0.2; exit 4"])
        with iter_exits([scope, p, inside], timeout=30) as exits:
            assert isinstance(exits, pyclone3.multi.ScopeExitStream)
            got = list(exits)
        assert [job for job, _ in got][1:] == [p, scope]  # inside exited before both
        assert got[0][0] is inside and got[0][1] is not None
        statuses = dict((id(job), status) for job, status in got)
        assert statuses[id(scope)] is None
        assert statuses[id(p)] is not None and statuses[id(p)].exit_code == 4  # type: ignore[union-attr]
        inside.close()
        # One wake-up per event (inside, p, the scope), with a little slack: no loop.
        assert len(polls) <= 5, polls
    assert not zombies()


def test_iter_exits_without_scopes_is_unchanged() -> None:
    p = Popen(["/bin/true"])
    with iter_exits([p], timeout=30) as exits:
        assert type(exits) is pyclone3.multi.ExitStream
        assert [s.exit_code for _, s in exits] == [0]


def test_wait_any_returns_a_scope_that_empties_first() -> None:
    with Scope() as scope:
        inside = daemonize(scope, 0.2)
        with Popen(["/bin/sleep", "300"]) as p:
            with inside:
                assert inside.wait(10).returncode == 0
            job, status = wait_any([p, scope], timeout=30)
            assert (job, status) == (scope, None)
            assert p.poll() is None
            p.kill()


def test_a_popen_waited_for_with_its_own_scope() -> None:
    """Popen(scope=True), wait_all([p, p.scope]): the child reaped, its daemon waited for."""
    with Popen(
        ["/bin/sh", "-c", "(setsid sleep 0.4 </dev/null >/dev/null 2>&1 &); echo ok"],
        stdout=subprocess.PIPE,
        scope=True,
    ) as p:
        assert p.stdout is not None and p.stdout.readline() == b"ok\n"
        made = p.scope
        assert made is not None
        began = time.monotonic()
        status, emptied = wait_all([p, made], timeout=30)
        assert time.monotonic() - began > 0.2
        assert status is not None and status.exit_code == 0 and emptied is None
        assert p.returncode == 0
        assert made.closed or made.members() == []
    assert made.closed and not os.path.exists(made.path)


def test_wait_all_times_out_naming_the_scope_still_populated() -> None:
    before = open_fds()
    with Scope() as busy, Scope() as idle:
        inside = daemonize(busy, 300)
        p = Popen(["/bin/true"])
        began = time.monotonic()
        with pytest.raises(WaitAllTimeout) as info:
            wait_all([busy, inside, p, idle], timeout=0.3)
        assert 0.25 < time.monotonic() - began < 5
        assert info.value.pending == [busy]
        assert set(map(id, info.value.done)) == {id(inside), id(p), id(idle)}
        assert info.value.done[idle] is None
        assert info.value.done[p].exit_code == 0  # type: ignore[union-attr]
        inside.close()
        with pytest.raises(WaitAllTimeout) as again:
            list(iter_exits([busy, idle], timeout=0.2))
        assert again.value.pending == [busy] and again.value.done == {idle: None}
        busy.kill()
        assert wait_all([busy], timeout=10) == [None]
    assert open_fds() <= before
    assert not zombies()


def test_anything_else_is_still_refused_before_waiting() -> None:
    with Scope() as scope, pytest.raises(TypeError, match="Scope"):
        wait_all([scope, object()])  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"Scope\.wait"):
        asyncio.run(aio.wait_exit(scope))  # type: ignore[arg-type]


@needs_threads
@pytest.mark.parametrize("how", ["wait_all", "iter_exits"])
def test_a_change_that_leaves_members_is_not_an_end(how: str) -> None:
    """Freezing the scope changes cgroup.events (POLLPRI) but leaves it populated."""
    import threading

    def freeze(value: bytes) -> None:
        with open(os.path.join(scope.path, "cgroup.freeze"), "wb") as f:
            f.write(value)

    with Scope() as scope:
        inside = daemonize(scope, 300)
        with inside:
            assert inside.wait(10).returncode == 0
        timer = threading.Timer(0.1, freeze, (b"1",))
        timer.start()
        try:
            with pytest.raises(WaitAllTimeout) as info:
                if how == "wait_all":
                    wait_all([scope], timeout=0.5)
                else:
                    list(iter_exits([scope], timeout=0.5))
            assert info.value.pending == [scope]
        finally:
            timer.join()
            freeze(b"0")
