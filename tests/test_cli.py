"""The pyclone3 command: run (timeout(1)'s conventions), wait, features."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import select
import signal
import subprocess
import sys
import time
from typing import Any

import pytest
from conftest import NOBODY_REASON, PYTHON, requires_userns

from pyclone3 import PidFd, features

CLI = [PYTHON, "-m", "pyclone3"]


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("code", [0, 3, 100])
def test_run_passes_the_exit_status_through(code: int) -> None:
    assert run_cli("run", "--", "/bin/sh", "-c", f"exit {code}").returncode == code


def test_run_death_by_signal_is_128_plus_n() -> None:
    r = run_cli("run", "--", "/bin/sh", "-c", "kill -USR1 $$")
    assert r.returncode == 128 + signal.SIGUSR1


def test_run_timeout_is_124_and_kills_through_the_pidfd() -> None:
    started = time.monotonic()
    r = run_cli("run", "--timeout", "0.3", "--", "/bin/sleep", "30")
    assert r.returncode == 124 and time.monotonic() - started < 20


def test_run_kill_after_for_a_command_that_ignores_the_signal() -> None:
    script = "trap '' TERM; while :; do sleep 0.05; done"
    r = run_cli("run", "-t", "0.3", "-k", "0.3", "--", "/bin/sh", "-c", script)
    assert r.returncode == 128 + signal.SIGKILL


def test_run_custom_signal() -> None:
    r = run_cli(
        "run",
        "-t",
        "0.2",
        "-s",
        "INT",
        "-k",
        "20",  # should the INT not end it: a 137, not a loop left running
        "--",
        "/bin/sh",
        "-c",
        "trap 'exit 42' INT; while :; do sleep 0.05; done",
    )
    assert r.returncode == 124  # timed out; the command chose its own exit


@pytest.mark.parametrize(
    "command, code",
    [(["/no/such/program"], 127), (["/etc/hostname"], 126), (["/"], 126)],
)
def test_run_own_errors(command: list[str], code: int) -> None:
    r = run_cli("run", "--", *command)
    assert r.returncode == code and "pyclone3 run" in r.stderr


def test_run_without_a_command_explains() -> None:
    r = run_cli("run")
    assert r.returncode == 125 and "no command" in r.stderr


@pytest.mark.parametrize(
    "bad", [["run", "-t", "soon", "--", "true"], ["run", "-s", "NOPE", "--", "true"]]
)
def test_bad_options_say_what_to_do(bad: list[str]) -> None:
    r = run_cli(*bad)
    assert r.returncode == 125 and ("duration" in r.stderr or "signal" in r.stderr)


# Every bad input issue 18 names, and their kin: each a one-line error, exit
# 125 (argparse's own 2 could not be told from a command's status).
BAD_INPUTS = [
    ["run", "--bogus", "--", "true"],
    ["run", "-t", "soon", "--", "true"],
    ["run", "-t", "-1", "--", "true"],
    ["run", "-k", "nan", "--", "true"],
    ["run", "-s", "NOPE", "--", "true"],
    ["run", "-s", "99", "--", "true"],
    ["run", "--pdeathsig", "x", "--", "true"],
    ["run", "--unshare", "bogus", "--", "true"],
    ["run", "--enter", "x", "--", "true"],
    ["run", "--enter", "1:x", "--", "true"],
    ["run", "--enter-ns", "uts", "--", "true"],
    ["run", "--rlimit", "NOFILE", "--", "true"],
    ["run", "--rlimit", "BOGUS=1", "--", "true"],
    ["run", "--rlimit", "NOFILE=5:3", "--", "true"],
    ["run", "--rlimit", "AS=1X", "--", "true"],
    ["run", "--nice", "40", "--", "true"],
    ["run", "--oom-score-adj", "x", "--", "true"],
    ["run", "--cpus", "1-x", "--", "true"],
    ["run", "--cap-drop", "CAP_NOPE", "--", "true"],
    ["run", "--deny-syscall", "no_such_call", "--", "true"],
    ["run", "--deny-syscall", "mkdir:EWHAT", "--", "true"],
    ["run", "--landlock-rw", "/no/such/dir", "--", "true"],
    ["run", "--landlock-rw", "", "--", "true"],
    ["run"],
    ["wait"],
    ["wait", "0"],
    ["wait", "--", "-1"],
    ["wait", "99999999999"],
    ["wait", "x"],
    ["wait", "1:0"],
    ["wait", "1:x"],
    ["wait", "-t", "soon", "1"],
    ["features", "--bogus"],
    ["no-such-command"],
]


@pytest.mark.parametrize("bad", BAD_INPUTS, ids=" ".join)
def test_every_bad_input_is_one_line_and_exit_125(bad: list[str]) -> None:
    r = run_cli(*bad)
    assert r.returncode == 125, r.stderr
    assert len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stderr.startswith("pyclone3") and "Traceback" not in r.stderr
    assert r.stdout == ""


def test_help_and_version_still_exit_0() -> None:
    assert run_cli("--help").returncode == 0
    assert run_cli("run", "--help").returncode == 0
    assert run_cli("--version").returncode == 0


def test_run_forwards_sigint_to_the_command() -> None:
    proc = subprocess.Popen([*CLI, "run", "--", "/bin/sleep", "30"], stderr=subprocess.PIPE)
    try:
        time.sleep(0.5)  # let it start the command
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 128 + signal.SIGINT
    finally:
        if proc.poll() is None:  # the command is in the group pyclone3 leads: both go
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()


def test_run_rusage_report() -> None:
    r = run_cli("run", "--rusage", "--", "/bin/true")
    assert r.returncode == 0 and "max RSS" in r.stderr


def test_wait_for_processes_that_are_not_children() -> None:
    other = subprocess.Popen(["/bin/sleep", "0.3"])
    try:
        started = time.monotonic()
        r = run_cli("wait", "-v", str(other.pid))
        assert r.returncode == 0 and r.stdout.startswith(f"{other.pid}"), r.stdout
        assert " exited" in r.stdout
        assert time.monotonic() - started >= 0.2
    finally:
        other.wait()


def _inode_of(pid: int) -> int:
    with PidFd.open(pid) as handle:
        inode = handle.inode
    assert inode is not None
    return inode


needs_pidfs = pytest.mark.skipif(
    not features().pidfd_identity, reason="PID:inode needs pidfs (Linux 6.9+)"
)
needs_exit_info = pytest.mark.skipif(
    not features().pidfd_info_exit, reason="PIDFD_INFO_EXIT needs Linux 6.15+"
)


@needs_pidfs
def test_wait_verbose_names_the_process_pid_colon_inode_and_takes_it_back() -> None:
    other = subprocess.Popen(["/bin/sleep", "0.3"])
    try:
        name = f"{other.pid}:{_inode_of(other.pid)}"
        r = run_cli("wait", "-v", name)
        assert r.returncode == 0, r.stderr
        assert r.stdout.split()[0] == name
    finally:
        other.wait()


@needs_pidfs
def test_a_pid_colon_inode_of_another_process_is_no_such_process() -> None:
    """The PID is alive, but the inode is not its: as after a PID reuse, it is refused."""
    other = subprocess.Popen(["/bin/sleep", "30"])
    try:
        wrong = f"{other.pid}:{_inode_of(os.getpid())}"
        r = run_cli("wait", "-t", "5", wrong)
        assert r.returncode == 125 and f"no process {wrong}" in r.stderr, r.stderr
        r = run_cli("run", "--enter", wrong, "--", "/bin/true")
        assert r.returncode == 125 and f"cannot enter {wrong}" in r.stderr, r.stderr
    finally:
        other.kill()
        other.wait()


@needs_pidfs
def test_run_enter_takes_pid_colon_inode() -> None:
    r = run_cli("run", "--enter", f"{os.getpid()}:{_inode_of(os.getpid())}", "--", "/bin/true")
    assert r.returncode == 0, r.stderr


@needs_exit_info
@pytest.mark.parametrize(
    ("script", "status", "said"),
    [
        ("sleep 0.3; exit 7", 7, "exited with status 7"),
        ("sleep 0.3; kill -USR1 $$", 128 + signal.SIGUSR1, "was killed by SIGUSR1"),
    ],
)
def test_wait_exit_status_of_a_process_that_is_not_its_child(
    script: str, status: int, said: str
) -> None:
    """As the shell's wait, for any process: the kernel keeps the status once its parent
    (here, this test) reaps it. The reap comes well after the exit, so that -v too must
    wait for it (it once printed a bare "exited" when it lost that race)."""
    other = subprocess.Popen(["/bin/sh", "-c", script])
    try:
        cli = subprocess.Popen(
            [*CLI, "wait", "-v", "--exit-status", str(other.pid)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(0.1)  # let it open its pidfd while the process runs
        os.waitid(os.P_PID, other.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped
        time.sleep(0.3)  # the command sees the exit now, and no status yet
    finally:
        other.wait()
    out, err = cli.communicate(timeout=30)
    assert cli.returncode == status, err
    assert said in out


def test_wait_without_exit_status_exits_0_whatever_the_status() -> None:
    other = subprocess.Popen(["/bin/sh", "-c", "sleep 0.3; exit 7"])
    try:
        cli = subprocess.Popen([*CLI, "wait", str(other.pid)])
        time.sleep(0.1)
    finally:
        other.wait()
    assert cli.wait(timeout=30) == 0


def test_wait_timeout_and_missing_pid() -> None:
    other = subprocess.Popen(["/bin/sleep", "30"])
    try:
        r = run_cli("wait", "--timeout", "0.2", str(other.pid))
        assert r.returncode == 124 and str(other.pid) in r.stderr
    finally:
        other.kill()
        other.wait()
    with open("/proc/sys/kernel/pid_max") as f:
        missing = int(f.read()) + 1
    r = run_cli("wait", str(missing))
    assert r.returncode == 125 and "no process" in r.stderr


def test_features_table_and_json() -> None:
    table = run_cli("features")
    assert table.returncode == 0 and "clone3" in table.stdout
    data = json.loads(run_cli("features", "--json").stdout)
    assert data["kernel"] == os.uname().release
    assert run_cli().stdout == table.stdout  # no command: the report


def test_help_reads_well() -> None:
    r = run_cli("--help")
    assert r.returncode == 0
    for word in ("run", "wait", "features", "124", "timeout(1)"):
        assert word in r.stdout
    assert "--kill-after" in run_cli("run", "--help").stdout


def test_console_script_is_installed() -> None:
    script = os.path.join(os.path.dirname(sys.executable), "pyclone3")
    if not os.path.exists(script):
        pytest.skip("not installed as a console script in this environment")
    r = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("pyclone3 ")


def test_run_pdeathsig_takes_the_command_down_with_pyclone3() -> None:
    import select

    from pyclone3 import PidFd

    proc = subprocess.Popen(
        [*CLI, "run", "--pdeathsig", "KILL", "--", "/bin/sleep", "30"], stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 20
        child = None
        while child is None:  # find the sleep whose parent is pyclone3
            assert time.monotonic() < deadline
            for name in os.listdir("/proc"):
                if name.isdigit():
                    try:
                        with open(f"/proc/{name}/stat") as f:
                            fields = f.read().rsplit(")", 1)[1].split()
                    except OSError:
                        continue
                    if int(fields[1]) == proc.pid:
                        child = int(name)
            time.sleep(0.02)
        with PidFd.open(child) as sleeper_fd:
            proc.kill()  # pyclone3 dies without a chance to forward anything
            proc.wait()
            poller = select.poll()
            poller.register(sleeper_fd.fileno(), select.POLLIN)
            assert poller.poll(10_000), "the command outlived pyclone3"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()


# ---- Linux isolation -------------------------------------------------------------

requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


@requires_root
def test_run_unshare_puts_the_command_in_new_namespaces() -> None:
    r = run_cli("run", "--unshare", "pid,uts,net", "--", "/bin/sh", "-c", REPORT_NS)
    assert r.returncode == 0, r.stderr
    pid, net = r.stdout.split()
    assert pid == "1"
    assert net != os.readlink("/proc/self/ns/net")


REPORT_NS = "echo $$; readlink /proc/self/ns/net"


@requires_root
def test_run_unshare_given_twice_creates_both() -> None:
    """A repeated --unshare adds namespaces; it used to keep only the last."""
    report = "readlink /proc/self/ns/uts /proc/self/ns/net /proc/self/ns/mnt"
    r = run_cli(
        "run", "--unshare", "uts", "--unshare", "net", "--unshare", "mnt", "--", "/bin/sh", "-c",
        report,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    uts, net, mnt = r.stdout.split()
    assert uts != os.readlink("/proc/self/ns/uts")
    assert net != os.readlink("/proc/self/ns/net")
    assert mnt != os.readlink("/proc/self/ns/mnt")


def test_run_enter_ns_without_enter_is_an_error() -> None:
    r = run_cli("run", "--enter-ns", "uts", "--", "/bin/true")
    assert r.returncode == 125
    assert "--enter-ns needs --enter" in r.stderr


@requires_userns
def test_run_map_root_user_runs_the_command_as_root_inside() -> None:
    r = run_cli("run", "-r", "--unshare", "pid", "--", "/bin/sh", "-c", "id -u; echo $$")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["0", "1"]


@requires_root
def test_run_enter_starts_the_command_in_another_process_namespaces() -> None:
    target = subprocess.Popen(
        [*CLI, "run", "--unshare", "net,uts", "--", "/bin/sh", "-c", "hostname boxed; sleep 30"],
    )
    try:
        inner = None
        for _ in range(500):  # the target is pyclone3; its child is the shell
            with open(f"/proc/{target.pid}/task/{target.pid}/children") as f:
                kids = f.read().split()
            if kids and os.readlink(f"/proc/{kids[0]}/ns/net") != os.readlink("/proc/self/ns/net"):
                inner = int(kids[0])
                r = run_cli("run", "--enter", str(inner), "--", "/bin/hostname")
                if r.stdout.strip() == "boxed":
                    break
            time.sleep(0.01)
        assert inner is not None
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "boxed"
        r = run_cli("run", "--enter", str(inner), "--enter-ns", "net", "--", "/bin/hostname")
        assert r.stdout.strip() != "boxed"  # only the network namespace was entered
    finally:
        target.terminate()
        target.wait()


def test_run_isolation_errors_are_125_with_the_reason() -> None:
    r = run_cli("run", "--cgroup", "/nonexistent/cg", "--", "/bin/true")
    assert r.returncode == 125
    assert "/nonexistent/cg" in r.stderr
    r = run_cli("run", "--unshare", "bogus", "--", "/bin/true")
    assert r.returncode == 125 and "unknown namespace" in r.stderr
    r = run_cli("run", "--enter", "999999999", "--", "/bin/true")
    assert r.returncode == 125 and "cannot enter" in r.stderr


@pytest.mark.skipif(NOBODY_REASON is not None, reason=NOBODY_REASON or "")
def test_run_unprivileged_namespace_is_125_operation_not_permitted() -> None:
    """As nobody (dropped to in a child of ours, when we are root), in-process."""
    from conftest import become_nobody, fork_child

    from pyclone3.cli import main

    r, w = os.pipe()

    def body() -> int:
        sys.stderr = os.fdopen(w, "w")  # pytest captures the real one
        become_nobody()
        try:
            return main(["run", "--unshare", "net", "--", "/bin/true"])
        finally:
            sys.stderr.flush()  # the child ends with os._exit

    child = fork_child(body)
    os.close(w)
    try:
        with os.fdopen(r) as f:
            err = f.read()
        assert child.wait(30).returncode == 125, err
    finally:
        child.close()
    assert "Operation not permitted" in err


def test_run_kill_tree_on_timeout_leaves_no_grandchild() -> None:
    script = "sleep 100 & echo $!; (sleep 100 & echo $!); wait"
    started = time.monotonic()
    proc = subprocess.Popen(
        [*CLI, "run", "-t", "0.5", "--kill-tree", "--", "/bin/sh", "-c", script],
        stdout=subprocess.PIPE,
        text=True,
    )
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 124
    assert time.monotonic() - started < 20
    for pid in map(int, out.split()):
        assert not os.path.exists(f"/proc/{pid}") or _is_zombie_elsewhere(pid)


def _is_zombie_elsewhere(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


# ---- timeout(1)'s conventions ------------------------------------------------------


def test_run_zero_durations_disable_as_in_timeout() -> None:
    """-t 0 is no time limit; -k 0 never sends KILL (both fired at once before)."""
    assert run_cli("run", "-t", "0", "--", "/bin/sh", "-c", "sleep 0.2; exit 3").returncode == 3
    start = time.monotonic()
    r = run_cli(
        "run", "-t", "0.2", "-k", "0", "--", "/bin/sh", "-c", "trap '' TERM; sleep 0.6; exit 5"
    )
    assert r.returncode == 124, r.stderr  # timed out; the command outlived the TERM
    assert time.monotonic() - start >= 0.6  # and was not killed


def test_run_timeout_wakes_a_stopped_command() -> None:
    """After the signal comes SIGCONT, as timeout(1) sends: a stopped command no longer hangs."""
    r = run_cli("run", "-t", "0.3", "--", "/bin/sh", "-c", "kill -STOP $$; exit 7", timeout=20)
    assert r.returncode == 124, r.stderr


@pytest.mark.parametrize("pid", ["0", "-1", "99999999999", "x"])
def test_wait_rejects_what_is_not_a_pid_without_a_traceback(pid: str) -> None:
    r = run_cli("wait", "--", pid)
    assert r.returncode == 125 and "not a process ID" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("where", ["/dev/full", "closed"])
def test_features_reports_an_unwritable_stdout_without_a_traceback(where: str) -> None:
    if where == "closed":
        r = subprocess.run([*CLI, "features"], stdout=None, capture_output=False, text=True,
                           stderr=subprocess.PIPE, pass_fds=(), close_fds=True,
                           preexec_fn=lambda: os.close(1), timeout=60)  # fmt: skip
    else:
        with open(where, "w") as full:
            r = subprocess.run([*CLI, "features"], stdout=full, stderr=subprocess.PIPE,
                               text=True, timeout=60)  # fmt: skip
    assert r.returncode == 125, r.stderr
    assert "cannot write the output" in r.stderr and "Traceback" not in r.stderr
    assert "Exception ignored" not in r.stderr


ALRM_TRAP = "trap 'exit 9' ALRM; echo ready; while :; do sleep 0.05; done"


def test_run_passes_sigalrm_on() -> None:
    """SIGALRM used to kill pyclone3 itself and orphan the command."""
    proc = subprocess.Popen(
        # --pdeathsig: should pyclone3 die of it, the command goes too
        [*CLI, "run", "--pdeathsig", "KILL", "--", "/bin/sh", "-c", ALRM_TRAP],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGALRM)
        assert proc.wait(timeout=20) == 9
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def test_run_gives_the_command_the_signals_it_passes_on_at_their_default() -> None:
    """Started with SIGINT ignored (``cmd &`` in a script), as timeout(1) is.

    timeout(1) catches the signals it passes on before it forks, so exec
    gives the command their default action back. Left ignored, a command
    started from a background job could never be interrupted.
    """
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        r = run_cli("run", "--", "grep", "^SigIgn:", "/proc/self/status")
        reference = subprocess.run(
            ["timeout", "60", "grep", "^SigIgn:", "/proc/self/status"],
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    assert r.returncode == 0, r.stderr
    sigint = 1 << (signal.SIGINT - 1)
    assert not int(reference.stdout.split()[1], 16) & sigint, reference.stdout  # timeout(1)
    assert not int(r.stdout.split()[1], 16) & sigint, r.stdout


def test_run_a_signal_received_while_the_command_is_made_reaches_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Not lost, nor ours to die of with the command orphaned: it waits for the command.

    The signal is raised at ourselves just before the spawn, in-process, so
    it lands on a run that has no command yet, every time.
    """
    from pyclone3.cli import main
    from pyclone3.cli import run as cli_run

    made: list[Any] = []

    def popen_after_a_signal(*args: Any, **kwargs: Any) -> Any:
        os.kill(os.getpid(), signal.SIGUSR1)  # its handler runs here, before the spawn
        proc = real_popen(*args, **kwargs)
        made.append(proc)
        return proc

    def not_passed_on(signum: int, frame: object) -> None:
        raise AssertionError("the signal came to the caller's handler, not to the command")

    real_popen = cli_run.Popen
    monkeypatch.setattr(cli_run, "Popen", popen_after_a_signal)
    previous = signal.signal(signal.SIGUSR1, not_passed_on)
    try:
        status = main(["run", "--foreground", "--", "/bin/sleep", "30"])
        assert signal.getsignal(signal.SIGUSR1) is not_passed_on  # given back
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert len(made) == 1 and made[0].returncode == -signal.SIGUSR1
    assert status == 128 + signal.SIGUSR1


def test_run_an_exec_failure_other_than_enoent_is_126(tmp_path: Any) -> None:
    """As timeout(1): ELOOP, ENAMETOOLONG, ENOTDIR... are 126 (they were 125)."""
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    assert run_cli("run", "--", str(loop)).returncode == 126
    assert run_cli("run", "--", "/" + "x" * 5000).returncode == 126
    assert run_cli("run", "--", "/etc/passwd/x").returncode == 126


# ---- timeout(1)'s process group ---------------------------------------------------


def _running(pids: list[int], within: float = 5.0) -> list[int]:
    """Those of *pids* still running after *within* seconds (gone or a zombie: not running).

    Each is watched through a pidfd, which turns readable at its exit: no
    sleep loop, and a PID reused meanwhile cannot be taken for it.
    """
    left = []
    deadline = time.monotonic() + within
    for pid in pids:
        try:
            handle = PidFd.open(pid)
        except ProcessLookupError:
            continue
        with handle:
            poller = select.poll()
            poller.register(handle.fileno(), select.POLLIN)
            if not poller.poll(max(deadline - time.monotonic(), 0) * 1000):
                left.append(pid)
    return left


def _end(pids: list[int], proc: subprocess.Popen[str] | None = None) -> None:
    """Leave nothing behind, whatever the test found: the CLI, then the test's sleeps."""
    if proc is not None:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    for pid in pids:
        with contextlib.suppress(OSError), PidFd.open(pid) as handle:
            if _cmdline(pid).startswith(b"sleep\0"):  # read with the pidfd holding the PID
                handle.send_signal(signal.SIGKILL)


def _cmdline(pid: int) -> bytes:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read()


def _pids(proc: subprocess.Popen[str], n: int) -> list[int]:
    assert proc.stdout is not None
    return [int(proc.stdout.readline()) for _ in range(n)]


def test_run_timeout_signals_the_whole_process_group() -> None:
    """timeout(1) signals its process group: background jobs of the command die too,
    and a reader of the pipe they held is not left waiting for them."""
    script = "sleep 113 & echo $!; sleep 114 & echo $!; wait"
    command = [*CLI, "run", "-t", "0.5", "--", "/bin/sh", "-c", script]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    pids: list[int] = []
    try:
        pids = _pids(proc, 2)
        assert proc.wait(timeout=60) == 124
        assert _running(pids) == []
        assert proc.stdout is not None and proc.stdout.read() == ""  # EOF: no one holds it
    finally:
        _end(pids, proc)


def test_run_timeout_kill_after_reaches_the_group_and_spares_pyclone3() -> None:
    script = "trap '' TERM; sleep 115 & echo $!; while :; do sleep 0.05; done"
    proc = subprocess.Popen(
        [*CLI, "run", "-t", "0.3", "-k", "0.3", "--", "/bin/sh", "-c", script],
        stdout=subprocess.PIPE,
        text=True,
    )
    pids: list[int] = []
    try:
        pids = _pids(proc, 1)
        assert proc.wait(timeout=60) == 128 + signal.SIGKILL  # as timeout(1): 137 after KILL
        assert _running(pids) == []
    finally:
        _end(pids, proc)


def test_run_foreground_signals_the_command_only() -> None:
    """--foreground, as timeout(1)'s: no group of our own, so the command's children live on."""
    script = "sleep 116 & echo $!; wait"
    proc = subprocess.Popen(
        [*CLI, "run", "--foreground", "-t", "0.3", "--", "/bin/sh", "-c", script],
        stdout=subprocess.PIPE,
        text=True,
    )
    pids: list[int] = []
    try:
        pids = _pids(proc, 1)
        assert proc.wait(timeout=60) == 124
        assert _running(pids, within=0.3) == pids  # untouched
    finally:
        _end(pids, proc)


def test_run_kill_tree_reaps_what_the_command_leaves_when_it_exits_itself() -> None:
    """--kill-tree promised the tree is reaped: when the command exits on its own too."""
    script = "sleep 117 & echo $!; (sleep 118 & echo $!); exit 3"
    proc = subprocess.Popen(
        [*CLI, "run", "--kill-tree", "--", "/bin/sh", "-c", script],
        stdout=subprocess.PIPE,
        text=True,
    )
    pids: list[int] = []
    try:
        pids = _pids(proc, 2)
        assert proc.wait(timeout=60) == 3
        assert _running(pids) == []
    finally:
        _end(pids, proc)


def test_every_row_of_the_comparison_table_names_a_test_that_exists() -> None:
    """docs/cli.rst's side-by-side table: each row's test must be here (a renamed or
    deleted test would leave the row unchecked)."""
    import re

    doc = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "cli.rst")
    if not os.path.exists(doc):
        pytest.skip("docs/ is not next to the tests (an installed run)")
    with open(doc, encoding="utf-8") as f:
        named = set(re.findall(r"``(test_\w+)``", f.read()))
    assert len(named) >= 20
    missing = sorted(name for name in named if not callable(globals().get(name)))
    assert missing == []


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--", "/bin/true"],
        ["run", "--", "/bin/sh", "-c", "exit 3"],
        ["run", "/bin/true", "-t", "1"],
        ["run", "--", "-t"],
    ],
)
def test_the_plain_run_fast_path_parses_as_argparse_does(argv: list[str]) -> None:
    """`run [--] CMD...` skips argparse (start-up): it must mean exactly what the parser says."""
    from pyclone3.cli import _plain_run
    from pyclone3.cli.args import build_parser

    fast = _plain_run(argv)
    assert fast is not None
    assert vars(fast) == vars(build_parser().parse_args(argv))


@pytest.mark.parametrize(
    "argv", [["run"], ["run", "--"], ["run", "-t", "1", "--", "x"], ["wait", "1"], ["--json"], []]
)
def test_anything_else_goes_to_the_parser(argv: list[str]) -> None:
    from pyclone3.cli import _plain_run

    assert _plain_run(argv) is None


def test_run_sandbox_options_reach_the_command(tmp_path: pathlib.Path) -> None:
    from pyclone3.landlock import abi_version

    script = (
        "grep -E 'NoNewPrivs|Seccomp:' /proc/self/status; grep 'open files' /proc/self/limits; "
        f"cat /proc/self/oom_score_adj; mkdir {tmp_path}/d 2>&1 || true"
    )
    landlock = ["--landlock-rw", str(tmp_path)] if abi_version() else []
    r = run_cli(
        "run", "--rlimit", "NOFILE=100:200", "--oom-score-adj", "50",
        "--deny-syscall", "mkdir:EROFS", "--deny-syscall", "mkdirat:EROFS", *landlock,
        "--", "/bin/sh", "-c", script,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "NoNewPrivs:\t1" in r.stdout and "Seccomp:\t2" in r.stdout
    assert "100                  200" in r.stdout and "\n50\n" in r.stdout
    assert "Read-only file system" in r.stdout
