"""The spawn core: the low-level spawn(), and the races pidfds exist to close."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import pytest
from conftest import (
    CLONE_PATHS,
    FEATURES,
    PYTHON,
    _path_unavailable,
    become_nobody,
    fork_child,
    malloc_churn,
    needs_stdlib_spawn,
    needs_threads,
    open_fds,
    reap_every_child,
    require,
    subprocess_without_posix_spawn,
    zombies,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import pyclone3
from pyclone3 import CloneFlag, PidFd, Popen, spawn, syscalls

pytestmark = require("waitid_pidfd")  # these tests reap through pidfds

# ---- spawn() -------------------------------------------------------------------


def test_spawn_returns_pid_pidfd_and_path(spawn_path: str) -> None:
    r, w = os.pipe()
    try:
        child = spawn(["/bin/echo", "low level"], stdout=w)
    finally:
        os.close(w)
    assert child.path == spawn_path and child.pid > 0
    if spawn_path == "vfork":
        assert child.pidfd is None
        _, wstatus = os.waitpid(child.pid, 0)
        assert os.waitstatus_to_exitcode(wstatus) == 0
    else:
        assert child.pidfd is not None
        with child.pidfd as pidfd:
            assert pidfd.wait().exit_code == 0
    with os.fdopen(r, "rb") as f:
        assert f.read() == b"low level\n"


@pytest.mark.parametrize(
    "args, kwargs, exc",
    [
        ("/bin/true", {}, TypeError),
        ([], {}, ValueError),
        (["/bin/true"], {"stdout": "1"}, TypeError),
        (["/bin/true"], {"umask": 1.5}, TypeError),
        (["/bin/true"], {"spawn_path": "posix_spawn"}, ValueError),
        (["/bin/tr\0ue"], {}, ValueError),
    ],
)
def test_spawn_rejects_bad_arguments(args: object, kwargs: dict, exc: type) -> None:
    with pytest.raises(exc):
        spawn(args, **kwargs)  # type: ignore[arg-type]


def test_spawn_failure_is_raised_after_reaping(spawn_path: str) -> None:
    with pytest.raises(FileNotFoundError) as info:
        spawn(["/no/such/binary"])
    assert info.value.filename == "/no/such/binary"


def test_set_spawn_path_validates() -> None:
    with pytest.raises(ValueError):
        pyclone3.set_spawn_path("fork")
    assert pyclone3.get_spawn_path() is None


def test_environment_variable_forces_a_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYCLONE3_SPAWN_PATH", "vfork")
    with Popen(["/bin/true"]) as p:
        assert p.spawn_path == "vfork"
    monkeypatch.setenv("PYCLONE3_SPAWN_PATH", "bogus")
    with pytest.raises(ValueError, match="PYCLONE3_SPAWN_PATH"):
        Popen(["/bin/true"])


def test_unforced_spawn_takes_the_fastest_path() -> None:
    with Popen(["/bin/true"]) as p:
        pass
    from pyclone3._clone3 import lib

    if lib.HAS_CLONE3_SPAWN and FEATURES.clone_pidfd:
        assert p.spawn_path == "clone3"


# ---- what pidfds are for ---------------------------------------------------------------


@require("pidfd_info_exit")
def test_child_reaped_by_a_foreign_waitpid_keeps_its_status(spawn_path: str) -> None:
    if spawn_path == "vfork":
        pytest.skip("no pidfd on this path")
    with Popen(["/bin/sh", "-c", "exit 17"]) as p:
        pid, _ = os.waitpid(-1, 0)  # someone else's reaper
        assert pid == p.pid
        assert p.wait(timeout=10) == 17


@require("pidfd_info_exit")
def test_sigchld_handler_that_reaps_everything(spawn_path: str) -> None:
    if spawn_path == "vfork":
        pytest.skip("no pidfd on this path")

    old = signal.signal(signal.SIGCHLD, reap_every_child)
    try:
        procs = [Popen(["/bin/sh", "-c", f"exit {i}"]) for i in range(20)]
        assert [p.wait(timeout=10) for p in procs] == list(range(20))
        with Popen(["/bin/sleep", "30"]) as p:
            p.terminate()
            assert p.wait(timeout=10) == -signal.SIGTERM  # never 0
    finally:
        signal.signal(signal.SIGCHLD, old)


def test_sigchld_handler_that_only_counts(spawn_path: str) -> None:
    hits: list[int] = []
    old = signal.signal(signal.SIGCHLD, lambda *a: hits.append(1))
    try:
        for i in range(10):
            assert pyclone3.call(["/bin/sh", "-c", f"exit {i}"]) == i
    finally:
        signal.signal(signal.SIGCHLD, old)
    assert hits


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a PID namespace and set_tid")
@require("clone_pidfd")
def test_recycled_pid_is_not_signalled() -> None:
    """In a new PID namespace, steer a new process onto a dead child's PID.

    os.kill(pid) would now hit the newcomer; Popen.send_signal, through the
    pidfd, must not.
    """
    pid, fd = syscalls.clone3(flags=CloneFlag.CLONE_NEWPID | CloneFlag.CLONE_PIDFD)
    if pid == 0:  # pragma: no cover - PID 1 of the new namespace
        code = 1
        try:
            victim = Popen(["/bin/sleep", "30"])
            old_pid = victim.pid
            os.kill(old_pid, signal.SIGKILL)
            os.waitpid(old_pid, 0)  # reaped behind the Popen's back
            new_pid, _ = syscalls.clone3(set_tid=[old_pid])
            if new_pid == 0:
                time.sleep(30)
                os._exit(0)
            assert new_pid == old_pid  # the PID is reused
            os.kill(old_pid, 0)  # ... and a PID-based kill would reach it
            victim.send_signal(signal.SIGKILL)  # through the pidfd: must not
            time.sleep(0.1)
            assert os.waitpid(new_pid, os.WNOHANG) == (0, 0)  # the newcomer lives
            os.kill(new_pid, signal.SIGKILL)
            os.waitpid(new_pid, 0)
            victim.wait()
            code = 0
        finally:
            os._exit(code)
    assert fd is not None
    with PidFd(fd, pid=pid) as ns_init:
        assert ns_init.wait(timeout=60).exit_code == 0


# ---- many children, failures, threads --------------------------------------------------


def test_1000_spawns_with_failures_mixed_in_leave_nothing_behind(spawn_path: str) -> None:
    before = len(open_fds())
    failures = 0
    for i in range(1000):
        if i % 4 == 3:
            with pytest.raises(FileNotFoundError):
                Popen(["/no/such/program"], stdout=subprocess.PIPE)
            failures += 1
        else:
            with Popen(["/bin/true"], stdout=subprocess.DEVNULL) as p:
                pass
            assert p.returncode == 0
    assert failures == 250
    assert len(open_fds()) == before
    assert zombies() == []


@needs_threads
def test_8_threads_spawning_at_once(spawn_path: str) -> None:
    errors: list[BaseException] = []
    codes: list[int] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        try:
            for i in range(40):
                if i % 5 == 0:
                    with Popen(["/bin/sleep", "30"]) as p:
                        p.kill()
                    code = p.returncode
                    assert code == -signal.SIGKILL
                else:
                    code = pyclone3.call(["/bin/sh", "-c", f"exit {n}"])
                    assert code == n
                with lock:
                    codes.append(code)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert len(codes) == 320


@pytest.mark.slow  # a stress test: 200 spawns per path
@needs_threads
def test_spawn_while_another_thread_hammers_malloc(spawn_path: str) -> None:
    with malloc_churn():
        for i in range(200):
            assert pyclone3.call([PYTHON, "-c", ""] if i % 50 == 0 else ["/bin/true"]) == 0


@pytest.mark.slow  # a stress test: 50 forks per path
@needs_threads
def test_preexec_fn_while_another_thread_hammers_malloc(spawn_path: str) -> None:
    # The preexec_fn child runs Python after a real fork(): glibc's fork
    # handlers must have reset malloc's locks, or this deadlocks.
    with malloc_churn():
        for _ in range(50):
            r = pyclone3.run(["/bin/true"], preexec_fn=lambda: [bytearray(65536)], timeout=30)
            assert r.returncode == 0


@needs_stdlib_spawn
def test_emfile_is_raised_cached_never_and_recovers() -> None:
    code = """
import errno, os, resource
import pyclone3, pyclone3._paths as sp
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
pyclone3.features()
held = []
try:
    while True:
        held.append(os.open("/dev/null", os.O_RDONLY))
except OSError as exc:
    assert exc.errno == errno.EMFILE
try:
    pyclone3.Popen(["/bin/true"])
except OSError as exc:
    assert exc.errno == errno.EMFILE, exc
    print("EMFILE")
cached = sorted(sp.unsupported_paths())
for fd in held:
    os.close(fd)
with pyclone3.Popen(["/bin/true"]) as p:
    print(p.spawn_path)
print(len(os.listdir("/proc/self/fd")) < 10)
print(",".join(cached) or "-")
"""
    out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    from pyclone3._clone3 import lib

    emfile, path, few_fds, cached = out.stdout.split()
    assert (emfile, few_fds) == ("EMFILE", "True")
    # Cached: at most the paths this kernel or sandbox lacks, all before the
    # one used (an EPERM is not cached); never the EMFILE.
    earlier = set(pyclone3.SPAWN_PATHS[: pyclone3.SPAWN_PATHS.index(path)])
    assert set(cached.split(",")) - {"-"} <= earlier
    if lib.HAS_CLONE3_SPAWN and FEATURES.clone_pidfd:
        assert path == "clone3"


def test_rlimit_nproc_eagain_is_raised_not_cached_and_leaves_nothing() -> None:
    """As nobody (root is exempt), with RLIMIT_NPROC at 0: every path raises
    BlockingIOError (EAGAIN), leaves no fd and no child, caches nothing, and
    spawning works again once the limit is raised."""
    import resource

    import pyclone3._paths as sp

    cases = [{"spawn_path": p} for p in pyclone3.SPAWN_PATHS if not _path_unavailable(p)]
    cases.append({"preexec_fn": lambda: None})
    if CLONE_PATHS:
        cases.append({"clone_flags": CloneFlag.CLONE_NEWUSER, "uid_map": "0 65534 1"})

    def body() -> int:
        become_nobody()
        _, hard = resource.getrlimit(resource.RLIMIT_NPROC)
        cached = sp.unsupported_paths()
        fds = open_fds()
        resource.setrlimit(resource.RLIMIT_NPROC, (0, hard))
        for n, kw in enumerate(cases):
            try:
                pyclone3.spawn(["/bin/true"], **kw)
            except BlockingIOError:
                pass
            else:
                return 10 + n
            if open_fds() != fds or zombies():
                return 30 + n
        if sp.unsupported_paths() != cached:
            return 2
        resource.setrlimit(resource.RLIMIT_NPROC, (hard, hard))
        for n, kw in enumerate(cases):
            child = pyclone3.spawn(["/bin/true"], **kw)
            if child.pidfd is None:
                os.waitpid(child.pid, 0)
            else:
                if child.pidfd.wait().returncode != 0:
                    return 50 + n
                child.pidfd.close()
        return 0

    zombies()  # imports what it needs now: nobody may not read our modules
    child = fork_child(body)
    try:
        assert child.wait(60).returncode == 0
    finally:
        child.close()


# ---- pdeathsig -----------------------------------------------------------------------


def _orphan(pdeathsig: int | None, preexec: bool = False) -> PidFd:
    """A `sleep 30` whose parent (a child of ours) exits at once; its PidFd."""
    r, w = os.pipe()

    def middle() -> int:
        os.close(r)
        kwargs: dict = {"pdeathsig": pdeathsig}
        if preexec:
            kwargs["preexec_fn"] = lambda: None
        p = Popen(["/bin/sleep", "30"], **kwargs)
        os.write(w, str(p.pid).encode())
        os._exit(0)  # dies without waiting: the sleep is orphaned

    parent = fork_child(middle)
    os.close(w)
    try:
        pid = int(os.read(r, 20))
        return PidFd.open(pid)
    finally:
        os.close(r)
        parent.wait()
        parent.close()


def _exited_within(pidfd: PidFd, seconds: float) -> bool:
    import select

    poller = select.poll()
    poller.register(pidfd.fileno(), select.POLLIN)
    return bool(poller.poll(seconds * 1000))


@require("pidfd_open")
@pytest.mark.parametrize("preexec", [False, True])
def test_pdeathsig_kills_the_child_when_its_parent_dies(spawn_path: str, preexec: bool) -> None:
    with _orphan(signal.SIGKILL, preexec) as orphan:
        assert _exited_within(orphan, 10)


@require("pidfd_send_signal")
@require("pidfd_open")
def test_without_pdeathsig_the_orphan_lives_on() -> None:
    with _orphan(None) as orphan:
        assert not _exited_within(orphan, 0.3)
        orphan.kill()
        assert _exited_within(orphan, 10)


@pytest.mark.parametrize(
    "value, exc", [("KILL", TypeError), (True, TypeError), (65, ValueError), (-1, ValueError)]
)
def test_pdeathsig_is_checked(value: object, exc: type) -> None:
    with pytest.raises(exc):
        Popen(["/bin/true"], pdeathsig=value)
    with pytest.raises(exc):
        spawn(["/bin/true"], pdeathsig=value)  # type: ignore[arg-type]


# ---- argv and environment, as the child sees them -------------------------------------

# Strings with the bytes that matter to the C packing: NULs (refused), empty
# strings, "=" (refused in a name), non-ASCII and undecodable bytes.
_ARG_TEXT = st.text(alphabet=st.sampled_from(["a", "=", "\0", "é", " ", "\udcff"]), max_size=6)
_ARG = st.one_of(_ARG_TEXT, st.binary(max_size=6))


_SHOW = 'printf "%s\\0" "$@"; printf "|\\0"; exec /usr/bin/env -0'


def _child_sees(popen: type, argv: list, env: dict) -> tuple[list[bytes], list[bytes]] | type:
    """The argv and sorted environment a child made by *popen* prints, or the exception type."""
    try:
        with popen(["/bin/sh", "-c", _SHOW, "sh", *argv], env=env, stdout=subprocess.PIPE) as proc:
            out, _ = proc.communicate()
    except (ValueError, TypeError) as exc:
        return type(exc)
    assert proc.returncode == 0
    args, _, environ = out.partition(b"|\0")
    return args.split(b"\0")[:-1], sorted(environ.split(b"\0")[:-1])


@given(st.lists(_ARG, max_size=5), st.dictionaries(_ARG_TEXT, _ARG_TEXT, max_size=4))
@settings(max_examples=60, deadline=None)
def test_argv_and_env_reach_the_child_as_subprocess_passes_them(argv: list, env: dict) -> None:
    """The child's argv and environment (packed in one C buffer) are subprocess's byte for byte."""
    before = open_fds()
    ours = _child_sees(Popen, argv, env)
    with subprocess_without_posix_spawn():
        theirs = _child_sees(subprocess.Popen, argv, env)
    assert ours == theirs
    assert open_fds() == before
    if isinstance(ours, tuple):
        # spawn() packs the same way: the raw call agrees on the arguments.
        r, w = os.pipe2(os.O_CLOEXEC)
        try:
            child = spawn(["/bin/sh", "-c", 'printf "%s\\0" "$@"', "sh", *argv], env=env, stdout=w)
            os.close(w)
            w = -1
            assert child.pidfd is not None
            with child.pidfd as pidfd:
                assert pidfd.wait().returncode == 0
            data = b""
            while chunk := os.read(r, 65536):
                data += chunk
            assert data.split(b"\0")[:-1] == ours[0]
        finally:
            os.close(r)
            if w >= 0:
                os.close(w)


# ---- the child -> parent error channel -----------------------------------------------


@given(st.binary(max_size=40))
@settings(max_examples=500)
def test_error_report_parser_never_raises(data: bytes) -> None:
    from pyclone3._report import BAD_REPORT, STEPS, child_error, parse_report

    result = parse_report(data)
    if not data:
        assert result is None
        return
    assert result is not None
    step, err = result
    assert step == BAD_REPORT or (step in STEPS and 0 <= err <= 4095)
    exc = child_error(step, err, "/cwd", "/exe")  # always buildable
    assert isinstance(exc, (OSError, subprocess.SubprocessError))


@given(st.sampled_from([1, 2, 3, 4]), st.integers(min_value=0, max_value=4095))
def test_well_formed_reports_round_trip(step: int, err: int) -> None:
    import struct

    from pyclone3._report import parse_report

    assert parse_report(struct.pack("ii", step, err)) == (step, err)


# ---- a storm of signals -----------------------------------------------------------------


def test_signal_storm_during_spawn_and_wait(spawn_path: str) -> None:
    hits = [0]

    def count(signum: int, frame: object) -> None:
        hits[0] += 1

    old = signal.signal(signal.SIGALRM, count)
    old_chld = signal.signal(signal.SIGCHLD, count)
    signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)
    try:
        for i in range(150):
            if i % 3 == 0:
                assert pyclone3.call(["/bin/sh", "-c", f"exit {i % 7}"]) == i % 7
            elif i % 3 == 1:
                with Popen(["/bin/sleep", "0.01"]) as p:
                    assert p.wait(timeout=30) == 0
            else:
                with pytest.raises(FileNotFoundError):
                    Popen(["/no/such/program"])
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        signal.signal(signal.SIGCHLD, old_chld)
    assert hits[0] > 100  # the storm really blew


def test_interrupted_wait_can_be_repeated_and_returns_the_status() -> None:
    class Interrupt(Exception):
        pass

    def boom(signum: int, frame: object) -> None:
        raise Interrupt

    old = signal.signal(signal.SIGALRM, boom)
    try:
        with Popen(["/bin/sh", "-c", "sleep 0.3; exit 5"]) as p:
            for timeout in (None, 30.0):
                signal.setitimer(signal.ITIMER_REAL, 0.05)
                with pytest.raises(Interrupt):
                    p.wait(timeout=timeout)
            signal.setitimer(signal.ITIMER_REAL, 0)
            assert p.returncode is None
            assert p.wait(timeout=30) == 5
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# ---- spawn cost flat in the fds the parent holds --------------------------------


def _fd_table_size(**kwargs: object) -> int:
    """The FDSize of a child spawned with *kwargs*: the size of the fd table it got."""
    out = pyclone3.check_output(["/bin/grep", "^FDSize:", "/proc/self/status"], **kwargs)
    return int(out.split()[1])


@pytest.mark.parametrize("changes_ids", [False, True], ids=["same-ids", "changes-ids"])
def test_a_child_copies_only_the_low_fds_it_needs(spawn_path: str, changes_ids: bool) -> None:
    """With 100 live children held, their pidfds sit above the low fds, and a
    child born sharing our fd table copies only those low fds: its table
    stays small, where a copied table has room for every pidfd we hold."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    high = min(1024, soft // 2)  # where the spawn core moves pidfds once 0..63 are crowded
    if high < 256:
        pytest.skip(f"RLIMIT_NOFILE {soft}: too low to move pidfds up")
    pidfd_path = next((p for p in ("clone3", "clone") if not _path_unavailable(p)), None)
    if pidfd_path is None:
        pytest.skip("no path that takes a pidfd at creation")
    ids = {"user": os.getuid(), "group": os.getgid()} if changes_ids else {}
    held: list[PidFd] = []
    try:
        for _ in range(100):
            child = spawn(["/bin/sleep", "60"], spawn_path=pidfd_path)
            assert child.pidfd is not None
            held.append(child.pidfd)
        numbers = sorted(p.fileno() for p in held)
        assert numbers[-1] >= high and sum(n >= high for n in numbers) >= 100 - 64
        size = _fd_table_size(**ids)
        # Shared-then-trimmed on clone3 and clone, and on every path when the
        # child runs in a copy of our memory; vfork copies the whole table,
        # and so does every path without close_range (before Linux 5.9).
        if FEATURES.close_range and (spawn_path in ("clone3", "clone") or changes_ids):
            assert size < high, size
        else:
            assert size > numbers[-1], size
    finally:
        for pidfd in held:
            # By PID, not the pidfd: the suite also runs without
            # pidfd_send_signal and waitid; ours and unreaped, the PID is theirs.
            os.kill(pidfd.pid, signal.SIGKILL)
            os.waitpid(pidfd.pid, 0)
            pidfd.close()
