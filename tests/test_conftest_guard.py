"""The suite's own guard: a test that leaves a process behind fails alone, and it is gone."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

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
