"""Each syscall wrapper against real children and the real kernel."""

from __future__ import annotations

import errno
import fcntl
import os
import resource
import signal
import subprocess
import sys
import time

import pytest
from conftest import FEATURES, fork_child, require, sleeper, spawn

from pyclone3 import ChildCode, CloneFlag, IdType, PidfdInfoFlag, WaitFlag, syscalls

WEXITED = WaitFlag.WEXITED


def unused_pid() -> int:
    with open("/proc/sys/kernel/pid_max", encoding="ascii") as f:
        return int(f.read()) + 1


# ---- pidfd_open ----------------------------------------------------------


def test_pidfd_open_returns_a_cloexec_fd() -> None:
    fd = syscalls.pidfd_open(os.getpid())
    try:
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    finally:
        os.close(fd)


@require("pidfd_nonblock")
def test_pidfd_open_nonblock() -> None:
    fd = syscalls.pidfd_open(os.getpid(), os.O_NONBLOCK)
    try:
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK
    finally:
        os.close(fd)


def test_pidfd_open_missing_process_is_esrch() -> None:
    with pytest.raises(ProcessLookupError):
        syscalls.pidfd_open(unused_pid())


def test_pidfd_open_unknown_flag_is_einval() -> None:
    with pytest.raises(OSError) as info:
        syscalls.pidfd_open(os.getpid(), 1 << 20)
    assert info.value.errno == errno.EINVAL


@pytest.mark.parametrize(
    "pid, exc",
    [
        (0, ValueError),
        (-1, ValueError),
        (2**40, ValueError),
        ("1", TypeError),
        (1.0, TypeError),
        (True, TypeError),
    ],
)
def test_pidfd_open_checks_arguments_first(pid: object, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        syscalls.pidfd_open(pid)  # type: ignore[arg-type]


# ---- waitid ---------------------------------------------------------------


def test_waitid_reports_exit_code_and_rusage() -> None:
    def burn() -> int:
        end = time.process_time() + 0.05
        while time.process_time() < end:
            pass
        return 42

    child = fork_child(burn)
    with child:
        status = syscalls.waitid(IdType.P_PIDFD, child, WEXITED)
    assert status is not None
    assert (status.pid, status.code, status.exit_code) == (child.pid, ChildCode.CLD_EXITED, 42)
    assert status.returncode == 42 and status.exited and not status.signaled
    assert isinstance(status.rusage, resource.struct_rusage)
    assert status.rusage.ru_maxrss > 0
    assert status.rusage.ru_utime + status.rusage.ru_stime >= 0.04
    assert status.uid == os.getuid()


def test_waitid_reports_a_killing_signal() -> None:
    with sleeper() as child:
        syscalls.pidfd_send_signal(child, signal.SIGKILL)
        status = syscalls.waitid(IdType.P_PIDFD, child, WEXITED)
    assert status is not None
    assert status.code == ChildCode.CLD_KILLED and status.signaled
    assert status.signal == signal.SIGKILL and status.returncode == -9
    assert status.exit_code is None and not status.core_dumped


def test_waitid_wnohang_returns_none_while_running() -> None:
    with sleeper() as child:
        assert syscalls.waitid(IdType.P_PIDFD, child, WEXITED | WaitFlag.WNOHANG) is None
        syscalls.pidfd_send_signal(child, signal.SIGKILL)
        assert syscalls.waitid(IdType.P_PIDFD, child, WEXITED) is not None


@require("pidfd_nonblock")
def test_waitid_on_nonblocking_pidfd_returns_none_while_running() -> None:
    with sleeper() as child:
        nb = syscalls.pidfd_open(child.pid, os.O_NONBLOCK)
        try:
            assert syscalls.waitid(IdType.P_PIDFD, nb, WEXITED) is None
            syscalls.pidfd_send_signal(nb, signal.SIGKILL)
            status = syscalls.waitid(IdType.P_PIDFD, child, WEXITED)
            assert status is not None and status.returncode == -9
        finally:
            os.close(nb)


def test_waitid_wnowait_leaves_the_child_reapable() -> None:
    with spawn("/bin/sh", "-c", "exit 3") as child:
        peek = syscalls.waitid(IdType.P_PIDFD, child, WEXITED | WaitFlag.WNOWAIT)
        assert peek is not None and peek.exit_code == 3 and peek.rusage is None
        reaped = syscalls.waitid(IdType.P_PIDFD, child, WEXITED)
        assert reaped is not None and reaped.exit_code == 3 and reaped.rusage is not None
        with pytest.raises(ChildProcessError):
            syscalls.waitid(IdType.P_PIDFD, child, WEXITED)


def test_waitid_reports_stop_and_continue() -> None:
    with sleeper() as child:
        syscalls.pidfd_send_signal(child, signal.SIGSTOP)
        stopped = syscalls.waitid(IdType.P_PIDFD, child, WaitFlag.WSTOPPED)
        assert stopped is not None and stopped.stopped
        assert stopped.signal == signal.SIGSTOP and stopped.returncode is None
        syscalls.pidfd_send_signal(child, signal.SIGCONT)
        resumed = syscalls.waitid(IdType.P_PIDFD, child, WaitFlag.WCONTINUED)
        assert resumed is not None and resumed.continued and resumed.signal is None
        syscalls.pidfd_send_signal(child, signal.SIGKILL)
        assert syscalls.waitid(IdType.P_PIDFD, child, WEXITED) is not None


def test_waitid_by_pid_works_too() -> None:
    with spawn("/bin/true") as child:
        status = syscalls.waitid(IdType.P_PID, child.pid, WEXITED)
    assert status is not None and status.exit_code == 0


def test_waitid_on_non_pidfd_is_ebadf() -> None:
    r, w = os.pipe()
    try:
        with pytest.raises(OSError) as info:
            syscalls.waitid(IdType.P_PIDFD, r, WEXITED | WaitFlag.WNOHANG)
        assert info.value.errno == errno.EBADF
    finally:
        os.close(r)
        os.close(w)


def test_waitid_on_a_non_child_is_echild() -> None:
    fd = syscalls.pidfd_open(os.getpid())
    try:
        with pytest.raises(ChildProcessError):
            syscalls.waitid(IdType.P_PIDFD, fd, WEXITED | WaitFlag.WNOHANG)
    finally:
        os.close(fd)


def test_a_wait_buffer_is_told_from_other_fd_users() -> None:
    """A blocking reap's token (its buffer) is what _echild looks for among an fd's users."""
    from pyclone3._clone3 import ffi

    assert syscalls.is_wait_buffer(syscalls.new_wait_buffer())
    assert syscalls.new_wait_buffer() is not syscalls.new_wait_buffer()  # one per call
    for other in (object(), ffi.new("int *"), ffi.new("struct pyclone3_waitinfo *"), None):
        assert not syscalls.is_wait_buffer(other)


def test_a_reap_keeps_its_buffer_for_the_rusage_a_poll_does_not() -> None:
    with sleeper() as child:
        buf = syscalls.new_wait_buffer()
        assert (
            syscalls.waitid_with(IdType.P_PIDFD, child.fileno(), WEXITED | WaitFlag.WNOHANG, buf)
            is None
        )
        syscalls.pidfd_send_signal(child, signal.SIGKILL)
        status = syscalls.waitid_with(IdType.P_PIDFD, child.fileno(), WEXITED, buf)
        assert status is not None and status.signal == signal.SIGKILL
        assert status.rusage is not None and status.rusage.ru_maxrss == buf.rusage.ru_maxrss > 0


def test_waitid_without_an_event_class_is_einval() -> None:
    with sleeper() as child:
        with pytest.raises(OSError) as info:
            syscalls.waitid(IdType.P_PIDFD, child, WaitFlag.WNOHANG)
        assert info.value.errno == errno.EINVAL
        syscalls.pidfd_send_signal(child, signal.SIGKILL)
        syscalls.waitid(IdType.P_PIDFD, child, WEXITED)


def test_waitid_exit_signal_zero_child_needs_wall() -> None:
    child = fork_child(lambda: 9, exit_signal=0)
    with child:
        # Without __WALL a child that sends no SIGCHLD is invisible to waitid.
        with pytest.raises(ChildProcessError):
            syscalls.waitid(IdType.P_PIDFD, child, WEXITED)
        status = syscalls.waitid(IdType.P_PIDFD, child, WEXITED | WaitFlag["__WALL"])
    assert status is not None and status.exit_code == 9


# ---- pidfd_send_signal -----------------------------------------------------


def test_send_signal_zero_probes_and_esrch_after_reap() -> None:
    with spawn("/bin/true") as child:
        syscalls.waitid(IdType.P_PIDFD, child, WEXITED)
        with pytest.raises(ProcessLookupError):
            syscalls.pidfd_send_signal(child, 0)


def test_send_signal_to_a_non_pidfd_is_ebadf() -> None:
    r, w = os.pipe()
    try:
        with pytest.raises(OSError) as info:
            syscalls.pidfd_send_signal(r, 0)
        assert info.value.errno == errno.EBADF
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize("sig, exc", [(-1, ValueError), (65, ValueError), ("TERM", TypeError)])
def test_send_signal_checks_arguments(sig: object, exc: type[Exception]) -> None:
    fd = syscalls.pidfd_open(os.getpid())
    try:
        with pytest.raises(exc):
            syscalls.pidfd_send_signal(fd, sig)  # type: ignore[arg-type]
    finally:
        os.close(fd)


def test_send_signal_unknown_flag_is_einval() -> None:
    fd = syscalls.pidfd_open(os.getpid())
    try:
        with pytest.raises(OSError) as info:
            syscalls.pidfd_send_signal(fd, 0, 1 << 30)
        assert info.value.errno == errno.EINVAL
    finally:
        os.close(fd)


# ---- pidfd_getfd -------------------------------------------------------------


@require("pidfd_getfd")
def test_pidfd_getfd_takes_a_childs_pipe() -> None:
    r, w = os.pipe()
    go_r, go_w = os.pipe()

    def hold() -> int:
        os.close(r)
        os.close(go_w)
        os.read(go_r, 1)  # keep `w` open until the parent has taken it
        return 0

    child = fork_child(hold)
    os.close(go_r)
    os.close(w)
    with child:
        stolen = syscalls.pidfd_getfd(child, w)
        try:
            assert fcntl.fcntl(stolen, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
            os.write(stolen, b"through the child's fd")
        finally:
            os.close(stolen)
        with pytest.raises(OSError) as info:
            syscalls.pidfd_getfd(child, 999)
        assert info.value.errno == errno.EBADF
        os.close(go_w)
        status = syscalls.waitid(IdType.P_PIDFD, child, WEXITED)
        assert status is not None and status.exit_code == 0
    assert os.read(r, 100) == b"through the child's fd"
    os.close(r)


# ---- PIDFD_GET_INFO ---------------------------------------------------------------


@require("pidfd_get_info")
def test_pidfd_get_info_reports_ids() -> None:
    with sleeper() as child:
        info = syscalls.pidfd_get_info(child)
        assert info.pid == child.pid and info.tgid == child.pid
        assert info.ppid == os.getpid()
        assert info.ruid == os.getuid() and info.egid == os.getegid()
        assert PidfdInfoFlag.PIDFD_INFO_PID in info.mask
        assert info.exit_code is None
        child.kill()
        child.wait()


@require("pidfd_info_exit")
def test_pidfd_get_info_exit_after_reap() -> None:
    with spawn("/bin/sh", "-c", "exit 4") as child:
        syscalls.waitid(IdType.P_PIDFD, child, WEXITED)
        info = syscalls.pidfd_get_info(child, PidfdInfoFlag.PIDFD_INFO_EXIT)
        status = info.wait_status()
    assert status is not None and status.exit_code == 4


@require("pidfd_get_info")
def test_pidfd_get_info_after_reap_without_exit_is_esrch() -> None:
    with spawn("/bin/true") as child:
        syscalls.waitid(IdType.P_PIDFD, child, WEXITED)
        with pytest.raises(ProcessLookupError):
            syscalls.pidfd_get_info(child, PidfdInfoFlag.PIDFD_INFO_PID)


@require("pidfd_get_info")
def test_pidfd_get_info_on_a_pipe_is_enotty() -> None:
    r, w = os.pipe()
    try:
        with pytest.raises(OSError) as info:
            syscalls.pidfd_get_info(r)
        assert info.value.errno == errno.ENOTTY
    finally:
        os.close(r)
        os.close(w)


# ---- clone3 ------------------------------------------------------------------------


@require("clone3")
def test_clone3_without_pidfd_returns_none_fd() -> None:
    pid, fd = syscalls.clone3()
    if pid == 0:
        os._exit(11)
    assert fd is None
    _, wstatus = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(wstatus) == 11


@require("clone_pidfd")
def test_clone3_pidfd_names_the_child() -> None:
    pid, fd = syscalls.clone3(flags=CloneFlag.CLONE_PIDFD)
    if pid == 0:
        os._exit(12)
    assert fd is not None
    try:
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        status = syscalls.waitid(IdType.P_PIDFD, fd, WEXITED)
        assert status is not None and (status.pid, status.exit_code) == (pid, 12)
    finally:
        os.close(fd)


@require("clone3")
def test_clone3_child_runs_python_with_fork_hooks() -> None:
    calls: list[str] = []
    os.register_at_fork(after_in_parent=lambda: calls.append("parent"))
    r, w = os.pipe()
    pid, fd = syscalls.clone3(flags=CloneFlag.CLONE_PIDFD)
    if pid == 0:
        os.write(w, str(os.getpid()).encode())
        os._exit(0)
    os.close(w)
    assert fd is not None
    try:
        assert int(os.read(r, 20)) == pid
        assert "parent" in calls
        syscalls.waitid(IdType.P_PIDFD, fd, WEXITED)
    finally:
        os.close(fd)
        os.close(r)


@pytest.mark.parametrize(
    "kwargs, exc",
    [
        ({"flags": CloneFlag.CLONE_VM}, ValueError),
        ({"flags": CloneFlag.CLONE_THREAD | CloneFlag.CLONE_SIGHAND}, ValueError),
        ({"flags": CloneFlag.CLONE_SETTLS}, ValueError),
        ({"flags": CloneFlag.CLONE_INTO_CGROUP}, ValueError),
        ({"flags": -1}, ValueError),
        ({"flags": 2**64}, ValueError),
        ({"flags": "CLONE_PIDFD"}, TypeError),
        ({"exit_signal": 65}, ValueError),
        ({"exit_signal": -1}, ValueError),
        ({"set_tid": list(range(1, 34))}, ValueError),
        ({"set_tid": [0]}, ValueError),
        ({"set_tid": "12"}, TypeError),
        ({"cgroup": -3}, ValueError),
    ],
)
def test_clone3_rejects_bad_arguments_before_any_syscall(kwargs: dict, exc: type) -> None:
    before = os.getpid()
    with pytest.raises(exc):
        syscalls.clone3(**kwargs)
    assert os.getpid() == before  # and no child: the leak check confirms it


@require("clone3")
def test_clone3_set_tid_unprivileged_or_wrong_level_is_refused() -> None:
    # set_tid of one level in our own PID namespace needs CAP_SYS_ADMIN there
    # and a free PID; as root ask for a PID that is surely taken (ours).
    with pytest.raises(OSError) as info:
        syscalls.clone3(set_tid=[os.getpid()])
    assert info.value.errno in (errno.EEXIST, errno.EPERM)


def test_clone3_cgroup_path_must_exist() -> None:
    with pytest.raises(FileNotFoundError):
        syscalls.clone3(cgroup="/nonexistent/cgroup")


@require("clone_pidfd")
def test_clone3_into_our_own_cgroup() -> None:
    if FEATURES.cgroup2_mount is None or FEATURES.cgroup is None:
        pytest.skip("no cgroup v2 hierarchy")
    path = FEATURES.cgroup2_mount + FEATURES.cgroup
    try:
        pid, fd = syscalls.clone3(flags=CloneFlag.CLONE_PIDFD, cgroup=path)
    except OSError as exc:
        pytest.skip(f"CLONE_INTO_CGROUP refused here: {exc}")
    if pid == 0:
        with open("/proc/self/cgroup", encoding="ascii") as f:
            ok = any(line.rstrip("\n") == "0::" + FEATURES.cgroup for line in f)
        os._exit(0 if ok else 1)
    assert fd is not None
    try:
        status = syscalls.waitid(IdType.P_PIDFD, fd, WEXITED)
        assert status is not None and status.exit_code == 0
    finally:
        os.close(fd)


@require("close_range")
def test_close_range_closes_exactly_the_range() -> None:
    fds = sorted(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC) for _ in range(4))
    try:
        syscalls.close_range(fds[1], fds[2])
        assert [os.path.exists(f"/proc/self/fd/{fd}") for fd in fds] == [True, False, False, True]
    finally:
        for fd in (fds[0], fds[3]):
            os.close(fd)


@pytest.mark.parametrize(
    ("args", "exc"),
    [
        (("3", 4), TypeError),
        ((3, 4.0), TypeError),
        ((-1, 4), ValueError),
        ((3, 2**32), ValueError),
        ((3, 4, -1), ValueError),
    ],
)
def test_close_range_rejects_bad_arguments(args: tuple, exc: type) -> None:
    with pytest.raises(exc):
        syscalls.close_range(*args)


@require("close_range")
def test_close_range_with_first_above_last_is_einval() -> None:
    with pytest.raises(OSError) as info:
        syscalls.close_range(10, 9)
    assert info.value.errno == errno.EINVAL


def test_child_subreaper_is_set_read_and_cleared_and_adopts_orphans() -> None:
    # In a child of its own: the flag is process-wide and would stay on this one.
    script = (
        "import os, sys\n"
        "from pyclone3 import syscalls\n"
        "assert syscalls.get_child_subreaper() is False\n"
        "syscalls.set_child_subreaper(True)\n"
        "assert syscalls.get_child_subreaper() is True\n"
        "r, w = os.pipe()\n"
        "if os.fork() == 0:\n"  # a middle process that leaves an orphan behind
        "    if os.fork() == 0:\n"
        "        os.read(r, 1)\n"
        "        os._exit(7)\n"
        "    os._exit(0)\n"
        "os.wait()\n"
        "os.write(w, b'x')\n"
        "pid, status = os.wait()\n"  # the orphan came to us, not to init
        "assert os.waitstatus_to_exitcode(status) == 7, status\n"
        "syscalls.set_child_subreaper(False)\n"
        "assert syscalls.get_child_subreaper() is False\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
