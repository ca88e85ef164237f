"""Whole trees: a child's descendants found, killed through pidfds, and reaped."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest
from conftest import require

import pyclone3
from pyclone3 import PidFd, syscalls, tree

# The tests hold the members by pidfd and reap through pidfds.
pytestmark = [require("pidfd_open"), require("waitid_pidfd")]

# A tree: the shell, a background sleep, a subshell's orphaned sleep (its
# parent exits at once, so it is reparented: to us, as a subreaper), and a
# sleep in a nested shell. Each prints its PID; the shell waits.
SCRIPT = (
    "sleep 100 & echo $!; "
    "sh -c 'sleep 100 & echo $!' ; "
    "sh -c 'sleep 100 & echo $!; wait' & "
    "sleep 0.2; echo done; wait"
)


def reap_the_session(session: int) -> None:
    """Reap our orphans of *session* until nothing of it is left: a member's
    parent (the nested shell, not itself a member) may die after it."""
    deadline = time.monotonic() + 10
    while True:
        tree.reap_orphans(session)
        left = [pid for pid, (_, sid, _) in tree._process_table().items() if sid == session]
        if not left:
            return
        assert time.monotonic() < deadline, f"still running: {left}"
        time.sleep(0.005)


@pytest.fixture
def subreaper() -> Iterator[None]:
    """Be a child subreaper for the test only (orphans would otherwise come to us later)."""
    was = tree.is_child_subreaper()
    tree.set_child_subreaper(True)
    try:
        yield
    finally:
        tree.set_child_subreaper(was)


def start_tree(**kw: object) -> tuple[pyclone3.Popen, list[PidFd]]:
    p = pyclone3.Popen(
        ["/bin/sh", "-c", SCRIPT], stdout=subprocess.PIPE, start_new_session=True, **kw
    )
    assert p.stdout is not None
    pids = []
    for line in p.stdout:
        if line.strip() == b"done":
            break
        pids.append(int(line))
    assert len(pids) == 3
    return p, [PidFd(syscalls.pidfd_open(pid), pid=pid) for pid in pids]


def test_subreaper_flag_round_trips() -> None:
    was = tree.is_child_subreaper()
    try:
        tree.set_child_subreaper(True)
        assert tree.is_child_subreaper()
        tree.set_child_subreaper(False)
        assert not tree.is_child_subreaper()
    finally:
        tree.set_child_subreaper(was)


def test_descendants_finds_the_tree_including_orphans(subreaper: None) -> None:
    p, members = start_tree()
    try:
        found = tree.descendants(p.pidfd)
        try:
            found_pids = {m.pid for m in found}
            # The three sleeps, and the nested shell that waits for one.
            assert {m.pid for m in members} <= found_pids
            assert len(found_pids) == 4
        finally:
            for m in found:
                m.close()
    finally:
        assert tree.kill_tree(p.pidfd) == 5
        p.wait()
        p.stdout.close()  # type: ignore[union-attr]
        for m in members:
            assert not m.is_alive()
            m.close()


def test_kill_tree_kills_and_reaps_every_member(subreaper: None) -> None:
    p, members = start_tree()
    orphan = members[1]
    assert os.getppid() != orphan.pid
    with open(f"/proc/{orphan.pid}/stat", "rb") as f:  # reparented to us
        assert int(f.read().rsplit(b")", 1)[1].split()[1]) == os.getpid()
    try:
        assert tree.kill_tree(p.pidfd) == 5
        assert p.wait() == -signal.SIGKILL
        for m in members:
            assert not m.is_alive()
        # The orphan was ours: kill_tree reaped it (no_leaks checks for zombies).
        with pytest.raises(ChildProcessError):
            os.waitpid(orphan.pid, os.WNOHANG)
    finally:
        p.stdout.close()  # type: ignore[union-attr]
        for m in members:
            m.close()


@require("pidfd_send_signal")
def test_without_kill_tree_the_grandchildren_survive(subreaper: None) -> None:
    """The control: plain kill() leaves the tree running (so the tests above can fail)."""
    p, members = start_tree()
    try:
        p.kill()
        p.wait()
        assert all(m.is_alive() for m in members)
    finally:
        p.stdout.close()  # type: ignore[union-attr]
        for m in members:
            m.kill()
        reap_the_session(p.pid)  # the members, then the nested shell waiting on one
        for m in members:
            m.close()


def test_popen_kill_tree_option_makes_kill_and_terminate_reach_the_tree() -> None:
    was = tree.is_child_subreaper()
    try:
        for method, sig in (("kill", signal.SIGKILL), ("terminate", signal.SIGTERM)):
            p, members = start_tree(kill_tree=True)
            assert tree.is_child_subreaper()  # set at spawn
            getattr(p, method)()
            assert p.wait() == -sig
            for m in members:  # gone (and reaped, if ours)
                deadline = time.monotonic() + 5
                while m.is_alive() and time.monotonic() < deadline:
                    time.sleep(0.001)
                assert not m.is_alive()
                m.close()
            p.stdout.close()  # type: ignore[union-attr]
            reap_the_session(p.pid)  # a SIGTERM straggler may die after the root
    finally:
        tree.set_child_subreaper(was)


def test_run_timeout_with_captured_output_does_not_hang_on_grandchildren() -> None:
    """trio#3237/duct.py#55: grandchildren holding the pipe kept run() waiting 100 s."""
    was = tree.is_child_subreaper()
    start = time.monotonic()
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            pyclone3.run(
                ["/bin/sh", "-c", "sleep 100 & sleep 100 & (sleep 100 &); wait"],
                capture_output=True,
                timeout=0.5,
                start_new_session=True,
                kill_tree=True,
            )
    finally:
        tree.set_child_subreaper(was)
    assert time.monotonic() - start < 10


def test_kill_tree_after_the_child_is_reaped_signals_nothing() -> None:
    was = tree.is_child_subreaper()
    p = pyclone3.Popen(["/bin/true"], kill_tree=True)
    try:
        p.wait()
        assert p.kill_tree() == 0
        p.kill()  # harmless, as subprocess's
    finally:
        tree.set_child_subreaper(was)


def test_kill_tree_rejects_a_non_int_signal() -> None:
    child = pyclone3.spawn(["/bin/true"])
    assert child.pidfd is not None
    try:
        with pytest.raises(TypeError):
            tree.kill_tree(child.pidfd, "SIGKILL")  # type: ignore[arg-type]
    finally:
        child.pidfd.wait()
        child.pidfd.close()
