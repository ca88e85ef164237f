"""pyclone3.Popen behaves as subprocess.Popen does, on every spawn path.

Every test here runs once per spawn path (the `spawn_path` fixture forces
clone3, clone, vfork_pidfd and vfork in turn).
"""

from __future__ import annotations

import ast
import errno
import gc
import inspect
import io
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
from conftest import (
    FEATURES,
    PYTHON,
    needs_threads,
    polled_from_another_thread,
    require,
    thread_sleeps,
)

import pyclone3
from pyclone3 import PidFd, PidfdUnavailableError, Popen

pytestmark = pytest.mark.usefixtures("spawn_path")

PY = [PYTHON, "-c"]


# ---- return codes and signals --------------------------------------------------


@pytest.mark.parametrize("code", [0, 1, 3, 127, 255])
def test_exit_codes(code: int) -> None:
    assert pyclone3.call(["/bin/sh", "-c", f"exit {code}"]) == code


@pytest.mark.usefixtures("sigint_default")  # the SIGINT below must kill: not inherited ignored
def test_terminate_and_kill_give_negative_signals() -> None:
    with Popen(["/bin/sleep", "30"]) as p:
        p.terminate()
        assert p.wait(timeout=10) == -signal.SIGTERM
    with Popen(["/bin/sleep", "30"]) as p:
        p.kill()
        assert p.wait() == -signal.SIGKILL
    with Popen(["/bin/sleep", "30"]) as p:
        p.send_signal(signal.SIGINT)
        assert p.wait() == -signal.SIGINT


def test_send_signal_after_exit_does_nothing() -> None:
    with Popen(["/bin/true"]) as p:
        p.wait()
        p.send_signal(signal.SIGKILL)
        p.terminate()
        assert p.returncode == 0


def test_poll_is_none_until_exit() -> None:
    with Popen(["/bin/sleep", "0.2"]) as p:
        assert p.poll() is None and p.returncode is None
        deadline = time.monotonic() + 10
        while p.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert p.returncode == 0


def test_wait_timeout_raises_timeout_expired() -> None:
    with Popen(["/bin/sleep", "30"]) as p:
        with pytest.raises(subprocess.TimeoutExpired) as info:
            p.wait(timeout=0.05)
        assert info.value.cmd == ["/bin/sleep", "30"] and info.value.timeout == 0.05
        assert p.returncode is None
        p.kill()
        assert p.wait(timeout=10) == -9


def test_wait_with_zero_timeout_on_a_running_child() -> None:
    with Popen(["/bin/sleep", "30"]) as p:
        with pytest.raises(subprocess.TimeoutExpired):
            p.wait(timeout=0)
        p.kill()


@needs_threads
def test_wait_with_a_timeout_while_another_thread_polls() -> None:
    """subprocess lets one thread wait() while another poll()s: whichever
    reaps the child (and closes its pidfd), the other sees its returncode,
    never an error or a made-up 0."""
    for _ in range(3):
        procs = [Popen(["/bin/sh", "-c", f"sleep 0.0{i % 2}; exit {i}"]) for i in range(100)]
        with polled_from_another_thread(procs):
            codes = [p.wait(timeout=30) for p in procs]
        assert codes == list(range(100))
        assert [p.poll() for p in procs] == codes


# ---- pipes, communicate, text --------------------------------------------------------


def test_communicate_round_trip() -> None:
    with Popen(["/bin/cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE) as p:
        out, err = p.communicate(b"hello\x00world")
    assert (out, err, p.returncode) == (b"hello\x00world", None, 0)


def test_large_output_through_pipes_does_not_deadlock() -> None:
    code = "import sys; sys.stdout.write('x' * 4_000_000); sys.stderr.write('y' * 1_000_000)"
    result = pyclone3.run([*PY, code], capture_output=True, timeout=60)
    assert len(result.stdout) == 4_000_000 and len(result.stderr) == 1_000_000


def test_large_input_through_stdin() -> None:
    data = os.urandom(3_000_000)
    result = pyclone3.run(["/bin/cat"], input=data, capture_output=True, timeout=60)
    assert result.stdout == data


def test_communicate_timeout_keeps_partial_output_and_can_resume() -> None:
    code = "import sys, time; print('early', flush=True); time.sleep(0.5); print('late')"
    with Popen([*PY, code], stdout=subprocess.PIPE, text=True) as p:
        with pytest.raises(subprocess.TimeoutExpired) as info:
            p.communicate(timeout=0.2)
        assert info.value.timeout == 0.2
        out, _ = p.communicate(timeout=10)
    assert out == "early\nlate\n"


def test_run_timeout_kills_and_reports_output() -> None:
    code = "import time; print('partial', flush=True); time.sleep(30)"
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired) as info:
        pyclone3.run([*PY, code], capture_output=True, timeout=1)
    assert time.monotonic() - started < 20
    assert info.value.stdout == b"partial\n" and info.value.output == b"partial\n"


def test_text_mode_and_encodings() -> None:
    r = pyclone3.run(["/bin/echo", "héllo"], capture_output=True, text=True)
    assert r.stdout == "héllo\n"
    r = pyclone3.run(
        [*PY, "import sys; sys.stdout.buffer.write('ÿ\\r\\nz'.encode('latin-1'))"],
        capture_output=True,
        encoding="latin-1",
    )
    assert r.stdout == "ÿ\nz"  # universal newlines in text mode
    r = pyclone3.run(
        [*PY, "import sys; sys.stdout.buffer.write(b'\\xff')"],
        capture_output=True,
        encoding="utf-8",
        errors="replace",
    )
    assert r.stdout == "\ufffd"


def test_stderr_to_stdout_and_devnull() -> None:
    r = pyclone3.run(
        ["/bin/sh", "-c", "echo out; echo err >&2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert sorted(r.stdout.split()) == [b"err", b"out"]
    r = pyclone3.run(
        ["/bin/sh", "-c", "echo out; echo err >&2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert r.stdout is None and r.stderr == b"err\n"


def test_only_the_parent_ends_stay_open_after_the_spawn() -> None:
    """The child's pipe ends and the /dev/null fd are closed in the parent
    (pyclone3 does subprocess's _close_pipe_fds without its ExitStack)."""
    before = {int(fd) for fd in os.listdir("/proc/self/fd")}
    p = Popen(
        ["/bin/cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        now = {int(fd) for fd in os.listdir("/proc/self/fd")} - before
        mine = {p.stdin.fileno(), p.stdout.fileno()}  # type: ignore[union-attr]
        if p._pidfd is not None:
            mine.add(p._pidfd.fileno())
        assert now - {max(now)} <= mine <= now  # max(now): listdir's own fd, maybe
        assert p._closed_child_pipe_fds
        out, _ = p.communicate(b"through")
        assert out == b"through"
    finally:
        p.kill()
        p.wait()


def test_a_failed_close_of_the_child_ends_is_raised_like_subprocess() -> None:
    made: list[Popen] = []

    class Failing(Popen):
        def _close_pipe_fds(self, *fds: int) -> None:
            made.append(self)
            os.close(fds[3])  # c2pwrite, closed behind its back: the real close fails
            super()._close_pipe_fds(*fds)

    with pytest.raises(OSError) as info:
        Failing(["/bin/sleep", "30"], stdout=subprocess.PIPE)
    assert info.value.errno == errno.EBADF
    assert not made[0]._closed_child_pipe_fds  # as subprocess leaves it
    # The caller never got the Popen: its child was killed and reaped before
    # the error reached it (subprocess would leave it running, unreachable).
    assert made[0].returncode == -9
    assert made[0]._pidfd is None or made[0]._pidfd.closed


@pytest.mark.skipif(
    sys.version_info < (3, 11), reason="subprocess closes half-made pipes only since 3.11"
)
def test_a_failure_while_making_the_pipes_closes_what_was_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_pipe = os.pipe
    made: list[tuple[int, int]] = []

    def pipe_then_fail() -> tuple[int, int]:
        if made:
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        made.append(real_pipe())
        return made[0]

    monkeypatch.setattr(os, "pipe", pipe_then_fail)
    before = {int(fd) for fd in os.listdir("/proc/self/fd")}
    with pytest.raises(OSError) as info:
        Popen(
            ["/bin/true"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
    assert info.value.errno == errno.EMFILE
    assert len(made) == 1
    after = {int(fd) for fd in os.listdir("/proc/self/fd")}
    assert not (after - before) - {max(after)}  # the pipe and /dev/null are closed


def test_stdout_to_a_file_and_to_an_fd(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "out")
    with open(path, "wb") as f:
        pyclone3.check_call(["/bin/echo", "to file"], stdout=f)
        pyclone3.check_call(["/bin/echo", "to fd"], stdout=f.fileno())
    with open(path, "rb") as f:
        assert f.read() == b"to file\nto fd\n"


def test_stdin_stdout_stderr_can_all_be_low_fds() -> None:
    # The child's ends land on 0..2 in a different order: the dup dance.
    code = "import sys; sys.stderr.write(sys.stdin.read().upper())"
    r = pyclone3.run([*PY, code], input=b"swap", stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert r.stdout == b"SWAP"


def test_check_output_and_called_process_error() -> None:
    assert pyclone3.check_output(["/bin/echo", "ok"]) == b"ok\n"
    with pytest.raises(subprocess.CalledProcessError) as info:
        pyclone3.check_output(["/bin/sh", "-c", "echo some; exit 4"])
    assert info.value.returncode == 4 and info.value.output == b"some\n"
    assert info.value.cmd == ["/bin/sh", "-c", "echo some; exit 4"]
    with pytest.raises(subprocess.CalledProcessError):
        pyclone3.check_call(["/bin/false"])
    assert pyclone3.getstatusoutput("echo hi; exit 2") == (2, "hi")
    assert pyclone3.getoutput("echo there") == "there"


def test_context_manager_closes_pipes_and_waits() -> None:
    with Popen(["/bin/true"], stdout=subprocess.PIPE) as p:
        pass
    assert p.stdout is not None and p.stdout.closed and p.returncode == 0


def test_del_of_a_running_child_warns_and_it_is_reaped_later() -> None:
    p = Popen(["/bin/sleep", "0.1"])
    pid = p.pid
    with pytest.warns(ResourceWarning, match=f"subprocess {pid} is still running"):
        del p
        gc.collect()
    deadline = time.monotonic() + 10
    while any(q.pid == pid for q in subprocess._active):  # type: ignore[attr-defined]
        assert time.monotonic() < deadline
        time.sleep(0.02)
        subprocess._cleanup()  # type: ignore[attr-defined]


# ---- exceptions --------------------------------------------------------------------------


def test_missing_program_raises_file_not_found_with_filename() -> None:
    with pytest.raises(FileNotFoundError) as info:
        Popen(["/nonexistent/program", "arg"])
    assert info.value.filename == "/nonexistent/program" and info.value.errno == errno.ENOENT


def test_missing_program_on_path_fails_as_subprocess_does() -> None:
    # FileNotFoundError, unless some PATH directory is unreadable to us, in
    # which case both raise PermissionError (the first non-ENOENT errno wins).
    with pytest.raises(OSError) as theirs:
        subprocess.run(["no-such-program-pyclone3"])
    with pytest.raises(OSError) as ours:
        pyclone3.run(["no-such-program-pyclone3"])
    assert type(ours.value) is type(theirs.value)
    assert (ours.value.errno, ours.value.filename) == (
        theirs.value.errno,
        "no-such-program-pyclone3",
    )
    with pytest.raises(FileNotFoundError):
        pyclone3.run(["no-such-program-pyclone3"], env={"PATH": "/bin:/usr/bin"})


def test_non_executable_file_raises_permission_error(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "not-exec")
    with open(path, "w") as f:
        f.write("#!/bin/sh\n")
    with pytest.raises(PermissionError) as info:
        pyclone3.run([path])
    assert info.value.filename == path


def test_path_search_skips_an_unusable_candidate(tmp_path: object) -> None:
    bad = os.path.join(str(tmp_path), "bin")
    os.mkdir(bad)
    with open(os.path.join(bad, "echo"), "w") as f:
        f.write("not executable")
    env = {"PATH": f"{bad}:/bin:/usr/bin"}
    assert pyclone3.check_output(["echo", "found"], env=env) == b"found\n"


def test_bad_cwd_raises_with_the_cwd_as_filename(tmp_path: object) -> None:
    with pytest.raises(FileNotFoundError) as info:
        pyclone3.run(["/bin/true"], cwd="/nonexistent-dir")
    assert info.value.filename == "/nonexistent-dir"
    afile = os.path.join(str(tmp_path), "file")
    open(afile, "w").close()
    with pytest.raises(NotADirectoryError) as info2:
        pyclone3.run(["/bin/true"], cwd=afile)
    assert info2.value.filename == afile


def test_failed_spawns_leave_no_child_and_no_fd() -> None:
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        with pytest.raises(FileNotFoundError):
            Popen(["/nonexistent"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert len(os.listdir("/proc/self/fd")) == before  # zombies: the no_leaks fixture


def test_preexec_fn_runs_in_the_child(tmp_path: object) -> None:
    marker = os.path.join(str(tmp_path), "marker")
    parent = os.getpid()

    def before_exec() -> None:
        with open(marker, "w") as f:
            f.write(str(os.getpid() != parent))

    assert pyclone3.call(["/bin/true"], preexec_fn=before_exec) == 0
    with open(marker) as f:
        assert f.read() == "True"


@needs_threads
def test_preexec_fn_with_threads_running_warns_no_more_than_subprocess() -> None:
    import threading
    import warnings

    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        with warnings.catch_warnings(record=True) as theirs:
            warnings.simplefilter("always")
            subprocess.run(["/bin/true"], preexec_fn=lambda: None)
        with warnings.catch_warnings(record=True) as ours:
            warnings.simplefilter("always")
            pyclone3.run(["/bin/true"], preexec_fn=lambda: None)
    finally:
        stop.set()
        t.join()
    assert [str(w.message) for w in ours] == [str(w.message) for w in theirs]


def test_preexec_fn_failure_raises_subprocess_error() -> None:
    def boom() -> None:
        raise RuntimeError("in the child")

    with pytest.raises(subprocess.SubprocessError, match="Exception occurred in preexec_fn"):
        Popen(["/bin/true"], preexec_fn=boom)


@pytest.mark.parametrize(
    "kwargs, exc",
    [
        ({"args": ["/bin/echo", "a\0b"]}, ValueError),
        ({"args": ["/bin/true"], "env": {"A=B": "1"}}, ValueError),
        ({"args": ["/bin/true"], "env": {"A": "1\0"}}, ValueError),
        ({"args": ["/bin/true"], "cwd": "/tmp\0x"}, ValueError),
    ],
)
def test_bad_arguments_raise_before_spawning(kwargs: dict, exc: type) -> None:
    with pytest.raises(exc):
        Popen(**kwargs)


def test_unknown_spawn_path_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="spawn path"):
        Popen(["/bin/true"], spawn_path="teleport")


# ---- child-side options -----------------------------------------------------------------------


def test_cwd_env_and_executable(tmp_path: object) -> None:
    out = pyclone3.check_output(
        ["/bin/sh", "-c", "pwd; echo $ONLY; echo ${HOME:-unset}"],
        cwd=str(tmp_path),
        env={"ONLY": "this"},
    )
    assert out.decode().split("\n")[:3] == [os.path.realpath(str(tmp_path)), "this", "unset"]
    out = pyclone3.check_output(
        ["renamed-argv0", "-c", "import sys; print(sys.argv[0])"], executable=PYTHON
    )
    assert out == b"-c\n"
    out = pyclone3.check_output(["/bin/sh", "-c", 'echo "$0"'], executable="/bin/sh")
    assert out == b"/bin/sh\n"


def test_empty_env_and_empty_arguments() -> None:
    code = "import os, sys; print(len(os.environ) <= 1, sys.argv[1:])"  # LC_CTYPE may appear
    out = pyclone3.check_output([PYTHON, "-c", code, "", "x"], env={})
    assert out == b"True ['', 'x']\n"


def test_shell_true() -> None:
    assert pyclone3.check_output("echo $((6 * 7))", shell=True) == b"42\n"


def test_pass_fds_and_close_fds() -> None:
    r, w = os.pipe()
    r2, w2 = os.pipe()
    os.set_inheritable(w2, True)
    try:
        code = (
            "import os, sys; os.write(int(sys.argv[1]), b'passed');"
            "print(sorted(int(f) for f in os.listdir('/proc/self/fd')))"
        )
        out = pyclone3.check_output([*PY, code, str(w)], pass_fds=[w])
        assert os.read(r, 10) == b"passed"
        fds = eval(out)
        assert w in fds and w2 not in fds  # inheritable, but close_fds closed it
        out = pyclone3.check_output([*PY, code, str(w2)], close_fds=False)
        assert os.read(r2, 10) == b"passed"
        fds = eval(out)
        assert w2 in fds and w not in fds  # inheritable kept; non-inheritable closed by exec
    finally:
        for fd in (r, w, r2, w2):
            os.close(fd)


def _status_field(field: str, **kwargs: object) -> int:
    """A hex mask of the child's own /proc/self/status, read by grep (not Python,
    which changes its signal dispositions at start-up)."""
    out = pyclone3.check_output(["/bin/grep", f"^{field}:", "/proc/self/status"], **kwargs)  # type: ignore[arg-type]
    return int(out.split()[1], 16)


def test_restore_signals() -> None:
    sigpipe_bit = 1 << (signal.SIGPIPE - 1)
    assert _status_field("SigIgn") & sigpipe_bit == 0
    ignored = _status_field("SigIgn", restore_signals=False)
    assert ignored & sigpipe_bit  # Python ignores SIGPIPE; kept when not restored


def test_child_gets_the_parents_signal_mask_not_the_spawn_time_one() -> None:
    assert _status_field("SigBlk") == 0  # all signals were blocked during clone
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
    try:
        blocked = _status_field("SigBlk")
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    assert blocked == 1 << (signal.SIGUSR2 - 1)


def test_handled_signals_are_default_in_the_child() -> None:
    old = signal.signal(signal.SIGUSR1, lambda *a: None)
    try:
        # sleep then exit 0 unless SIGUSR1 (default action: terminate) kills it
        with Popen(["/bin/sleep", "30"]) as p:
            p.send_signal(signal.SIGUSR1)
            assert p.wait(timeout=10) == -signal.SIGUSR1
    finally:
        signal.signal(signal.SIGUSR1, old)


def test_start_new_session_and_process_group() -> None:
    code = "import os; print(os.getsid(0) == os.getpid(), os.getpgid(0) == os.getpid())"
    assert pyclone3.check_output([*PY, code], start_new_session=True) == b"True True\n"
    assert pyclone3.check_output([*PY, code]) == b"False False\n"
    if sys.version_info >= (3, 11):
        out = pyclone3.check_output([*PY, code], process_group=0)
        assert out == b"False True\n"


def test_umask() -> None:
    assert pyclone3.check_output(["/bin/sh", "-c", "umask"], umask=0o077).strip() == b"0077"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to change user")
def test_user_group_extra_groups_as_root() -> None:
    out = pyclone3.check_output(["/usr/bin/id"], user=65534, group=65534, extra_groups=[65533])
    text = out.decode()
    assert "uid=65534" in text and "gid=65534" in text and "65533" in text


@pytest.mark.skipif(os.geteuid() == 0, reason="checks the unprivileged error")
def test_changing_user_unprivileged_is_a_permission_error() -> None:
    with pytest.raises(PermissionError):
        pyclone3.run(["/bin/true"], user=0)


def _dumpable() -> int:
    import ctypes

    return int(ctypes.CDLL(None).prctl(3, 0, 0, 0, 0))  # PR_GET_DUMPABLE


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to change user")
@pytest.mark.parametrize("api", ["Popen", "spawn"])
def test_changing_ids_leaves_the_parent_dumpable(spawn_path: str, api: str) -> None:
    # A child with other credentials that shared our memory would make the
    # kernel mark that memory, ours, non-dumpable for good.
    assert _dumpable() == 1
    ids = {"user": 65534, "group": 65533, "extra_groups": [65532, 100]}
    argv = ["/bin/sh", "-c", "id -u; id -g; id -G"]
    try:
        if api == "Popen":
            with Popen(argv, stdout=subprocess.PIPE, **ids) as p:
                out = p.communicate()[0]
            assert p.returncode == 0 and p.spawn_path == spawn_path
        else:
            r, w = os.pipe()
            try:
                child = pyclone3.spawn(
                    argv, stdout=w, uid=65534, gid=65533, extra_groups=[65532, 100]
                )
                os.close(w)
                w = -1
                assert (child.pidfd is None) == (spawn_path == "vfork")
                out = b""
                while True:
                    part = os.read(r, 4096)
                    if not part:
                        break
                    out += part
                # waitpid, not the pidfd: the suite also runs without waitid.
                assert os.waitpid(child.pid, 0)[1] == 0
                if child.pidfd is not None:
                    child.pidfd.close()
            finally:
                os.close(r)
                if w >= 0:
                    os.close(w)
        uid, gid, groups = out.decode().splitlines()
        assert (uid, gid) == ("65534", "65533")
        assert set(groups.split()) == {"65533", "65532", "100"}
        assert _dumpable() == 1
        # A failure before exec still travels back as subprocess's exception.
        with pytest.raises(FileNotFoundError) as info:
            Popen(["/nonexistent/program"], **ids)
        assert info.value.filename == "/nonexistent/program"
        with pytest.raises(FileNotFoundError):
            Popen(["/bin/true"], cwd="/nonexistent/dir", **ids)
        assert _dumpable() == 1
    finally:
        import ctypes

        ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE: the next tests need it


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
def test_changing_ids_unprivileged_fails_on_every_path(spawn_path: str) -> None:
    from conftest import become_nobody, fork_child

    def body() -> int:
        become_nobody()
        try:
            pyclone3.run(["/bin/true"], user=0)
        except PermissionError:
            return 0
        return 1

    with fork_child(body) as child:
        assert os.waitstatus_to_exitcode(os.waitpid(child.pid, 0)[1]) == 0


# ---- pidfds --------------------------------------------------------------------


def test_pidfd_is_the_childs(spawn_path: str) -> None:
    with Popen(["/bin/sleep", "30"]) as p:
        assert p.spawn_path == spawn_path
        if spawn_path == "vfork":
            with pytest.raises(PidfdUnavailableError):
                p.pidfd  # noqa: B018
            p.kill()
            return
        assert isinstance(p.pidfd, PidFd) and p.pidfd.pid == p.pid
        if FEATURES.pidfd_get_info:
            assert p.pidfd.info().pid == p.pid
        p.kill()
        p.wait()
        assert p.pidfd.closed  # reaped: the Popen closed its pidfd


def test_create_pidfd_false_spawns_without_one() -> None:
    with Popen(["/bin/true"], create_pidfd=False) as p:
        with pytest.raises(PidfdUnavailableError):
            p.pidfd  # noqa: B018
        assert p.wait() == 0


@require("waitid_pidfd")
def test_take_pidfd_transfers_ownership(spawn_path: str) -> None:
    if spawn_path == "vfork":
        pytest.skip("no pidfd on this path")
    p = Popen(["/bin/sh", "-c", "exit 6"])
    pidfd = p.take_pidfd()
    with pidfd:
        assert p.wait() == 6
        assert not pidfd.closed  # ours now: the Popen left it open
        assert pidfd.wait().exit_code == 6  # the same status, from the one reap


def test_wait_sleeps_instead_of_polling(spawn_path: str) -> None:
    if spawn_path == "vfork":
        pytest.skip("no pidfd: the standard library's loop is used")
    if not FEATURES.waitid_pidfd:
        pytest.skip("no waitid(P_PIDFD): the standard library's loop is used")
    with Popen(["/bin/sleep", "0.5"]) as p:
        switches = thread_sleeps()
        p.wait(timeout=30)
        ours = thread_sleeps() - switches
    # The control: without a pidfd, Popen waits in the standard library's loop.
    with Popen(["/bin/sleep", "0.5"], create_pidfd=False) as p:
        switches = thread_sleeps()
        p.wait(timeout=30)
        stdlib = thread_sleeps() - switches
    assert ours <= 3 < stdlib, (ours, stdlib)


def test_popen_subclass_composition() -> None:
    log: list[str] = []

    class Logged(pyclone3.CommandExt, pyclone3.ChildExt, subprocess.Popen):  # type: ignore[type-arg, misc]
        def wait(self, timeout: float | None = None) -> int:
            log.append("wait")
            return super().wait(timeout)

    with Logged(["/bin/sh", "-c", "exit 9"]) as p:
        assert p.wait() == 9
    assert log == ["wait", "wait"]  # ours, then __exit__'s


def test_io_text_wrapper_attributes_unchanged() -> None:
    with Popen(["/bin/cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as p:
        assert isinstance(p.stdin, io.TextIOWrapper) and isinstance(p.stdout, io.TextIOWrapper)
        out, _ = p.communicate("text\n")
    assert out == "text\n"


def test_mixins_after_subprocess_popen_are_refused_at_class_creation() -> None:
    """In the wrong order the mixins would be dead code: a plain Popen, silently."""
    for bases in (
        (subprocess.Popen, pyclone3.CommandExt, pyclone3.ChildExt),
        (pyclone3.CommandExt, subprocess.Popen, pyclone3.ChildExt),
        (subprocess.Popen, pyclone3.ChildExt),
    ):
        with pytest.raises(TypeError, match=r"must come before subprocess\.Popen"):
            type("Wrong", bases, {})
    # The documented orders, and subclasses of pyclone3.Popen, are fine.
    type("Right", (pyclone3.ChildExt, subprocess.Popen), {})  # spawns as the stdlib does
    for bases in ((pyclone3.CommandExt, pyclone3.ChildExt, subprocess.Popen), (pyclone3.Popen,)):
        cls = type("Right", bases, {})
        with cls(["/bin/true"]) as p:
            assert p.wait() == 0


def test_a_subclass_of_subprocess_popen_once_it_is_pyclone3s_is_accepted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``subprocess.Popen = pyclone3.Popen``, then ``class X(subprocess.Popen)``.

    What CPython's own test_subprocess does, run against pyclone3: the
    mixin-order check must measure against the standard library's class,
    not whatever ``subprocess.Popen`` names now.
    """
    monkeypatch.setattr(subprocess, "Popen", pyclone3.Popen)
    cls = type("Sub", (subprocess.Popen,), {})
    with cls(["/bin/true"]) as p:
        assert p.wait() == 0
        assert p.spawn_path is not None  # spawned by pyclone3


def _typed_keywords(path: str, where: Callable[[ast.AST], bool]) -> list[str]:
    tree = ast.parse(pathlib.Path(path).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if where(node):
            if isinstance(node, ast.FunctionDef):
                return [a.arg for a in node.args.kwonlyargs]
            assert isinstance(node, ast.ClassDef)
            return [
                n.target.id
                for n in node.body
                if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
            ]
    raise AssertionError(f"not found in {path}")


def test_commandext_keywords_are_spelt_alike_for_type_checkers_and_at_run_time() -> None:
    """CommandExt.__init__ is typed for checkers but takes **kwargs at run time.

    The keywords it takes for itself (``_take_options``), its typed
    signature, and ``Popen``'s typed ``_Options`` must name the same ones, in
    the same order; else a keyword would type-check and then go to
    subprocess (a TypeError), or work and not type-check.
    """
    import pyclone3.mixins.command as command
    import pyclone3.popen as popen

    code = command.CommandExt._take_options.__code__
    at_run_time = list(code.co_varnames[1 : 1 + code.co_kwonlyargcount])
    assert set(at_run_time) == command.KEYWORDS
    stub = _typed_keywords(
        command.__file__,
        lambda n: (
            isinstance(n, ast.FunctionDef)
            and n.name == "__init__"
            and bool(n.args.kwonlyargs)
            and n.args.kwonlyargs[0].arg == "create_pidfd"
        ),
    )
    options = _typed_keywords(
        popen.__file__, lambda n: isinstance(n, ast.ClassDef) and n.name == "_Options"
    )
    assert stub == at_run_time
    assert options == at_run_time
    # And what inspect.signature shows for the run-time **kwargs form.
    shown = inspect.signature(pyclone3.Popen).parameters
    assert [n for n, p in shown.items() if p.kind is p.KEYWORD_ONLY] == at_run_time


def test_a_pyclone3_keyword_with_subprocess_keywords_is_taken_and_checked() -> None:
    """With stdout= given too, pyclone3's keywords still reach the spawn, checked."""
    with pytest.raises(ValueError, match="unknown spawn path"):
        pyclone3.Popen(["/bin/true"], stdout=subprocess.DEVNULL, spawn_path="nope")
    # create_pidfd=False takes the vfork path, which every kernel and sandbox has.
    with pyclone3.Popen(["/bin/true"], stdout=subprocess.DEVNULL, create_pidfd=False) as p:
        assert p.wait() == 0 and p.spawn_path == "vfork"
    with pytest.raises(TypeError, match="stdoutt"):
        pyclone3.Popen(["/bin/true"], stdoutt=1)  # type: ignore[call-overload]
