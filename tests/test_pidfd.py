"""PidFd semantics against real processes."""

from __future__ import annotations

import gc
import math
import os
import select
import signal
import sys
import threading
import time
import warnings

import pytest
from conftest import (
    fork_child,
    needs_threads,
    require,
    requires_clone_options,
    sleeper,
    spawn,
    thread_sleeps,
    users_of,
)

import pyclone3
from pyclone3 import PidFd, WaitStatus, WaitTimeout, syscalls
from pyclone3 import _child as child_module
from pyclone3.pidfd import state_of

pytestmark = require("waitid_pidfd")  # these tests reap through pidfds

# ---- construction and ownership -------------------------------------------


@require("pidfd_open")
def test_open_by_pid_and_context_manager_closes() -> None:
    with PidFd.open(os.getpid()) as own:
        fd = own.fileno()
        assert os.path.exists(f"/proc/self/fd/{fd}")
        assert own.pid == os.getpid() and not own.closed
    assert own.closed
    with pytest.raises(ValueError):
        own.fileno()


@require("pidfd_open")
def test_pid_is_found_from_the_fd_alone() -> None:
    fd = syscalls.pidfd_open(os.getpid())
    with PidFd(fd) as own:
        assert own.pid == os.getpid()


@require("pidfd_open")
def test_pid_lookup_falls_back_to_fdinfo(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_ioctl(*args: object) -> object:  # a kernel before 6.13
        raise OSError(25, "Inappropriate ioctl for device")

    monkeypatch.setattr(syscalls, "pidfd_get_info", no_ioctl)
    fd = syscalls.pidfd_open(os.getpid())
    with PidFd(fd) as own:
        assert own.pid == os.getpid()


def test_wrapping_a_non_pidfd_is_a_value_error() -> None:
    r, w = os.pipe()
    try:
        with pytest.raises(ValueError, match="not a pidfd"):
            PidFd(r)
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize("fd, exc", [("3", TypeError), (3.0, TypeError), (-1, ValueError)])
def test_bad_fd_arguments(fd: object, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        PidFd(fd)  # type: ignore[arg-type]


@require("pidfd_open")
def test_double_close_is_harmless() -> None:
    own = PidFd.open(os.getpid())
    own.close()
    own.close()
    assert own.closed


@require("pidfd_open")
@pytest.mark.parametrize(
    "use",
    [
        lambda p: p.fileno(),
        lambda p: p.send_signal(0),
        lambda p: p.kill(),
        lambda p: p.terminate(),
        lambda p: p.wait(),
        lambda p: p.wait(0),
        lambda p: p.try_wait(),
        lambda p: p.is_alive(),
        lambda p: p.getfd(0),
        lambda p: p.info(),
        lambda p: p.detach(),
    ],
)
def test_every_method_of_a_closed_pidfd_raises_value_error(use: object) -> None:
    own = PidFd.open(os.getpid())
    own.close()
    with pytest.raises(ValueError, match="closed"):
        use(own)  # type: ignore[operator]


@require("pidfd_open")
def test_detach_hands_over_the_fd() -> None:
    own = PidFd.open(os.getpid())
    fd = own.detach()
    assert own.closed
    os.fstat(fd)  # still open: now ours
    os.close(fd)


@require("pidfd_open")
def test_garbage_collected_open_pidfd_warns_and_closes() -> None:
    own = PidFd.open(os.getpid())
    fd = own.fileno()
    with pytest.warns(ResourceWarning, match="unclosed <PidFd"):
        del own
        gc.collect()
    assert not os.path.exists(f"/proc/self/fd/{fd}")


@require("pidfd_open")
def test_garbage_collected_pidfd_closes_even_when_warnings_are_errors() -> None:
    own = PidFd.open(os.getpid())
    fd = own.fileno()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        unraisable: list[object] = []
        old_hook = sys.unraisablehook
        sys.unraisablehook = unraisable.append
        try:
            del own
            gc.collect()
        finally:
            sys.unraisablehook = old_hook
    assert len(unraisable) == 1  # the warning, raised inside __del__, was reported
    assert not os.path.exists(f"/proc/self/fd/{fd}")


def test_repr_shows_fd_pid_and_state() -> None:
    with spawn("/bin/sh", "-c", "exit 2") as child:
        text = repr(child)
        assert f"fd={child.fileno()}" in text and f"pid={child.pid}" in text
        child.wait()
        assert "exit_code=2" in repr(child)
    assert "closed" in repr(child)


# ---- waiting -----------------------------------------------------------------


def test_a_with_block_ends_in_a_subclass_close() -> None:
    closed = []

    class Logged(PidFd):
        def close(self) -> None:
            closed.append(self.pid)
            super().close()

    child = pyclone3.spawn(["/bin/true"])
    assert child.pidfd is not None
    fd = child.pidfd.detach()
    with Logged(fd, pid=child.pid) as logged:
        logged.wait()
    assert closed == [child.pid] and logged.closed


def test_wait_returns_status_and_caches_it() -> None:
    with spawn("/bin/sh", "-c", "exit 7") as child:
        status = child.wait()
        assert isinstance(status, WaitStatus)
        assert status.exit_code == 7 and status.pid == child.pid
        assert status.rusage is not None and status.rusage.ru_maxrss > 0  # the child's own
        assert child.wait() is status and child.try_wait() is status
        assert child.returncode == 7 and not child.is_alive()


@require("pidfd_send_signal")
def test_try_wait_is_none_while_running_then_reaps() -> None:
    with sleeper() as child:
        assert child.try_wait() is None and child.is_alive() and child.returncode is None
        child.kill()
        assert child.wait().returncode == -signal.SIGKILL


@require("pidfd_send_signal")
def test_terminate_gives_minus_sigterm() -> None:
    with sleeper() as child:
        child.terminate()
        assert child.wait().returncode == -signal.SIGTERM


@require("pidfd_send_signal")
@pytest.mark.parametrize("timeout", [0, 0.0, -1, -math.inf, 0.05])
def test_wait_times_out_on_a_running_child(timeout: float) -> None:
    with sleeper() as child:
        started = time.monotonic()
        with pytest.raises(WaitTimeout) as info:
            child.wait(timeout)
        assert isinstance(info.value, TimeoutError)
        assert info.value.pid == child.pid and info.value.timeout == timeout
        assert time.monotonic() - started < 5
        assert child.is_alive()  # untouched: the wait can be repeated
        child.kill()
        assert child.wait(timeout=10).returncode == -9


@pytest.mark.parametrize("timeout", [None, math.inf, 1e300, 2**70, 10**9])
def test_long_and_infinite_timeouts_do_not_overflow(timeout: float) -> None:
    with spawn("/bin/sleep", "0.05") as child:
        assert child.wait(timeout).exit_code == 0


@require("pidfd_send_signal")
@pytest.mark.parametrize(
    "timeout, exc", [(math.nan, ValueError), ("1", TypeError), (True, TypeError), ([], TypeError)]
)
def test_bad_timeouts_are_refused_before_waiting(timeout: object, exc: type) -> None:
    with sleeper() as child:
        with pytest.raises(exc):
            child.wait(timeout)  # type: ignore[arg-type]
        child.kill()
        child.wait()


def test_wait_wakes_promptly_on_exit() -> None:
    with spawn("/bin/sleep", "0.2") as child:
        started = time.monotonic()
        child.wait(timeout=30)
        assert time.monotonic() - started < 5


def test_wait_sleeps_once_instead_of_polling() -> None:
    # A polling loop sleeps and wakes over and over during a 0.5 s wait (the
    # standard library's does about 15 times); a pidfd wait sleeps once.
    with spawn("/bin/sleep", "0.5") as child:
        switches = thread_sleeps()
        child.wait(timeout=30)
        assert thread_sleeps() - switches <= 3


@require("pidfd_send_signal")
def test_wait_is_interrupted_by_a_signal_handler_exception() -> None:
    class Interrupted(Exception):
        pass

    def handler(signum: int, frame: object) -> None:
        raise Interrupted

    old = signal.signal(signal.SIGALRM, handler)
    try:
        with sleeper() as child:
            signal.setitimer(signal.ITIMER_REAL, 0.05)
            with pytest.raises(Interrupted):
                child.wait()
            assert child.is_alive()
            child.kill()
            assert child.wait().returncode == -9  # can wait again after the interruption
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_wait_survives_signals_that_do_not_raise() -> None:
    hits = []
    old = signal.signal(signal.SIGALRM, lambda *a: hits.append(1))
    try:
        with spawn("/bin/sleep", "0.3") as child:
            signal.setitimer(signal.ITIMER_REAL, 0.01, 0.01)
            assert child.wait(timeout=10).exit_code == 0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert len(hits) > 3


def test_spurious_readiness_loops_back_to_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    # Simulate a kernel waking us (readable pidfd) with nothing to reap, as
    # for a traced child: wait must keep waiting, not return or spin.
    real_poll = child_module.poll_fd
    wakeups = []

    def early_poll(
        fd: int, events: int, deadline: object, cap_ms: object = None, wake: int = -1
    ) -> int:
        if len(wakeups) < 3:
            wakeups.append(1)
            return 1  # POLLIN
        return real_poll(fd, events, deadline, cap_ms, wake)  # type: ignore[arg-type]

    monkeypatch.setattr(child_module, "poll_fd", early_poll)
    with spawn("/bin/sleep", "0.2") as child:
        assert child.wait(timeout=10).exit_code == 0
    assert len(wakeups) == 3


@needs_threads
def test_two_threads_waiting_get_the_same_status() -> None:
    results: list[WaitStatus] = []
    with spawn("/bin/sleep", "0.2") as child:
        threads = [threading.Thread(target=lambda: results.append(child.wait())) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(results) == 4 and all(r == results[0] for r in results)
    assert results[0].exit_code == 0


@needs_threads
def test_close_while_another_thread_waits_defers_the_real_close() -> None:
    child = spawn("/bin/sleep", "0.3")
    fd = child.fileno()
    entered = threading.Event()
    got: list[object] = []

    def inside_a_call() -> None:  # a long use of the fd, as a wait or a sweep makes
        state = state_of(child)
        token = object()
        fd = state.hold(token)
        try:
            entered.set()
            got.append(child_module.poll_fd(fd, select.POLLIN, None))
        finally:
            state.release(token)

    waiter = threading.Thread(target=inside_a_call)
    waiter.start()
    assert entered.wait(10)
    child.close()
    assert child.closed
    assert os.path.exists(f"/proc/self/fd/{fd}")  # still held by the call
    waiter.join()
    assert got == [select.POLLIN]
    assert not os.path.exists(f"/proc/self/fd/{fd}")  # closed when it left
    os.waitpid(child.pid, 0)


@needs_threads
@pytest.mark.parametrize("timeout", [30.0, 1e9])
def test_close_while_another_thread_waits_fails_that_waiter(timeout: float) -> None:
    """A timed wait sleeps in poll: the waiter gets ValueError at once, not the
    exit 30 s later; nothing leaks."""
    child = spawn("/bin/sleep", "30")
    pid = child.pid
    errors: list[BaseException] = []

    def waiter() -> None:
        try:
            child.wait(timeout)
        except BaseException as exc:  # checked below
            errors.append(exc)

    thread = threading.Thread(target=waiter)
    thread.start()
    deadline = time.monotonic() + 10
    while users_of(child) == 0:  # until the waiter is inside wait()
        assert time.monotonic() < deadline
        time.sleep(0.001)
    started = time.monotonic()
    child.close()
    thread.join(10)
    assert not thread.is_alive()
    assert time.monotonic() - started < 5
    assert len(errors) == 1 and isinstance(errors[0], ValueError), errors
    os.kill(pid, signal.SIGKILL)  # the process itself is untouched: ours to reap
    os.waitpid(pid, 0)


@needs_threads
def test_close_during_a_wait_without_timeout_takes_effect_when_it_returns() -> None:
    """A wait without a timeout is one blocking waitid, which a close cannot cut
    short: the close is deferred until the wait returns the status."""
    child = spawn("/bin/sleep", "0.3")
    fd = child.fileno()
    got: list[WaitStatus] = []
    thread = threading.Thread(target=lambda: got.append(child.wait()))
    thread.start()
    deadline = time.monotonic() + 10
    while users_of(child) == 0:  # until the waiter is inside wait()
        assert time.monotonic() < deadline
        time.sleep(0.001)
    child.close()
    assert child.closed and os.path.exists(f"/proc/self/fd/{fd}")  # held by the wait
    thread.join(10)
    assert not thread.is_alive()
    assert len(got) == 1 and got[0].exit_code == 0 and child.status == got[0]
    assert not os.path.exists(f"/proc/self/fd/{fd}")  # closed when the wait let go


# ---- signals -------------------------------------------------------------------


def test_signalling_an_exited_child_raises_process_lookup_error() -> None:
    with spawn("/bin/true") as child:
        while child.is_alive():
            time.sleep(0.005)
        with pytest.raises(ProcessLookupError):  # zombie, not yet reaped
            child.kill()
        child.wait()
        with pytest.raises(ProcessLookupError):  # reaped
            child.send_signal(signal.SIGTERM)


@require("pidfd_send_signal")
@require("pidfd_open")
def test_send_signal_checks_types() -> None:
    with PidFd.open(os.getpid()) as own:
        with pytest.raises(TypeError):
            own.send_signal("SIGTERM")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            own.send_signal(0, flags="PIDFD_SIGNAL_THREAD")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            own.send_signal(0, flags=-1)
        own.send_signal(0)


# ---- processes that are not our children -------------------------------------------


@pytest.fixture
def grandchild() -> object:
    made: list[PidFd] = []

    def make(code: int, parent_reaps_after: float) -> PidFd:
        r, w = os.pipe()

        def middle() -> int:
            os.close(r)
            pid = os.fork()
            if pid == 0:
                time.sleep(0.1)
                os._exit(code)
            os.write(w, str(pid).encode())
            time.sleep(parent_reaps_after)
            os.waitpid(pid, 0)
            return 0

        parent = fork_child(middle)
        made.append(parent)
        os.close(w)
        pid = int(os.read(r, 20))
        os.close(r)
        return PidFd.open(pid)

    yield make
    for parent in made:
        parent.wait()
        parent.close()


@require("pidfd_info_exit")
def test_wait_on_a_non_child_returns_its_status(grandchild: object) -> None:
    with grandchild(13, 0.3) as other:  # type: ignore[operator]
        status = other.wait(timeout=10)
    assert status.exit_code == 13 and status.rusage is None


@require("pidfd_info_exit")
def test_wait_on_a_non_child_times_out_while_it_runs(grandchild: object) -> None:
    with grandchild(0, 0.5) as other:  # type: ignore[operator]
        with pytest.raises(WaitTimeout):
            other.wait(timeout=0.02)
        assert other.wait(timeout=10).exit_code == 0


@require("pidfd_open")
def test_wait_on_a_non_child_without_exit_info_raises_after_exit(
    grandchild: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(child_module, "_exit_info_supported", lambda: False)  # pre-6.15
    with grandchild(5, 0.0) as other:  # type: ignore[operator]
        assert other.try_wait() is None  # still running: no error yet
        with pytest.raises(ChildProcessError, match="PIDFD_INFO_EXIT"):
            other.wait(timeout=10)
        assert not other.is_alive()


@require("pidfd_info_exit")
def test_child_reaped_by_someone_else_still_reports_its_status() -> None:
    with spawn("/bin/sh", "-c", "exit 21") as child:
        # Someone else's reaper, e.g. a SIGCHLD handler calling waitpid(-1).
        pid, wstatus = os.waitpid(-1, 0)
        assert pid == child.pid and os.waitstatus_to_exitcode(wstatus) == 21
        status = child.wait(timeout=5)
    assert status.exit_code == 21


def test_pidfd_of_a_child_reaped_elsewhere_is_not_signalled() -> None:
    with spawn("/bin/true") as child:
        os.waitpid(child.pid, 0)
        with pytest.raises(ProcessLookupError):
            child.send_signal(signal.SIGKILL)


def test_getfd_through_the_object() -> None:
    if not pyclone3.features().pidfd_getfd:
        pytest.skip("pidfd_getfd unsupported")
    with PidFd.open(os.getpid()) as own:
        r, w = os.pipe()
        dup = own.getfd(w)
        os.write(dup, b"x")
        assert os.read(r, 1) == b"x"
        for fd in (r, w, dup):
            os.close(fd)


# ---- identity ---------------------------------------------------------------------


@require("pidfd_send_signal")
@require("pidfd_identity")
def test_pidfds_of_one_process_are_equal_and_hash_alike() -> None:
    with PidFd.open(os.getpid()) as a, PidFd.open(os.getpid()) as b, sleeper() as other:
        assert a == b and hash(a) == hash(b) and a is not b
        assert a != other and len({a, b, other}) == 2
        table = {a: "me"}
        assert table[b] == "me"  # supervisors can key tables by process
        other.kill()
        other.wait()


@require("pidfd_send_signal")
@require("pidfd_identity")
def test_identity_survives_the_process_and_the_close() -> None:
    with sleeper() as child:
        again = PidFd.open(child.pid)
        key = hash(child)
        child.kill()
        child.wait()
        assert child == again  # the process is gone; its identity is not
        again.close()
    assert hash(child) == key and child == again  # kept once known


@require("pidfd_open")
def test_without_identity_a_pidfd_equals_only_itself() -> None:
    a = PidFd.open(os.getpid())
    b = PidFd.open(os.getpid())
    a.close()
    b.close()  # closed before any comparison: no key can be had
    assert a == a and a != b and hash(a) != hash(b)


@require("pidfd_send_signal")
@require("pidfd_identity")
def test_inode_names_the_process_and_open_takes_it_back() -> None:
    """util-linux's PID:inode: the pair reopens exactly that process, and no other."""
    with PidFd.open(os.getpid()) as me, sleeper() as other:
        assert me.inode is not None and other.inode is not None
        assert me.inode == os.fstat(me.fileno()).st_ino and me.inode != other.inode
        with PidFd.open(os.getpid(), inode=me.inode) as again:
            assert again == me
        with pytest.raises(ProcessLookupError) as info:
            PidFd.open(os.getpid(), inode=other.inode)  # the PID is another's now
        assert info.value.filename == f"{os.getpid()}:{other.inode}"
        other.kill()
        other.wait()


@require("pidfd_open")
@pytest.mark.parametrize(
    ("inode", "error"), [("1", TypeError), (True, TypeError), (0, ValueError)]
)
def test_open_checks_the_inode_before_any_syscall(inode: object, error: type) -> None:
    with pytest.raises(error):
        PidFd.open(os.getpid(), inode=inode)  # type: ignore[arg-type]


@require("pidfd_open")
def test_a_closed_pidfd_whose_inode_was_never_asked_has_none() -> None:
    a = PidFd.open(os.getpid())
    a.close()
    assert a.inode is None


@require("pidfd_open")
def test_comparing_with_other_types() -> None:
    with PidFd.open(os.getpid()) as a:
        assert a != os.getpid() and (a == "x") is False


# ---- setns ----------------------------------------------------------------------------


def _in_new_uts_namespace(hostname: str) -> PidFd:
    """A child of ours in a new UTS namespace with *hostname*; ready when returned."""
    from pyclone3 import CloneFlag

    r, w = os.pipe()
    try:
        child = pyclone3.spawn(
            ["/bin/sh", "-c", f"hostname {hostname}; echo ready; exec sleep 30"],
            stdout=w,
            clone_flags=CloneFlag.CLONE_NEWUTS,
        )
    finally:
        os.close(w)
    with os.fdopen(r, "rb") as f:
        assert f.read(5) == b"ready"
    assert child.pidfd is not None
    return child.pidfd


@require("pidfd_send_signal")
@requires_clone_options
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a UTS namespace")
def test_setns_enters_the_namespaces_of_a_process() -> None:
    import socket

    from pyclone3 import CloneFlag

    with _in_new_uts_namespace("pyclone3-setns") as target:

        def enter() -> int:  # in a disposable process: setns moves the caller
            target.setns(CloneFlag.CLONE_NEWUTS)
            return 0 if socket.gethostname() == "pyclone3-setns" else 1

        mover = fork_child(enter)
        with mover:
            assert mover.wait(timeout=30).exit_code == 0
        assert socket.gethostname() != "pyclone3-setns"  # we did not move
        target.kill()
        target.wait()


@pytest.mark.skipif(os.geteuid() == 0, reason="checks the unprivileged error")
def test_setns_unprivileged_is_a_permission_error() -> None:
    from pyclone3 import CloneFlag

    with PidFd.open(1) as init, pytest.raises(PermissionError):
        init.setns(CloneFlag.CLONE_NEWNET)


@require("pidfd_open")
@pytest.mark.parametrize("flags, exc", [(0, ValueError), (1 << 8, ValueError), ("NET", TypeError)])
def test_setns_checks_flags(flags: object, exc: type) -> None:
    with PidFd.open(os.getpid()) as own, pytest.raises(exc):
        own.setns(flags)  # type: ignore[arg-type]


@needs_threads
def test_a_poll_racing_the_blocking_reap_never_calls_the_child_foreign(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """try_wait() in a loop while wait() reaps: an ECHILD seen between the reap
    and its record must find the reaper's token or its status. Before Linux
    6.15 (simulated) a foreign verdict makes try_wait() raise ChildProcessError."""
    monkeypatch.setattr(child_module, "_exit_info_supported", lambda: False)
    for _ in range(400):
        got: dict[str, object] = {}
        child = pyclone3.spawn(["/bin/true"]).pidfd
        assert child is not None

        def poller(child: PidFd = child, got: dict[str, object] = got) -> None:
            try:
                status = None
                while status is None:
                    status = child.try_wait()
                got["poll"] = status
            except BaseException as exc:  # reported below
                got["poll"] = exc

        thread = threading.Thread(target=poller)
        thread.start()
        with child:
            got["wait"] = child.wait()
            thread.join()
            assert got["poll"] is got["wait"], got
            assert not state_of(child).foreign and not state_of(child).users


@needs_threads
def test_waiters_racing_the_reaping_thread_get_its_status(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before PIDFD_INFO_EXIT (simulated), a waiter that gets ECHILD because a
    sibling thread has just reaped must take that thread's status, not fail."""
    monkeypatch.setattr(child_module, "_exit_info_supported", lambda: False)

    def waiter(child: PidFd, results: list[WaitStatus], errors: list[BaseException]) -> None:
        try:
            results.append(child.wait())
        except BaseException as exc:  # reported below
            errors.append(exc)

    for _ in range(200):
        results: list[WaitStatus] = []
        errors: list[BaseException] = []
        with spawn("/bin/sleep", "0.002") as child:
            threads = [
                threading.Thread(target=waiter, args=(child, results, errors)) for _ in range(4)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        assert not errors, errors
        assert len(results) == 4 and all(r == results[0] for r in results)
