"""pyclone3 as PID 1 of a PID namespace (a container's init), where getppid() is 0.

Each case runs a small script as PID 1 of a new PID namespace, with
``unshare --pid --fork --mount-proc --kill-child``; the script prints one
line of JSON, which the test checks. When PID 1 exits the kernel kills and
reaps everything left in its namespace, and ``--kill-child`` kills PID 1 if
``unshare`` is killed (on a timeout), so no process outlives a test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
from typing import Any

import pytest
from conftest import FEATURES, PYTHON

UNSHARE = shutil.which("unshare")
PID1 = [UNSHARE or "unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]


def _pid1_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (unshare --pid)"
    if UNSHARE is None:
        return "unshare(1) is not installed"
    try:
        result = subprocess.run(
            [*PID1, "/bin/sh", "-c", 'test "$$" = 1'], capture_output=True, text=True, timeout=60
        )
    except OSError as exc:
        return f"unshare cannot run: {exc}"
    if result.returncode != 0:
        return f"unshare --pid refused here: {result.stderr.strip() or result.returncode}"
    return None


_REASON = _pid1_unavailable()
pytestmark = [pytest.mark.root, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]

#: Run first in every script: helpers to report, and to list what is left.
PRELUDE = """
import json, os, sys

def others():
    # Every process of this namespace but us, with its state (Z: zombie).
    found = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != os.getpid():
            try:
                with open(f"/proc/{name}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            found[name] = stat[stat.rindex(")") + 2 :].split()[0]
    return found

def failure(exc):
    return f"{type(exc).__name__}: {exc}"

out = {"pid": os.getpid(), "ppid": os.getppid()}
"""

EPILOGUE = """
out["others"] = others()
print(json.dumps(out))
"""


def as_pid1(body: str, spawn_path: str | None = None) -> dict[str, Any]:
    """Run *body* (after PRELUDE) as PID 1 of a new PID namespace; its ``out``."""
    code = PRELUDE + textwrap.dedent(body) + EPILOGUE
    env = dict(os.environ)
    env.pop("PYCLONE3_SPAWN_PATH", None)
    if spawn_path is not None:
        env["PYCLONE3_SPAWN_PATH"] = spawn_path
    result = subprocess.run(
        [*PID1, PYTHON, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 0, result.stderr
    out: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    assert (out["pid"], out["ppid"]) == (1, 0), out  # really PID 1 of the namespace
    assert "error" not in out, out["error"]
    assert out["others"] == {}, f"processes left in the namespace (Z: zombie): {out}"
    return out


def no_other_process(report: dict[str, Any]) -> bool:
    """Whether features() in PID 1 could create no process to compare pidfds with."""
    note = report["notes"].get("pidfd_identity", "")
    return not FEATURES.clone3 and not report["pidfd_identity"] and note.startswith("not probed")


def test_features_works_as_pid1() -> None:
    out = as_pid1(
        """
        import pyclone3
        try:
            out["features"] = pyclone3.features().as_dict()
            out["again"] = pyclone3.features(refresh=True).as_dict()
        except Exception as exc:
            out["error"] = failure(exc)
        """
    )
    report, outside = out["features"], FEATURES.as_dict()
    assert out["again"] == report
    assert report["kernel"] == os.uname().release
    # Same kernel, same sandbox: PID 1 sees what this process sees. One
    # exception: pidfd_identity compares our pidfd with another process's,
    # the probe child's; where clone3 and posix_spawn are both refused (glibc
    # spawns with clone3) PID 1 has no other process to compare with.
    for name, value in outside.items():
        if not isinstance(value, bool):
            continue
        if name == "pidfd_identity" and no_other_process(report):
            continue
        assert report[name] is value, (name, report, outside)
        if not value:
            assert name in report["notes"], f"{name} is False without a reason"


def test_cli_features_exits_0_as_pid1() -> None:
    for argv in (["features"], ["features", "--json"], []):
        result = subprocess.run(
            [*PID1, PYTHON, "-m", "pyclone3", *argv], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, (argv, result.stderr)
        assert "pidfd_open" in result.stdout
    data = json.loads(
        subprocess.run(
            [*PID1, PYTHON, "-m", "pyclone3", "features", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    )
    assert data["kernel"] == os.uname().release
    assert data["pidfd_open"] is FEATURES.pidfd_open


def test_preexec_fn_spawn_as_pid1() -> None:
    out = as_pid1(
        """
        import subprocess, pyclone3
        try:
            done = pyclone3.run(
                ["/bin/sh", "-c", "umask"],
                preexec_fn=lambda: os.umask(0o077),
                stdout=subprocess.PIPE,
            )
            out["returncode"] = done.returncode
            out["umask"] = done.stdout.decode().strip()
        except Exception as exc:
            out["error"] = failure(exc)
        def boom():
            raise RuntimeError("boom")
        try:
            pyclone3.Popen(["/bin/true"], preexec_fn=boom)
        except Exception as exc:
            out["boom"] = failure(exc)
        """
    )
    assert out["returncode"] == 0 and out["umask"] == "0077", out
    assert out["boom"].startswith("SubprocessError: Exception occurred in preexec_fn"), out


def test_missing_program_as_pid1_raises_file_not_found_and_leaves_no_zombie(
    spawn_path: str,
) -> None:
    out = as_pid1(
        """
        import pyclone3
        try:
            pyclone3.Popen(["/no/such/program"])
        except Exception as exc:
            out["raised"] = failure(exc)
            out["filename"] = getattr(exc, "filename", None)
        """,
        spawn_path,
    )
    assert out["raised"].startswith("FileNotFoundError"), out
    assert out["filename"] == "/no/such/program", out


def test_run_as_pid1() -> None:
    out = as_pid1(
        """
        import subprocess, pyclone3
        try:
            out["returncode"] = pyclone3.run(["true"]).returncode
            out["false"] = pyclone3.run(["false"]).returncode
            with pyclone3.Popen(["/bin/sh", "-c", "exit 3"]) as p:
                out["waited"] = p.wait(timeout=30)
            out["output"] = pyclone3.check_output(["echo", "hi"]).decode()
        except Exception as exc:
            out["error"] = failure(exc)
        """
    )
    assert (out["returncode"], out["false"], out["waited"]) == (0, 1, 3), out
    assert out["output"] == "hi\n"


@pytest.mark.skipif(
    not FEATURES.pidfd_identity,
    reason=f"no pidfd identity ({FEATURES.notes.get('pidfd_identity', 'Linux 6.9+')})",
)
def test_pidfd_identity_as_pid1() -> None:
    # PidFd equality and hashing ask features().pidfd_identity.
    out = as_pid1(
        """
        import pyclone3
        from pyclone3 import PidFd
        child = pyclone3.spawn(["true"])
        with PidFd.open(os.getpid()) as a, PidFd.open(os.getpid()) as b, child.pidfd as other:
            try:
                out["features"] = pyclone3.features().as_dict()
                out["equal"] = a == b and hash(a) == hash(b)
                out["unequal"] = a != other
                out["distinct"] = len({a, b, other})
            except Exception as exc:
                out["error"] = failure(exc)
            finally:
                os.waitpid(child.pid, 0)
        """
    )
    if no_other_process(out["features"]):
        pytest.skip(f"PID 1 cannot probe it here: {out['features']['notes']['pidfd_identity']}")
    assert out["features"]["pidfd_identity"] is True, out
    assert (out["equal"], out["unequal"], out["distinct"]) == (True, True, 2), out


@pytest.mark.skipif(
    not FEATURES.pidfd_info_exit,
    reason=f"no PIDFD_INFO_EXIT ({FEATURES.notes.get('pidfd_info_exit', 'Linux 6.15+')})",
)
@pytest.mark.skipif(
    not FEATURES.waitid_pidfd,
    reason=f"no waitid(P_PIDFD) ({FEATURES.notes.get('waitid_pidfd', 'Linux 5.4+')})",
)
def test_wait_on_a_child_reaped_elsewhere_as_pid1() -> None:
    out = as_pid1(
        """
        import pyclone3
        child = pyclone3.spawn(["/bin/sh", "-c", "exit 7"])
        out["has_pidfd"] = child.pidfd is not None
        _, wstatus = os.waitpid(child.pid, 0)  # reaped behind the PidFd's back
        out["waitpid"] = os.waitstatus_to_exitcode(wstatus)
        if child.pidfd is not None:
            with child.pidfd:
                try:
                    status = child.pidfd.wait()
                    out["status"] = [status.pid, status.returncode]
                except Exception as exc:
                    out["error"] = failure(exc)
        """
    )
    assert out["has_pidfd"] is True, out
    assert out["waitpid"] == 7
    assert out["status"][1] == 7, out
