"""The suite's own guards: a test that leaves a process, or a signal disposition,
behind fails alone, and what it left is gone."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent

LEAVER = """
import os, signal
from conftest import sleeper

def test_a_leaves_a_running_child():
    child = sleeper()
    os.environ["LEFT_PID"] = str(child.pid)
    child.detach()  # fd not leaked; the process is left running

def test_b_comes_after():
    assert True

def test_c_the_child_is_gone():
    pid = int(os.environ["LEFT_PID"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return
    raise AssertionError(f"{pid} still exists")
"""

ORPHANER = """
import os, subprocess

def test_a_leaves_an_orphaned_grandchild():
    # The shell exits at once: its sleep is re-parented away from us.
    out = subprocess.run(
        ["/bin/sh", "-c", "sleep 30 >/dev/null 2>&1 & echo $!"],
        capture_output=True, text=True, check=True,
    ).stdout
    os.environ["LEFT_PID"] = out.strip()

def test_b_comes_after():
    assert True

def test_c_the_grandchild_is_gone():
    pid = int(os.environ["LEFT_PID"])
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return
    assert state in "ZX", f"{pid} still running"
"""

SIGNAL_CHANGER = """
import signal

def test_a_leaves_a_handler_and_a_blocked_signal():
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})

def test_b_finds_them_as_they_were():
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL
    assert signal.SIGUSR2 not in signal.pthread_sigmask(signal.SIG_BLOCK, [])
"""


def run_guarded(tmp_path: Path, source: str) -> str:
    """Run the test module *source* under a copy of our conftest; pytest's output."""
    shutil.copy(HERE / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_module.py").write_text(source)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        check=False,
    )
    return done.stdout + done.stderr


def test_a_child_left_running_fails_only_its_own_test(tmp_path: Path) -> None:
    out = run_guarded(tmp_path, LEAVER)
    # test_a passes its call and errors in teardown; b and c pass.
    assert "3 passed, 1 error" in out, out
    assert "child processes left behind" in out


def test_an_orphaned_grandchild_fails_only_its_own_test(tmp_path: Path) -> None:
    out = run_guarded(tmp_path, ORPHANER)
    assert "3 passed, 1 error" in out, out
    assert "processes left behind that are no longer our children" in out


def test_a_changed_signal_disposition_fails_only_its_own_test(tmp_path: Path) -> None:
    out = run_guarded(tmp_path, SIGNAL_CHANGER)
    assert "2 passed, 1 error" in out, out
    assert "signal dispositions changed" in out and "SIGUSR1" in out and "signal mask" in out


#: The tests that send SIGINT and expect its default action, or a handler.
SIGINT_TESTS = [
    "test_popen.py::test_terminate_and_kill_give_negative_signals",
    "test_popen.py::test_restore_signals",
    "test_aio.py::test_shell_and_signals",
    "test_cli.py::test_run_custom_signal",
    "test_cli.py::test_run_forwards_sigint_to_the_command",
]

IGNORE_SIGINT_AND_EXEC = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)


@pytest.mark.slow
def test_the_sigint_tests_pass_when_started_with_sigint_ignored() -> None:
    """As a background job (``pytest &`` in a script) starts: SIGINT ignored, which
    every child would inherit, and a shell could not even trap."""
    tests = [str(HERE / test) for test in SIGINT_TESTS]
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            IGNORE_SIGINT_AND_EXEC,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            *tests,
        ],
        capture_output=True,
        text=True,
        cwd=HERE.parent,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    passed = re.search(r"(\d+) passed", done.stdout.strip().splitlines()[-1])
    assert passed is not None and int(passed.group(1)) >= len(SIGINT_TESTS), done.stdout
