"""Whole trees: a child's descendants found, killed through pidfds, and reaped."""

from __future__ import annotations

import ast
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence

import pytest
from conftest import require, requires_root

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


def test_kill_orphans_ends_what_a_finished_root_left(subreaper: None) -> None:
    """The root exits on its own; its orphans (now ours) and theirs are killed and reaped."""
    script = "sleep 100 & echo $!; sh -c 'sleep 100 & echo $!; wait' & echo $!; exit 0"
    p = pyclone3.Popen(["/bin/sh", "-c", script], stdout=subprocess.PIPE, start_new_session=True)
    assert p.stdout is not None
    pids = [int(p.stdout.readline()) for _ in range(3)]  # the members hold the pipe: no EOF
    p.stdout.close()
    p.wait()
    members = [PidFd(syscalls.pidfd_open(pid), pid=pid) for pid in pids]
    try:
        assert p.returncode == 0 and all(m.is_alive() for m in members)
        assert tree.kill_orphans(p.pid) >= 3  # two sleeps and the nested shell
        assert not any(m.is_alive() for m in members)
        assert tree.kill_orphans(p.pid) == 0  # nothing left
        ours = [pid for pid, (ppid, sid, _) in tree._process_table().items() if sid == p.pid]
        assert ours == []  # all reaped: not even a zombie
    finally:
        for m in members:
            end(m)


def test_kill_orphans_rejects_a_non_int_signal() -> None:
    with pytest.raises(TypeError):
        tree.kill_orphans(os.getpid(), "KILL")  # type: ignore[arg-type]


def test_kill_tree_rejects_a_non_int_signal() -> None:
    child = pyclone3.spawn(["/bin/true"])
    assert child.pidfd is not None
    try:
        with pytest.raises(TypeError):
            tree.kill_tree(child.pidfd, "SIGKILL")  # type: ignore[arg-type]
    finally:
        child.pidfd.wait()
        child.pidfd.close()


def end(p: PidFd) -> None:
    """Kill *p*'s process, let it exit, reap it if it is our child, close the pidfd."""
    try:
        try:
            p.kill()
        except ProcessLookupError:
            pass
        except OSError:  # pidfd_send_signal missing or refused (the sandbox profiles)
            if p.is_alive():  # so unreaped: its PID is its own
                os.kill(p.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while p.is_alive() and time.monotonic() < deadline:
            time.sleep(0.001)
        with contextlib.suppress(ChildProcessError):  # not ours: its parent reaps it
            p.try_wait()
    finally:
        p.close()


def spawn_reporting(
    stack: contextlib.ExitStack, argv: Sequence[str], **kw: object
) -> tuple[PidFd, int]:
    """Spawn *argv*, which prints a PID: its pidfd (ended by *stack*) and that PID."""
    r, w = os.pipe()
    try:
        child = pyclone3.spawn(argv, stdout=w, **kw)  # type: ignore[arg-type]
    except BaseException:
        os.close(r)
        raise
    finally:
        os.close(w)
    with os.fdopen(r, "rb") as out:
        if child.pidfd is None:  # pragma: no cover - the vfork path
            os.kill(child.pid, signal.SIGKILL)
            os.waitpid(child.pid, 0)
            pytest.skip("this spawn path gives no pidfd")
        stack.callback(end, child.pidfd)
        line = out.readline()
    return child.pidfd, int(line)


def opened(stack: contextlib.ExitStack, pid: int) -> PidFd:
    p = PidFd(syscalls.pidfd_open(pid), pid=pid)
    stack.callback(end, p)
    return p


@contextlib.contextmanager
def pid_reused_by_a_stranger() -> Iterator[tuple[PidFd, PidFd, PidFd]]:
    """A child with a grandchild, reaped behind its pidfd's back (``waitpid``),
    and its PID given (clone3's ``set_tid``) to a stranger that has a child.

    Yields the reaped child's pidfd, the stranger's and the stranger's
    child's; kills and reaps everything on the way out, failed or not.
    """
    with contextlib.ExitStack() as stack:
        # Not a session or group leader: nothing keeps its PID once it is reaped.
        root, grandchild = spawn_reporting(stack, ["/bin/sh", "-c", "sleep 100 & echo $!"])
        opened(stack, grandchild)  # killed on the way out; init's orphan by then
        pid = root.pid
        assert os.waitpid(pid, 0)[0] == pid  # reaped elsewhere: the pidfd does not know
        try:
            stranger, its_child_pid = spawn_reporting(
                stack, ["/bin/sh", "-c", "sleep 100 & echo $!; wait"], set_tid=[pid]
            )
        except PermissionError as exc:
            pytest.skip(f"set_tid refused: {exc}")
        except FileExistsError:  # pragma: no cover - someone took the PID first
            pytest.skip(f"PID {pid} was taken before the stranger could have it")
        assert stranger.pid == pid
        its_child = opened(stack, its_child_pid)
        with open(f"/proc/{its_child_pid}/stat", "rb") as f:  # the stranger's own child
            assert int(f.read().rsplit(b")", 1)[1].split()[1]) == pid
        yield root, stranger, its_child


def untouched(p: PidFd) -> bool:
    """*p*'s process still runs, is not stopped, and does not exit in the next 100 ms."""
    deadline = time.monotonic() + 0.1
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{p.pid}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except FileNotFoundError:  # killed and reaped
            return False
        if not p.is_alive() or state in (b"T", b"t"):  # is_alive after: the read was p's
            return False
        time.sleep(0.005)
    return True


@requires_root
@require("clone3")
def test_descendants_of_a_child_reaped_elsewhere_are_not_the_strangers_given_its_pid() -> None:
    with pid_reused_by_a_stranger() as (root, stranger, its_child):
        found = tree.descendants(root)
        for m in found:
            m.close()
        assert [m.pid for m in found] == []
        assert untouched(stranger) and untouched(its_child)


@requires_root
@require("clone3")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_kill_tree_of_a_child_reaped_elsewhere_spares_the_stranger_given_its_pid(
    sig: int,
) -> None:
    """The issue: kill_tree read the table by the reaped child's PID and killed
    the stranger's child (and, by kill(2), the stranger where that fallback ran)."""
    with pid_reused_by_a_stranger() as (root, stranger, its_child):
        assert tree.kill_tree(root, sig) == 0
        assert untouched(stranger), "the stranger was signalled"
        assert untouched(its_child), "the stranger's child was signalled"


@requires_root
@require("clone3")
def test_a_member_is_not_taken_through_a_parent_pid_now_a_strangers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The parent a member's /proc entry names must be proven too. The table
    here was read while the root's child P and P's child C lived; then both
    were reaped and their PIDs reused, C's by a child of the stranger that
    took P's. C's entry still names P's PID as its parent, but not P."""
    with contextlib.ExitStack() as stack, pid_reused_by_a_stranger() as (_, stranger, its_child):
        root = pyclone3.spawn(["/bin/sleep", "100"]).pidfd
        assert root is not None
        stack.callback(end, root)
        me = os.getpid()
        stale = {
            root.pid: (me, 0, b"S"),
            stranger.pid: (root.pid, 0, b"S"),  # was P
            its_child.pid: (stranger.pid, 0, b"S"),  # was C
        }
        monkeypatch.setattr(tree, "_process_table", lambda: dict(stale))
        found = tree.descendants(root)
        for m in found:
            m.close()
        assert [m.pid for m in found] == []


def test_tree_touches_no_other_modules_private_names() -> None:
    """House rule: public PidFd and syscalls API only; raw lib calls just for prctl."""
    with open(tree.__file__, encoding="utf-8") as f:
        module = ast.parse(f.read())
    allowed_lib = {"pyclone3_set_child_subreaper", "pyclone3_get_child_subreaper"}
    bad = []
    for node in ast.walk(module):
        if isinstance(node, ast.ImportFrom):
            bad += [alias.name for alias in node.names if alias.name.startswith("_")]
        elif isinstance(node, ast.Attribute):
            private = node.attr.startswith("_") and not node.attr.startswith("__")
            on_lib = isinstance(node.value, ast.Name) and node.value.id == "lib"
            if private or (on_lib and node.attr not in allowed_lib):
                bad.append(ast.unparse(node))
    assert bad == []
