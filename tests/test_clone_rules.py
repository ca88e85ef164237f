"""Property: pyclone3's verdict on clone options agrees with the kernel's.

For any combination of spawn clone flags, exit signal, set_tid and cgroup,
:func:`check_clone_options` either accepts it or raises ``ValueError``
naming a rule. The same options, unchecked, are then given to the spawn
core in a disposable process: the kernel refuses exactly the combinations
we refuse, with ``EINVAL``; whatever else it says (success, ``EPERM``,
``EEXIST``, ...) is a judgement of privilege or state, not of the
combination. No combination may crash, leak an fd or leave a zombie.

The disposable process D is a child subreaper that forks M; M makes the
attempt with every signal blocked (an exit signal may be anything) and
reports; D reaps everything M leaves (a ``CLONE_PARENT`` child is D's).
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import struct
import uuid
from collections.abc import Iterator

import pytest
from conftest import FEATURES, fork_child, require, requires_root, zombies
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import pyclone3
from pyclone3 import CloneFlag
from pyclone3.clone_options import SPAWN_CLONE_FLAGS, CloneOptions, check_clone_options

pytestmark = [
    requires_root,
    require("clone3"),
    require("pidfd_send_signal"),
    require("waitid_pidfd"),
]

_RECORD = struct.Struct("iii")  # errno (0: spawned), fds leaked, zombies left
PR_SET_CHILD_SUBREAPER = 36
__WALL = 0x40000000


@pytest.fixture(scope="module")
def cgroup_path() -> Iterator[str | None]:
    mount = FEATURES.cgroup2_mount
    if mount is None:
        yield None
        return
    path = os.path.join(mount, f"pyclone3-rules-{uuid.uuid4().hex[:8]}")
    os.mkdir(path)
    try:
        yield path
    finally:
        os.rmdir(path)


def _attempt(opts: CloneOptions, w: int) -> None:
    """In M: give the unchecked options to the spawn core on clone3; report."""
    from pyclone3._paths import run_option_paths
    from pyclone3._plan import Plan
    from pyclone3._request import SpawnRequest

    signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    before = set(os.listdir("/proc/self/fd"))
    plan = Plan(SpawnRequest(["/bin/sleep", "30"], options=opts))
    err = 0
    try:
        child = run_option_paths(plan, opts, "clone3")
    except OSError as exc:
        err = exc.errno or -1
    except BaseException:
        err = -2  # anything but OSError is a bug
    else:
        assert child.pidfd is not None
        child.pidfd.kill()
        with contextlib.suppress(ChildProcessError):  # CLONE_PARENT: D reaps it
            child.pidfd.wait()
        child.pidfd.close()
    finally:
        plan.close()
    leaked = len(set(os.listdir("/proc/self/fd")) - before)
    os.write(w, _RECORD.pack(err, leaked, len(zombies())))


def kernel_verdict(opts: CloneOptions) -> tuple[int, int, int]:
    r, w = os.pipe()

    def disposable() -> int:
        import ctypes

        os.close(r)
        ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        m = os.fork()
        if m == 0:
            try:
                _attempt(opts, w)
            finally:
                os._exit(0)
        os.close(w)
        while True:  # reap M, and whatever it leaves to us
            try:
                pid, status = os.waitpid(-1, __WALL | os.WUNTRACED)
            except ChildProcessError:
                return 0
            if os.WIFSTOPPED(status):
                os.kill(pid, signal.SIGKILL)

    d = fork_child(disposable)
    os.close(w)
    try:
        ready, _, _ = select.select([r], [], [], 30)
        assert ready, "the disposable process did not report"
        data = os.read(r, _RECORD.size)
        assert len(data) == _RECORD.size, "the attempt crashed before reporting"
        assert d.wait(30).returncode == 0
        return _RECORD.unpack(data)  # type: ignore[return-value]
    finally:
        os.close(r)
        if d.try_wait() is None:
            d.kill()
            d.wait()
        d.close()


SPAWN_FLAGS = [f for f in CloneFlag if f & SPAWN_CLONE_FLAGS]
with open("/proc/sys/kernel/pid_max") as _f:
    PID_MAX = int(_f.read())
pid_values = st.one_of(
    st.sampled_from([-1, 0, 1, 2, PID_MAX - 1, PID_MAX, PID_MAX + 1, 1 << 30]),
    st.integers(min_value=PID_MAX // 2, max_value=PID_MAX - 1),  # mostly free
)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    flags=st.sets(st.sampled_from(SPAWN_FLAGS)),
    exit_signal=st.one_of(st.none(), st.integers(min_value=-2, max_value=70)),
    set_tid=st.one_of(st.none(), st.lists(pid_values, min_size=0, max_size=3)),
    use_cgroup=st.booleans(),
)
def test_python_verdict_agrees_with_the_kernel(
    cgroup_path: str | None,
    flags: set[CloneFlag],
    exit_signal: int | None,
    set_tid: list[int] | None,
    use_cgroup: bool,
) -> None:
    bits = 0
    for f in flags:
        bits |= f
    if exit_signal in (signal.SIGKILL, signal.SIGSTOP):
        exit_signal = None  # would kill or stop M itself; see the test below
    cgroup = cgroup_path if use_cgroup else None
    try:
        opts = check_clone_options(bits, exit_signal=exit_signal, set_tid=set_tid, cgroup=cgroup)
        ours = "accept"
    except ValueError as exc:
        ours = str(exc)
        # What the kernel is asked when pyclone3 does not stop it: the raw values.
        sig = signal.SIGCHLD if exit_signal is None else exit_signal
        if bits & CloneFlag.CLONE_PARENT and exit_signal is None:
            sig = 0
        opts = CloneOptions(bits, sig, tuple(set_tid or ()), cgroup)
    err, leaked, zombies = kernel_verdict(opts)
    theirs = "accept" if err != errno.EINVAL else "EINVAL"
    event(f"pyclone3: {ours.split(']')[0].lstrip('[')}")
    event(f"kernel: {errno.errorcode.get(err, 'spawned')}")
    assert (ours == "accept") == (theirs == "accept"), (ours, err and os.strerror(err))
    assert leaked == 0
    assert zombies == 0


def test_an_exit_signal_of_sigkill_reaches_the_kernel() -> None:
    """SIGKILL as exit signal is valid: a parent whose child dies before exec is killed."""
    opts = check_clone_options(exit_signal=signal.SIGKILL)
    r, w = os.pipe()

    def parent() -> int:
        os.close(r)
        try:
            pyclone3.spawn(["/nonexistent"], exit_signal=opts.exit_signal)
        except FileNotFoundError:
            os.write(w, b"survived")
        return 0

    p = fork_child(parent)
    os.close(w)
    try:
        assert p.wait(30).returncode == -signal.SIGKILL
        assert os.read(r, 16) == b""
    finally:
        os.close(r)
        p.close()


PARENT_OF_INIT = """
import errno, os
from pyclone3 import CloneFlag
from pyclone3._paths import run_option_paths
from pyclone3._plan import Plan
from pyclone3._request import SpawnRequest
from pyclone3.clone_options import CloneOptions, check_clone_options
assert os.getpid() == 1
try:
    check_clone_options(CloneFlag.CLONE_PARENT)
except ValueError as exc:
    print(str(exc).split("]")[0] + "]")
opts = CloneOptions(int(CloneFlag.CLONE_PARENT), 0)
plan = Plan(SpawnRequest(["/bin/true"], options=opts))
try:
    run_option_paths(plan, opts, "clone3")
except OSError as exc:
    print(errno.errorcode[exc.errno])
"""


def test_parent_of_init_rule_agrees_with_the_kernel() -> None:
    """As PID 1 of a new namespace, CLONE_PARENT is our ValueError and the kernel's EINVAL."""
    import sys

    r, w = os.pipe()
    try:
        child = pyclone3.spawn(
            [sys.executable, "-c", PARENT_OF_INIT],
            stdout=w,
            clone_flags=CloneFlag.CLONE_NEWPID,
        )
    finally:
        os.close(w)
    with os.fdopen(r) as f:
        out = f.read().split()
    assert child.pidfd is not None
    assert child.pidfd.wait().returncode == 0
    child.pidfd.close()
    assert out == ["[parent-of-init]", "EINVAL"]
