"""WaitStatus: the returncode it gives, however it was made, agrees with the standard library's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import pyclone3
from pyclone3 import WaitStatus
from pyclone3.flags import ChildCode

# The signal numbers a wait status word can carry.
signals = st.integers(min_value=1, max_value=64)


@given(code=st.integers(min_value=0, max_value=255))
def test_an_exit_status_word_gives_the_exit_code(code: int) -> None:
    status = WaitStatus.from_wait_status(1, code << 8)
    assert status.exited and status.exit_code == code
    assert status.returncode == os.waitstatus_to_exitcode(code << 8) == code


@given(sig=signals, core=st.booleans())
def test_a_signal_status_word_gives_minus_the_signal(sig: int, core: bool) -> None:
    word = sig | (0x80 if core else 0)
    status = WaitStatus.from_wait_status(1, word)
    assert status.signaled and status.core_dumped is core
    assert status.returncode == os.waitstatus_to_exitcode(word) == -sig
    # Every signal is told, named or not (32 and 33 have no name in Python).
    assert status.signal == sig
    assert repr(status).endswith(f"signal={getattr(status.signal, 'name', sig)}>")


def test_a_child_killed_by_a_signal_without_a_name_says_which() -> None:
    """Signal 32 kills (glibc keeps it for itself, so Python has no name for it)."""
    assert 32 not in {s.value for s in signal.Signals}
    with pyclone3.Popen(["/bin/sleep", "30"]) as p:
        p.pidfd.send_signal(32)
        p.wait()
        status = p.pidfd.status
    assert status is not None and status.signaled and status.signal == 32
    assert p.returncode == -32


@given(returncode=st.integers(min_value=-64, max_value=255))
def test_from_returncode_round_trips(returncode: int) -> None:
    assert WaitStatus.from_returncode(1, returncode).returncode == returncode


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (ChildCode.CLD_EXITED, 3),
        (ChildCode.CLD_KILLED, -3),
        (ChildCode.CLD_DUMPED, -3),
        (ChildCode.CLD_STOPPED, None),
        (ChildCode.CLD_TRAPPED, None),
        (ChildCode.CLD_CONTINUED, None),
    ],
)
def test_only_a_termination_has_a_returncode(code: ChildCode, expected: int | None) -> None:
    assert WaitStatus(1, code, 3).returncode == expected


def test_returncode_cannot_be_assigned() -> None:
    status = WaitStatus(1, ChildCode.CLD_EXITED, 0)
    with pytest.raises(AttributeError):
        status.returncode = 1  # type: ignore[misc]
    assert status.returncode == 0


@pytest.mark.parametrize(
    ("script", "expected"),
    [("exit 7", 7), ("kill -TERM $$", -signal.SIGTERM), ("kill -KILL $$", -signal.SIGKILL)],
)
def test_a_reaped_child_reports_what_subprocess_reports(script: str, expected: int) -> None:
    child = pyclone3.spawn(["/bin/sh", "-c", script])
    assert child.pidfd is not None
    with child.pidfd as pidfd:
        status = pidfd.wait()
    assert status.returncode == expected
    assert subprocess.run(["/bin/sh", "-c", script], check=False).returncode == expected


def test_rusage_read_by_two_threads_at_once_is_the_childs() -> None:
    """A thread switch inside the first conversion, where a second thread
    converts too and drops the buffer: the first must still read the child's
    rusage, not memory freed and reused meanwhile. Made deterministic with a
    trace hook that runs the second reader at the first one's call."""
    from pyclone3 import status as status_module
    from pyclone3._clone3 import ffi

    child = pyclone3.spawn(["/bin/true"])
    assert child.pidfd is not None
    with child.pidfd as pidfd:
        status = pidfd.wait()
    seen: list[int] = []
    reuse = []

    def second_reader(frame: Any, event: str, arg: Any) -> None:
        if event == "call" and frame.f_code is status_module._rusage_from_c.__code__ and not seen:
            seen.append(status.rusage.ru_maxrss)  # type: ignore[union-attr]
            for _ in range(2000):  # fill freed blocks with a value no child has
                buf = ffi.new("struct pyclone3_waitbuf *")
                buf.rusage.ru_maxrss = -777
                reuse.append(buf)

    sys.settrace(second_reader)
    try:
        first = status.rusage
    finally:
        sys.settrace(None)
    assert first is not None and seen
    assert first.ru_maxrss == seen[0] > 0
