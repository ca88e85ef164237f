"""The suite's own guard: a test that leaves a child behind fails alone, and the child is gone."""

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


def test_a_child_left_running_fails_only_its_own_test(tmp_path: Path) -> None:
    shutil.copy(HERE / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_leaver.py").write_text(LEAVER)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        check=False,
    )
    # test_a passes its call and errors in teardown; b and c pass.
    assert "3 passed, 1 error" in done.stdout, done.stdout + done.stderr
    assert "child processes left behind" in done.stdout
