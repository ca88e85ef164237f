"""features() and PidFd under seccomp filters that mimic old kernels and strict sandboxes.

Each case runs in a disposable process that installs the filter and then
runs a small script; the test runner itself is never filtered.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import textwrap
import time
from typing import Any

import pytest
import seccomp
from conftest import PYTHON, SCOPE_REASON

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
    import pyclone3, pyclone3._paths as sp
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
    out["unsupported"] = sorted(sp.unsupported_paths())
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


# ---- Popen where waitid(P_PIDFD) or pidfd_send_signal is refused ------------------

POPEN_CASE = textwrap.dedent(
    """
    import contextlib, json, os, signal, subprocess, sys, threading, time
    import pyclone3
    from pyclone3 import Popen

    case = sys.argv[1]
    out = {"features": pyclone3.features().as_dict()}
    keep = []  # every Popen lives until its children are counted: no __del__ reaps


    def children():
        # [pid, state] of each child of ours, running or zombie ("Z").
        me, found = os.getpid(), []
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    stat = f.read().decode("ascii", "replace")
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[1]) == me:
                found.append([int(name), fields[0]])
        return sorted(found)


    def report(result):
        out["result"] = result
        out["children"] = children()
        print(json.dumps(out), flush=True)
        for pid, _ in out["children"]:  # unreaped children of ours: their PIDs are safe
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        os._exit(0)


    def hung():
        report(f"hung: {case} had not returned after 10 s")


    def popen(*args, **kwargs):
        p = Popen(*args, **kwargs)
        keep.append(p)
        return p


    def run_case():
        if case == "wait":
            return popen(["/bin/sh", "-c", "exit 3"]).wait()
        if case == "wait_timeout":
            return popen(["/bin/sh", "-c", "exit 4"]).wait(timeout=10)
        if case == "wait_expires":
            p = popen(["/bin/sleep", "30"])
            try:
                p.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                expired = True
            else:
                expired = False
            p.kill()
            return [expired, p.wait()]
        if case == "poll":
            p = popen(["/bin/sh", "-c", "sleep 0.3; exit 5"])
            seen_running = p.poll() is None
            deadline = time.monotonic() + 10
            while p.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            return [seen_running, p.poll()]
        if case == "communicate":
            p = popen(["/bin/sh", "-c", "echo out; exit 6"], stdout=subprocess.PIPE)
            stdout, _ = p.communicate()
            return [stdout.decode(), p.returncode]
        if case == "communicate_timeout":
            p = popen(["/bin/sh", "-c", "echo out; exit 6"], stdout=subprocess.PIPE)
            stdout, _ = p.communicate(timeout=10)
            return [stdout.decode(), p.returncode]
        if case == "run":
            r = pyclone3.run(["/bin/sh", "-c", "echo out; exit 7"], capture_output=True)
            return [r.stdout.decode(), r.returncode]
        if case in ("terminate", "kill"):
            p = popen(["/bin/sleep", "30"])
            getattr(p, case)()
            return p.wait(timeout=5)
        if case == "run_timeout":
            started = time.monotonic()
            try:
                pyclone3.run(["/bin/sleep", "30"], timeout=0.5)
            except subprocess.TimeoutExpired:
                return ["TimeoutExpired", time.monotonic() - started < 5]
            return "no TimeoutExpired"
        raise AssertionError(case)


    watchdog = threading.Timer(10, hung)
    watchdog.daemon = True
    watchdog.start()
    try:
        result = run_case()
    except BaseException as exc:
        result = f"{type(exc).__name__}: {exc}"
    watchdog.cancel()
    report(result)
    """
)


def run_popen_case(rule: str, case: str) -> dict[str, Any]:
    """Run one Popen *case* in a fresh process under *rule*: the first call to
    meet the refusal is that case's own (a fallback, once found, is remembered)."""
    result = subprocess.run(
        [PYTHON, os.path.join(HERE, "seccomp.py"), rule, "--", PYTHON, "-c", POPEN_CASE, case],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    out: dict[str, Any] = json.loads(result.stdout)
    return out


WAITID_EINVAL_CASES = {
    "wait": 3,
    "wait_timeout": 4,
    "wait_expires": [True, -9],
    "poll": [True, 5],
    "communicate": ["out\n", 6],
    "communicate_timeout": ["out\n", 6],
    "run": ["out\n", 7],
}


@pytest.mark.parametrize("case", list(WAITID_EINVAL_CASES))
def test_waitid_pidfd_einval_popen_reaps_with_waitpid(case: str) -> None:
    """Linux 5.3: pidfds, but waitid(P_PIDFD) says EINVAL. features() knows;
    Popen must reap as subprocess does, as it does for ENOSYS."""
    out = run_popen_case("waitid_pidfd=EINVAL", case)
    f = out["features"]
    assert f["waitid_pidfd"] is False and f["notes"]["waitid_pidfd"] == "EINVAL"
    assert f["pidfd_open"] and f["pidfd_send_signal"]
    left = f"children left behind ([pid, state], Z: a zombie): {out['children']}"
    assert out["result"] == WAITID_EINVAL_CASES[case], left
    assert out["children"] == [], left


PIDFD_SEND_SIGNAL_EPERM_CASES = {
    "terminate": -15,
    "kill": -9,
    "run_timeout": ["TimeoutExpired", True],
}


@pytest.mark.parametrize("case", list(PIDFD_SEND_SIGNAL_EPERM_CASES))
def test_pidfd_send_signal_eperm_popen_falls_back_to_kill(case: str) -> None:
    """A default-deny sandbox refuses pidfd_send_signal with EPERM: Popen must
    still signal its (unreaped) child with kill(2), as it does for ENOSYS."""
    out = run_popen_case("pidfd_send_signal=EPERM", case)
    f = out["features"]
    assert f["pidfd_send_signal"] is False and f["notes"]["pidfd_send_signal"] == "EPERM"
    assert f["waitid_pidfd"] is True
    left = f"children left behind ([pid, state], Z: a zombie): {out['children']}"
    assert out["result"] == PIDFD_SEND_SIGNAL_EPERM_CASES[case], left
    assert out["children"] == [], left


def processes_running(argv: list[str]) -> list[int]:
    """PIDs of the processes, anyone's, whose command line is *argv*."""
    want = "\0".join(argv).encode() + b"\0"
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                if f.read() == want:
                    found.append(int(name))
        except OSError:
            continue
    return found


CGROUP_SPAWNS = """
import pyclone3
f = pyclone3.features()
here = f.cgroup2_mount.rstrip("/") + f.cgroup
p = pyclone3.Popen(["/bin/true"], cgroup=here)
print(p.wait(), p.spawn_path)
with pyclone3.Scope() as s:
    p = pyclone3.Popen(["/bin/true"], scope=s)
    print(p.wait(), p.spawn_path)
"""


@pytest.mark.skipif(SCOPE_REASON is not None, reason=SCOPE_REASON or "")
def test_a_cgroup_spawn_under_qemu_user_takes_the_next_path() -> None:
    """qemu-user refuses clone(CLONE_PIDFD) with EINVAL: a spawn into a cgroup moved
    on for a plain spawn but raised for one with the cgroup option (the child
    joins the cgroup itself there, so the clone call is a plain spawn's)."""
    result = subprocess.run(
        [
            *(PYTHON, os.path.join(HERE, "seccomp.py"), "clone3=ENOSYS", "clone_pidfd=EINVAL"),
            *("--", PYTHON, "-c", CGROUP_SPAWNS),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["0", "vfork_pidfd", "0", "vfork_pidfd"], result.stdout


@pytest.mark.parametrize("rule", ["pidfd_send_signal=EPERM", "waitid_pidfd=EINVAL"])
def test_cli_run_timeout_under_a_sandbox(rule: str, tmp_path: pathlib.Path) -> None:
    """`pyclone3 run --timeout` under a sandbox: 124, no traceback, no orphan."""
    command = ["sleep", f"31.{os.getpid()}"]  # a command line no one else runs
    cli = [PYTHON, "-m", "pyclone3", "run", "--timeout", "0.5", "--", *command]
    stdout, stderr = tmp_path / "stdout", tmp_path / "stderr"
    # Files, not pipes: an orphaned command would hold a pipe open for 31 s.
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        result = subprocess.run(
            [PYTHON, os.path.join(HERE, "seccomp.py"), rule, "--", *cli],
            stdout=out,
            stderr=err,
            timeout=60,
        )
    time.sleep(0.1)  # a command that was killed may take a moment to leave /proc
    left = processes_running(command)
    for pid in left:  # clean up after a failure: no one else runs this command line
        os.kill(pid, signal.SIGKILL)
    messages = stderr.read_text()
    traceback = "Traceback" in messages or "Exception ignored" in messages
    # (exit status, a traceback on stderr, the command's PIDs left running)
    assert (result.returncode, traceback, left) == (124, False, []), messages[-1500:]


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
    # Linux 5.3 has pidfds but not P_PIDFD; waitid(P_PID/P_ALL) still works.
    "waitid-einval": ["waitid_pidfd=EINVAL"],
    "pidfd_send_signal-eperm": ["pidfd_send_signal=EPERM"],  # a default-deny sandbox
    "no-pidfds": ["clone3=ENOSYS", "clone_pidfd=EINVAL", "pidfd_open=ENOSYS"],
    # Before Linux 5.9: a child born sharing our fd table leaves it with unshare().
    "no-close_range": ["close_range=ENOSYS"],
    # A sandbox refusing both: the spawn learns to copy the table instead.
    "no-fd-table-unshare": ["close_range=EPERM", "unshare=EPERM"],
}


@pytest.mark.slow  # each profile reruns six suites in a filtered pytest
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
