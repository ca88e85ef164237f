"""features() and PidFd under seccomp filters that mimic old kernels and strict sandboxes.

Each case runs in a disposable process that installs the filter and then
runs a small script; the test runner itself is never filtered.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap

import pytest
import seccomp
from conftest import PYTHON

pytestmark = pytest.mark.skipif(not seccomp.supported(), reason="no syscall table for this CPU")

HERE = os.path.dirname(os.path.abspath(__file__))

REPORT = textwrap.dedent(
    """
    import json, os, signal
    import pyclone3
    from pyclone3 import PidFd
    f = pyclone3.features()
    out = {"features": f.as_dict()}
    # What features() says must match what the calls do: try the basics.
    pid = os.fork()
    if pid == 0:
        os.execv("/bin/sleep", ["sleep", "30"])
    try:
        child = PidFd.open(pid)
    except OSError as exc:
        out["open"] = exc.errno
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    else:
        with child:
            try:
                child.kill()
                out["kill"] = "ok"
            except OSError as exc:
                out["kill"] = exc.errno
                os.kill(pid, signal.SIGKILL)
            try:
                out["wait"] = child.wait(timeout=10).returncode
            except OSError as exc:
                out["wait"] = exc.errno
                os.waitpid(pid, 0)
    print(json.dumps(out))
    """
)


def run_filtered(*rules: str) -> dict:
    result = subprocess.run(
        [PYTHON, os.path.join(HERE, "seccomp.py"), *rules, "--", PYTHON, "-c", REPORT],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("err", ["ENOSYS", "EPERM"])
def test_clone3_refused(err: str) -> None:
    out = run_filtered(f"clone3={err}")
    f = out["features"]
    assert f["clone3"] is False and f["clone_pidfd"] is False
    assert f["notes"]["clone3"] == err
    # Everything that does not need clone3 is still found and still works.
    assert f["pidfd_open"] and f["pidfd_send_signal"] and f["waitid_pidfd"]
    assert (out["kill"], out["wait"]) == ("ok", -9)


@pytest.mark.parametrize("err", ["ENOSYS", "EPERM"])
def test_pidfd_open_refused(err: str) -> None:
    out = run_filtered(f"pidfd_open={err}")
    f = out["features"]
    assert f["pidfd_open"] is False and f["notes"]["pidfd_open"] == err
    for name in ("pidfd_getfd", "pidfd_nonblock"):
        assert f[name] is False and f["notes"][name] == "needs pidfd_open"
    assert f["clone3"] is True  # independent of pidfd_open
    # A clone3 child's pidfd still shows what works through pidfds.
    assert f["pidfd_send_signal"] is True and f["waitid_pidfd"] is True
    assert out["open"] == getattr(__import__("errno"), err)


def test_pidfd_send_signal_refused() -> None:
    out = run_filtered("pidfd_send_signal=ENOSYS")
    f = out["features"]
    assert f["pidfd_send_signal"] is False and f["notes"]["pidfd_send_signal"] == "ENOSYS"
    assert f["pidfd_signal_process_group"] is False
    assert f["pidfd_open"] and f["waitid_pidfd"]
    assert out["kill"] == 38  # ENOSYS reaches the caller: no silent no-op
    assert out["wait"] == -9


def test_waitid_refused() -> None:
    out = run_filtered("waitid=ENOSYS")
    f = out["features"]
    assert f["waitid_pidfd"] is False and f["notes"]["waitid_pidfd"] == "ENOSYS"
    assert out["kill"] == "ok"
    assert out["wait"] == 38  # PidFd.wait says so rather than pretending


def test_pidfd_getfd_refused() -> None:
    f = run_filtered("pidfd_getfd=EPERM")["features"]
    assert f["pidfd_getfd"] is False and f["notes"]["pidfd_getfd"] == "EPERM"
    assert f["pidfd_open"] and f["clone3"]


SPAWN_REPORT = textwrap.dedent(
    """
    import json, os, signal, subprocess
    import pyclone3, pyclone3._spawn as sp
    from pyclone3 import Popen, PidfdUnavailableError
    out = {"paths": [], "codes": []}
    for i in range(3):
        with Popen(["/bin/sh", "-c", f"exit {i}"]) as p:
            out["paths"].append(p.spawn_path)
            try:
                out["pidfd"] = p.pidfd.pid == p.pid
            except PidfdUnavailableError:
                out["pidfd"] = None
        out["codes"].append(p.returncode)
    with Popen(["/bin/sleep", "30"]) as p:
        p.terminate()
    out["terminated"] = p.returncode
    try:
        Popen(["/no/such/program"])
    except FileNotFoundError as exc:
        out["missing"] = exc.filename
    r = pyclone3.run(["/bin/echo", "pre"], preexec_fn=lambda: None, capture_output=True)
    out["preexec"] = r.stdout.decode()
    out["unsupported"] = sorted(sp._unsupported)
    out["features"] = pyclone3.features().as_dict()
    print(json.dumps(out))
    """
)


def run_spawn_filtered(*rules: str) -> dict:
    result = subprocess.run(
        [PYTHON, os.path.join(HERE, "seccomp.py"), *rules, "--", PYTHON, "-c", SPAWN_REPORT],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def check_spawning_works(out: dict) -> None:
    assert out["codes"] == [0, 1, 2]
    assert out["terminated"] == -15
    assert out["missing"] == "/no/such/program"
    assert out["preexec"] == "pre\n"


def test_unfiltered_spawns_use_clone3() -> None:
    out = run_spawn_filtered()
    check_spawning_works(out)
    assert out["paths"] == ["clone3"] * 3 and out["pidfd"] is True


def test_clone3_enosys_falls_back_to_clone_and_caches() -> None:
    out = run_spawn_filtered("clone3=ENOSYS")
    check_spawning_works(out)
    assert out["paths"] == ["clone"] * 3 and out["pidfd"] is True
    assert out["unsupported"] == ["clone3"]  # probed once, remembered
    assert out["features"]["clone3"] is False


def test_clone3_eperm_falls_back_without_caching() -> None:
    out = run_spawn_filtered("clone3=EPERM")
    check_spawning_works(out)
    assert out["paths"] == ["clone"] * 3 and out["pidfd"] is True
    assert out["unsupported"] == []  # a filter may be flag-specific: ask again next time


def test_clone_pidfd_refused_falls_back_to_a_child_sent_pidfd() -> None:
    out = run_spawn_filtered("clone3=ENOSYS", "clone_pidfd=EINVAL")
    check_spawning_works(out)
    assert out["paths"] == ["vfork_pidfd"] * 3 and out["pidfd"] is True
    assert out["unsupported"] == ["clone", "clone3"]


def test_no_pidfds_at_all_still_spawns() -> None:
    out = run_spawn_filtered("clone3=ENOSYS", "clone_pidfd=EINVAL", "pidfd_open=ENOSYS")
    check_spawning_works(out)
    assert out["paths"] == ["vfork"] * 3 and out["pidfd"] is None


# ---- the spawn and PidFd suites, whole, under each profile -------------------------

SUITES = [
    "test_spawn.py",
    "test_pidfd.py",
    "test_popen.py",
    "test_clone_options.py",
    "test_multi.py",
    "test_tree.py",
]
PROFILES = {
    "no-clone3": ["clone3=ENOSYS"],
    "clone3-eperm": ["clone3=EPERM"],  # old Docker: glibc cannot even start threads
    "qemu-user": ["clone3=ENOSYS", "clone_pidfd=EINVAL"],
    "no-pidfd_open": ["pidfd_open=ENOSYS"],
    "no-pidfd_send_signal": ["pidfd_send_signal=ENOSYS"],
    "no-waitid": ["waitid=ENOSYS"],
    "no-pidfds": ["clone3=ENOSYS", "clone_pidfd=EINVAL", "pidfd_open=ENOSYS"],
}


@pytest.mark.parametrize("profile", list(PROFILES))
def test_the_suites_pass_under_a_locked_down_kernel(profile: str) -> None:
    """Every test passes, or skips for a feature features() says is missing.

    The filter is installed in a disposable process that then runs pytest on
    the spawn, PidFd, Popen, option, many-children and tree suites.
    """
    import re

    result = subprocess.run(
        [PYTHON, os.path.join(HERE, "seccomp.py"), *PROFILES[profile], "--"]
        + [PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        + [os.path.join(HERE, name) for name in SUITES],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=os.path.dirname(HERE),
    )
    tail = result.stdout[-3000:]
    assert result.returncode == 0, tail + result.stderr[-2000:]
    summary = result.stdout.strip().splitlines()[-1]
    passed = re.search(r"(\d+) passed", summary)
    assert passed is not None, tail
    assert int(passed.group(1)) >= 40, tail  # not a vacuous run
    assert "failed" not in summary and "error" not in summary, tail
