"""Smoke tests of the compiled module itself (pyclone3._clone3)."""

from __future__ import annotations

import errno
import os

import pytest

from pyclone3._clone3 import ffi, lib


def test_struct_layouts_match_the_kernel_abi() -> None:
    assert ffi.sizeof("struct clone_args") == lib.CLONE_ARGS_SIZE_VER2 == 88
    assert ffi.offsetof("struct clone_args", "set_tid") == lib.CLONE_ARGS_SIZE_VER0
    assert ffi.offsetof("struct clone_args", "cgroup") == lib.CLONE_ARGS_SIZE_VER1
    assert ffi.offsetof("struct pidfd_info", "exit_code") == lib.PIDFD_INFO_SIZE_VER0 - 4
    assert ffi.sizeof("struct pidfd_info") == 72


def test_constants_agree_with_the_os_module() -> None:
    assert lib.WNOHANG == os.WNOHANG
    assert lib.WEXITED == os.WEXITED
    assert lib.WSTOPPED == os.WSTOPPED
    assert lib.WNOWAIT == os.WNOWAIT
    assert lib.WCONTINUED == os.WCONTINUED
    assert lib.P_PID == os.P_PID
    assert lib.CLD_EXITED == os.CLD_EXITED
    assert lib.CLD_KILLED == os.CLD_KILLED
    if hasattr(os, "P_PIDFD"):
        assert lib.P_PIDFD == os.P_PIDFD
    for name in ("CLONE_NEWNS", "CLONE_NEWPID", "CLONE_NEWUSER", "CLONE_NEWNET", "CLONE_VM"):
        if hasattr(os, name):  # Python 3.12+
            assert getattr(lib, name) == getattr(os, name)


def test_kernel_abi_values_of_new_flags() -> None:
    # Values fixed by include/uapi/linux/{sched,pidfd}.h, whatever the headers.
    assert lib.CLONE_PIDFD == 0x1000
    assert lib.CLONE_NEWTIME == 0x80
    assert lib.CLONE_CLEAR_SIGHAND == 1 << 32
    assert lib.CLONE_INTO_CGROUP == 1 << 33
    assert lib.P_PIDFD == 3
    assert lib.PIDFD_NONBLOCK == os.O_NONBLOCK
    assert lib.PIDFD_THREAD == os.O_EXCL
    assert lib.PIDFD_GET_INFO == (3 << 30) | (72 << 16) | (0xFF << 8) | 11


@pytest.mark.parametrize(
    "name",
    [
        "HAS_HEADER_SYS_CLONE3",
        "HAS_HEADER_SYS_PIDFD_OPEN",
        "HAS_HEADER_CLONE_PIDFD",
        "HAS_HEADER_P_PIDFD",
    ],
)
def test_header_switches_are_booleans(name: str) -> None:
    assert getattr(lib, name) in (0, 1)


def test_raw_clone3_rejects_a_short_struct_without_creating_a_child() -> None:
    assert lib.sys_clone3(ffi.NULL, 0) == -1
    assert ffi.errno == errno.EINVAL


def test_raw_pidfd_open_reports_errno() -> None:
    assert lib.sys_pidfd_open(os.getpid(), 0xFFFF) == -1
    assert ffi.errno == errno.EINVAL


def test_probe_child_is_created_and_reaped_with_wall() -> None:
    pidfd = ffi.new("int *", -1)
    pid = lib.probe_clone3(lib.CLONE_PIDFD, pidfd)
    assert pid > 0 and pidfd[0] >= 0
    try:
        info = ffi.new("struct pyclone3_waitinfo *")
        assert lib.sys_waitid(lib.P_PIDFD, pidfd[0], info, lib.WEXITED | lib.__WALL, ffi.NULL) == 0
        assert (info.pid, info.code, info.status) == (pid, lib.CLD_EXITED, 0)
    finally:
        os.close(pidfd[0])
