"""Waiting on many children: iter_exits, wait_all, wait_any on one epoll."""

from __future__ import annotations

import os
import random
import signal
import time
from typing import Any

import pytest
from conftest import (
    needs_threads,
    open_fds,
    polled_from_another_thread,
    require,
    sleeper,
    users_of,
    zombies,
)

import pyclone3
from pyclone3 import PidFd, Popen
from pyclone3.multi import WaitAllTimeout, iter_exits, wait_all, wait_any

pytestmark = require("waitid_pidfd")  # these tests reap through pidfds


def test_exits_are_reported_in_exit_order_with_their_status() -> None:
    delays = [0.25, 0.05, 0.15, 0.0]
    procs = [Popen(["/bin/sh", "-c", f"sleep {d}; exit {i}"]) for i, d in enumerate(delays)]
    order = [(p.args[2], status.exit_code) for p, status in iter_exits(procs, timeout=30)]
    assert [code for _, code in order] == [3, 1, 2, 0]
    assert [p.returncode for p in procs] == [0, 1, 2, 3]  # set as poll() would


def test_random_exit_order_of_pidfds() -> None:
    rng = random.Random(7)
    children = {}
    for i in range(40):
        child = pyclone3.spawn(["/bin/sh", "-c", f"sleep {rng.uniform(0, 0.3):.3f}; exit {i}"])
        assert child.pidfd is not None
        children[child.pidfd] = i
    seen = {}
    for pidfd, status in iter_exits(children, timeout=30):
        assert pidfd not in seen  # each exit once
        seen[pidfd] = status.exit_code
    assert seen == children
    for pidfd in children:
        pidfd.close()


def test_wait_all_returns_statuses_in_the_order_given() -> None:
    procs = [Popen(["/bin/sh", "-c", f"sleep 0.0{i}; exit {i}"]) for i in range(5)]
    assert [s.exit_code for s in wait_all(procs)] == [0, 1, 2, 3, 4]


def _count_blocking_polls(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record each time wait_all goes to sleep on a child (multi.poll_fd)."""
    import pyclone3.multi as multi

    calls: list[float] = []
    real = multi.poll_fd

    def counting(*args: Any) -> int:
        calls.append(time.monotonic())
        return real(*args)

    monkeypatch.setattr(multi, "poll_fd", counting)
    return calls


@pytest.mark.parametrize("order", ["given", "reversed", "random"])
def test_wait_all_any_exit_order(order: str) -> None:
    delays = [0.02 * i for i in range(12)]
    if order == "reversed":
        delays.reverse()
    elif order == "random":
        random.Random(3).shuffle(delays)
    before = open_fds()
    procs = [Popen(["/bin/sh", "-c", f"sleep {d}; exit {i}"]) for i, d in enumerate(delays)]
    statuses = wait_all(procs, timeout=30)
    assert [s.exit_code for s in statuses] == list(range(12))
    assert [p.returncode for p in procs] == list(range(12))
    assert all(p._pidfd is not None and p._pidfd.closed for p in procs)  # owned: closed
    assert open_fds() <= before
    assert not zombies()


def test_wait_all_sleeps_once_for_children_ending_in_the_order_started(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Started in order, ending in order: waiting on the last one first means
    one wake-up, after which every other child is reaped at once (waiting in
    the order given would wake up once per child, 15 times here). Two are
    allowed, in case a loaded machine delays one child's start past its
    neighbour's end."""
    import pyclone3.multi as multi

    monkeypatch.setattr(multi, "CATCH_UP_S", 30.0)  # no periodic sweep in the count
    polls = _count_blocking_polls(monkeypatch)
    procs = [Popen(["/bin/sleep", f"{0.1 + 0.04 * i:.2f}"]) for i in range(15)]
    assert {s.exit_code for s in wait_all(procs, timeout=30)} == {0}
    assert 1 <= len(polls) <= 2


def test_wait_all_sleeps_not_at_all_when_everything_has_exited(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    polls = _count_blocking_polls(monkeypatch)
    procs = [Popen(["/bin/sh", "-c", f"exit {i}"]) for i in range(30)]
    deadline = time.monotonic() + 10
    while any(p.pidfd.is_alive() for p in procs):  # exited, not reaped
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert [s.exit_code for s in wait_all(procs, timeout=30)] == list(range(30))
    assert polls == []


@needs_threads
def test_wait_all_reaps_the_early_ones_while_a_late_one_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No zombie piles up behind a long-running child: the catch-up sweeps
    reap whoever has exited, at least every CATCH_UP_S."""
    import threading

    import pyclone3.multi as multi

    monkeypatch.setattr(multi, "CATCH_UP_S", 0.1)
    short = [Popen(["/bin/sh", "-c", f"exit {i}"]) for i in range(10)]
    long = Popen(["/bin/sleep", "30"])
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(wait_all([*short, long], timeout=60)))
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not all(p.returncode is not None for p in short):
            assert time.monotonic() < deadline, "the short children were never reaped"
            time.sleep(0.01)
        assert [p.returncode for p in short] == list(range(10))
        assert long.returncode is None and not zombies()
    finally:
        long.kill()
        thread.join(10)
    assert not thread.is_alive()
    statuses = result[0]
    assert isinstance(statuses, list)
    assert [s.returncode for s in statuses] == [*range(10), -signal.SIGKILL]


@needs_threads
@require("pidfd_info_exit")
def test_wait_all_and_another_threads_poll_agree_on_every_child() -> None:
    """Another thread polls the children while wait_all's sweeps reap them
    outside the PidFds' locks. A child the sweep reaped is never taken for
    someone else's child by the other thread: every status comes from a reap
    here (it has its rusage), with the child's own exit code."""
    for _ in range(5):
        procs = [Popen(["/bin/sh", "-c", f"sleep 0.0{i % 3}; exit {i}"]) for i in range(150)]
        with polled_from_another_thread(procs):
            statuses = wait_all(procs, timeout=60)
        assert [s.exit_code for s in statuses] == list(range(150))
        assert [p.returncode for p in procs] == list(range(150))
        assert all(s.rusage is not None for s in statuses)
        assert not zombies()


@needs_threads
@require("pidfd_info_exit")
def test_iter_exits_and_another_threads_poll_agree_on_every_child() -> None:
    """The same with iter_exits, whose batches are reaped by the same sweep."""
    for _ in range(5):
        procs = [Popen(["/bin/sh", "-c", f"sleep 0.0{i % 3}; exit {i}"]) for i in range(150)]
        with polled_from_another_thread(procs):
            exits = {id(c): s for c, s in iter_exits(procs, timeout=60)}
        assert [exits[id(p)].exit_code for p in procs] == list(range(150))
        assert [p.returncode for p in procs] == list(range(150))
        assert all(s.rusage is not None for s in exits.values())
        assert not zombies()


def _wait_all_into(results: list[object], children: list[Any]) -> None:
    results.append(wait_all(children, timeout=60))


@needs_threads
def test_two_threads_wait_all_on_the_same_children() -> None:
    """Two wait_all calls over the same children, in two threads: each child
    is reaped once, by one sweep or the other, and both calls report the
    status of that reap."""
    import threading

    for _ in range(3):
        procs = [Popen(["/bin/sh", "-c", f"sleep 0.0{i % 3}; exit {i}"]) for i in range(100)]
        results: list[object] = []
        thread = threading.Thread(target=_wait_all_into, args=(results, procs))
        thread.start()
        mine = wait_all(procs, timeout=60)
        thread.join(30)
        assert not thread.is_alive()
        theirs = results[0]
        assert isinstance(theirs, list)
        assert [s.exit_code for s in mine] == [s.exit_code for s in theirs] == list(range(100))
        assert all(s.rusage is not None for s in [*mine, *theirs])  # from the reap, not a guess
        assert [p.returncode for p in procs] == list(range(100))
        assert not zombies()


def test_wait_all_takes_more_children_than_the_fd_limit() -> None:
    """poll(2) refuses more entries than RLIMIT_NOFILE: children given twice
    (a Popen and its PidFd), or already closed, can outnumber it. The sweep
    polls in slices that fit."""
    import resource

    procs = [Popen(["/bin/sh", "-c", f"exit {i}"]) for i in range(40)]
    deadline = time.monotonic() + 10
    while any(p.pidfd.is_alive() for p in procs):  # all exited: no wait, no fd opened
        assert time.monotonic() < deadline
        time.sleep(0.01)
    children: list[Any] = [*procs, *(p.pidfd for p in procs)]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (16, hard))
    try:
        statuses = wait_all(children, timeout=30)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert [s.exit_code for s in statuses] == [*range(40), *range(40)]
    assert all(p._pidfd is not None and p._pidfd.closed for p in procs)
    assert not zombies()


def test_wait_all_deadline_says_who_finished() -> None:
    quick = Popen(["/bin/sh", "-c", "exit 3"])
    slow = Popen(["/bin/sleep", "30"])
    pidfd = pyclone3.spawn(["/bin/sh", "-c", "exit 5"]).pidfd
    assert pidfd is not None
    started = time.monotonic()
    with pytest.raises(WaitAllTimeout) as info:
        wait_all([quick, slow, pidfd], timeout=0.3)
    assert 0.25 < time.monotonic() - started < 10
    assert info.value.pending == [slow]
    assert info.value.done[quick].exit_code == 3 and info.value.done[pidfd].exit_code == 5
    assert quick.returncode == 3 and quick._pidfd is not None and quick._pidfd.closed
    assert not pidfd.closed  # a PidFd stays the caller's to close
    assert slow.returncode is None
    slow.kill()
    assert wait_all([quick, slow, pidfd], timeout=30)[1].returncode == -signal.SIGKILL
    pidfd.close()


def test_wait_all_mixes_pidfds_and_popens_and_repeats() -> None:
    p = Popen(["/bin/sh", "-c", "sleep 0.1; exit 1"])
    fd = pyclone3.spawn(["/bin/sh", "-c", "exit 2"]).pidfd
    assert fd is not None
    with fd:
        statuses = wait_all([p, fd, p], timeout=30)
        assert [s.exit_code for s in statuses] == [1, 2, 1]
        assert fd.returncode == 2 and not fd.closed
        assert [s.exit_code for s in wait_all([fd, p])] == [2, 1]  # known: no wait


@pytest.mark.parametrize("popen_first", [True, False])
def test_a_popen_and_its_own_pidfd_are_both_reported(popen_first: bool) -> None:
    """Two children of the call share one fd: each is reported, the child is
    reaped once, and the Popen's pidfd is closed once both are done."""
    p = Popen(["/bin/sh", "-c", "sleep 0.1; exit 3"])
    pidfd = p.pidfd
    given: list[Any] = [p, pidfd] if popen_first else [pidfd, p]
    exits = list(iter_exits(given, timeout=30))
    assert sorted((id(c), s.exit_code) for c, s in exits) == sorted((id(c), 3) for c in given)
    assert p.returncode == 3 and pidfd.returncode == 3 and pidfd.closed


@require("pidfd_send_signal")
def test_wait_any_returns_the_first_and_leaves_the_rest() -> None:
    slow = sleeper(30)
    fast = pyclone3.spawn(["/bin/sh", "-c", "exit 9"]).pidfd
    assert fast is not None
    with slow, fast:
        child, status = wait_any([slow, fast], timeout=30)
        assert child is fast and status.exit_code == 9
        assert slow.is_alive()
        slow.kill()
        child, status = wait_any([slow], timeout=30)
        assert child is slow and status.returncode == -signal.SIGKILL


@pytest.mark.parametrize("already_reaped", [False, True])
@pytest.mark.parametrize("call", ["iter_exits", "wait_all"])
def test_the_exit_is_recorded_while_a_poll_holds_the_popens_lock(
    call: str, already_reaped: bool
) -> None:
    """A Popen's poll() returns at once, recording nothing, while another
    thread is inside one (holding its waitpid lock): the Popen must still
    end up with its returncode and its pidfd closed."""
    p = Popen(["/bin/sh", "-c", "exit 7"])
    pidfd = p.pidfd
    if already_reaped:
        assert pidfd.wait().exit_code == 7  # through the PidFd, behind the Popen's back
    with p._waitpid_lock:  # as if another thread were inside p.poll()
        if call == "iter_exits":
            statuses = [s for _, s in iter_exits([p], timeout=30)]
        else:
            statuses = wait_all([p], timeout=30)
        assert [s.exit_code for s in statuses] == [7]
        assert p.returncode == 7 and pidfd.closed


def test_wait_any_keeps_the_others_that_were_ready_for_later_calls() -> None:
    procs = [Popen(["/bin/sh", "-c", f"exit {i}"]) for i in range(5)]
    deadline = time.monotonic() + 10
    while any(p.pidfd.is_alive() for p in procs):  # all exited, none reaped
        assert time.monotonic() < deadline
        time.sleep(0.01)
    left, codes = list(procs), {}
    while left:
        child, status = wait_any(left, timeout=0)  # no wait: each is known or ready
        codes[id(child)] = status.exit_code
        left.remove(child)  # type: ignore[arg-type]
    assert [codes[id(p)] for p in procs] == list(range(5))
    assert [p.returncode for p in procs] == list(range(5)) and not zombies()


def test_deadline_expires_with_children_still_running() -> None:
    quick = Popen(["/bin/true"])
    slow = Popen(["/bin/sleep", "30"])
    started = time.monotonic()
    got = []
    with pytest.raises(WaitAllTimeout) as info:
        for child, _ in iter_exits([quick, slow], timeout=0.3):
            got.append(child)
    assert 0.25 < time.monotonic() - started < 10
    assert got == [quick] and info.value.pending == [slow] and quick in info.value.done
    assert isinstance(info.value, TimeoutError)
    slow.kill()
    assert slow.wait() == -9


def test_zero_timeout_reports_what_has_exited() -> None:
    done = Popen(["/bin/true"])
    done.wait()
    running = Popen(["/bin/sleep", "30"])
    with pytest.raises(WaitAllTimeout) as info:
        list(iter_exits([done, running], timeout=0))
    assert list(info.value.done) == [done] and info.value.pending == [running]
    running.kill()
    running.wait()


def test_children_killed_from_outside() -> None:
    procs = [Popen(["/bin/sleep", "30"]) for _ in range(5)]
    for p in procs:
        os.kill(p.pid, signal.SIGTERM)  # someone else's signal
    assert {s.returncode for s in wait_all(procs, timeout=30)} == {-signal.SIGTERM}


@require("pidfd_info_exit")
def test_children_reaped_from_outside_still_report_their_status() -> None:
    procs = [Popen(["/bin/sh", "-c", f"exit {i}"]) for i in range(3)]
    for p in procs:
        os.waitpid(p.pid, 0)  # someone else's reaper
    assert [s.exit_code for s in wait_all(procs, timeout=30)] == [0, 1, 2]


def test_a_thousand_short_lived_children() -> None:
    before = len(open_fds())
    total = 0
    for _ in range(4):
        procs = [Popen(["/bin/true"]) for _ in range(250)]
        total += sum(1 for _, s in iter_exits(procs, timeout=60) if s.exit_code == 0)
    assert total == 1000
    assert len(open_fds()) == before


def _count_epoll_polls(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record each epoll_wait iter_exits makes."""
    import select

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


def test_a_burst_is_reaped_in_few_wakeups(monkeypatch: pytest.MonkeyPatch) -> None:
    polls = _count_epoll_polls(monkeypatch)
    procs = [Popen(["/bin/true"]) for _ in range(50)]
    time.sleep(0.3)  # all have exited: one wake-up must reap them all
    assert len(list(iter_exits(procs, timeout=30))) == 50
    assert len(polls) <= 2


def test_a_steady_stream_of_exits_is_reaped_in_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """One exit every 5 ms for 0.3 s: the iterator lets exits gather between
    wake-ups (up to COALESCE_S) instead of waking once for each of the 60;
    every exit is still reported, once, with its rusage (reaped here)."""
    polls = _count_epoll_polls(monkeypatch)
    procs = [Popen(["/bin/sleep", f"{0.2 + 0.005 * i:.3f}"]) for i in range(60)]
    exits = list(iter_exits(procs, timeout=30))
    assert sorted(map(id, (c for c, _ in exits))) == sorted(map(id, procs))
    assert all(s.exit_code == 0 and s.rusage is not None for _, s in exits)
    assert [p.returncode for p in procs] == [0] * 60
    assert len(polls) <= 30


@require("pidfd_info_exit")
def test_a_non_child_is_reported_once_its_own_parent_reaps_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A grandchild exits at 0.1 s but stays a zombie until its parent ends
    (0.5 s) and it is reaped by init: readable with nothing to report for a
    while, which the iterator re-checks with a growing pause (up to 50 ms),
    never spinning, and reports once it has a status."""
    import subprocess

    polls = _count_epoll_polls(monkeypatch)
    parent = Popen(
        ["/bin/sh", "-c", "sleep 0.1 & echo $!; exec sleep 0.5"], stdout=subprocess.PIPE
    )
    assert parent.stdout is not None
    with parent.stdout:
        grandchild = PidFd.open(int(parent.stdout.readline()))
    started = time.monotonic()
    with grandchild:
        exits = [(c, s.exit_code) for c, s in iter_exits([grandchild, parent], timeout=60)]
    elapsed = time.monotonic() - started
    assert exits == [(parent, 0), (grandchild, 0)]
    assert len(polls) <= 10 + 40 * elapsed  # a spin would make thousands


@require("pidfd_open")
def test_arguments_are_checked_before_waiting() -> None:
    with pytest.raises(TypeError):
        list(iter_exits([os.getpid()]))  # type: ignore[list-item]
    closed = PidFd.open(os.getpid())
    closed.close()
    with pytest.raises(ValueError):
        list(iter_exits([closed]))
    with pytest.raises(pyclone3.PidfdUnavailableError):
        p = Popen(["/bin/true"], create_pidfd=False)
        try:
            list(iter_exits([p]))
        finally:
            p.wait()
    with pytest.raises(ValueError):
        wait_any([])


@needs_threads
def test_a_pidfd_closed_during_iteration_is_not_freed_under_it() -> None:
    """Closed by another thread while wait_all waits on it: the fd stays valid
    until the wait lets go, and the wait fails cleanly (ValueError)."""
    import threading

    child = sleeper(30)
    fd = child.fileno()
    got: list[object] = []

    def waiter() -> None:
        try:
            got.extend(wait_all([child], timeout=30))
        except ValueError as exc:
            got.append(exc)

    thread = threading.Thread(target=waiter)
    thread.start()
    deadline = time.monotonic() + 10
    while users_of(child) == 0:  # until the iterator holds it
        assert time.monotonic() < deadline
        time.sleep(0.001)
    child.close()
    thread.join(10)
    assert not thread.is_alive()
    assert len(got) == 1 and isinstance(got[0], ValueError)
    assert not os.path.exists(f"/proc/self/fd/{fd}")  # closed once the wait let go
    os.kill(child.pid, 9)
    os.waitpid(child.pid, 0)


def test_already_waited_children_are_reported_at_once() -> None:
    p = Popen(["/bin/sh", "-c", "exit 4"])
    p.wait()  # its pidfd is closed by now
    assert [(c, s.exit_code) for c, s in iter_exits([p], timeout=0)] == [(p, 4)]


def test_closing_the_iterator_early_releases_everything() -> None:
    procs = [Popen(["/bin/sh", "-c", f"sleep 0.0{i}"]) for i in range(3)]
    exits = iter_exits(procs, timeout=30)
    first = next(exits)
    exits.close()
    assert first[0] in procs
    for p in procs:
        assert p._pidfd is not None and users_of(p._pidfd) == 0  # released
        p.wait()
