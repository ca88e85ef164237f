"""pyclone3 run --scope, and --timeout in a scope: nothing left behind, for real."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
from conftest import PYTHON, SCOPE_REASON

from pyclone3 import PidFd
from pyclone3.scope import own_cgroup

pytestmark = pytest.mark.skipif(SCOPE_REASON is not None, reason=SCOPE_REASON or "")

CLI = [PYTHON, "-m", "pyclone3"]


def run_cli(*args: str, timeout: float = 60) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run the command; its result, and its PID (the scopes it makes are named by it)."""
    with subprocess.Popen(
        [*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as p:
        out, err = p.communicate(timeout=timeout)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err), p.pid


def scopes_of(pid: int) -> list[str]:
    return [n for n in os.listdir(own_cgroup()) if n.startswith(f"pyclone3-{pid}-")]


def test_run_scope_kills_what_the_command_left_and_removes_the_scope() -> None:
    """A setsid'd daemon outlives the command; no_leaks fails the test if it is still there."""
    r, pid = run_cli(
        "run", "--scope", "--", "/bin/sh", "-c", "setsid sleep 300 >/dev/null 2>&1 & exit 3"
    )
    assert r.returncode == 3, r.stderr
    assert scopes_of(pid) == []


def test_run_timeout_kills_the_whole_scope() -> None:
    began = time.monotonic()
    r, pid = run_cli(
        "run",
        "--timeout",
        "0.5",
        "--",
        "/bin/sh",
        "-c",
        # A double-forked daemon that ignores SIGTERM: killed at the end all the same.
        "(setsid sh -c \"trap '' TERM; exec sleep 300\" >/dev/null 2>&1 &); exec sleep 300",
    )
    assert r.returncode == 124, r.stderr
    assert time.monotonic() - began < 10
    assert scopes_of(pid) == []


def test_run_timeout_in_time_leaves_the_commands_daemons_running_outside() -> None:
    """As timeout(1): only a command that timed out loses what it started."""
    r, pid = run_cli(
        "run",
        "--timeout",
        "30",
        "--",
        "/bin/sh",
        "-c",
        "sleep 300 >/dev/null 2>&1 & echo $!; exit 4",
    )
    assert r.returncode == 4, r.stderr
    daemon = int(r.stdout)
    with PidFd.open(daemon) as left:
        try:
            with open(f"/proc/{daemon}/cgroup") as f:
                where = next(line[3:].strip() for line in f if line.startswith("0::"))
            assert os.path.join(own_cgroup(), where.lstrip("/")).rstrip("/") == own_cgroup()
            assert scopes_of(pid) == []
        finally:
            if left.is_alive():  # held by the pidfd: the PID is still the daemon's
                os.kill(daemon, signal.SIGKILL)  # kill(2): a sandbox may refuse pidfd signals


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pids-max", "3"], "--pids-max needs --scope"),
        (["--cgroup-parent", "/x"], "--cgroup-parent needs --scope"),
        (["--scope", "--pids-max", "x"], "not a number of processes"),
        (["--scope", "--memory-max", "12Q"], "not a size"),
        (["--scope", "--kill-tree"], "cannot be combined"),
        (["--scope", "--cgroup-parent", "/nonexistent/cg"], "/nonexistent/cg"),
    ],
)
def test_run_scope_errors_are_one_line_125(args: list[str], message: str) -> None:
    r, pid = run_cli("run", *args, "--", "/bin/true")
    assert r.returncode == 125
    assert message in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert scopes_of(pid) == []


def test_run_scope_limit_without_its_controller_is_125_naming_it() -> None:
    with open(os.path.join(own_cgroup(), "cgroup.subtree_control")) as f:
        if "pids" in f.read().split():
            pytest.skip("the pids controller is enabled here")
    r, pid = run_cli("run", "--scope", "--pids-max", "5", "--", "/bin/true")
    assert r.returncode == 125
    assert "the pids controller is not enabled" in r.stderr and r.stderr.count("\n") == 1
    assert scopes_of(pid) == []
