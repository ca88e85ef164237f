"""Bad input everywhere a user can pass it: a clear error, never a crash, hang or leak.

Hypothesis puts arbitrary values (wrong types, NUL bytes, huge and negative
numbers, NaN, empty and odd containers) into each public argument. The only
acceptable outcomes are success, a ``TypeError`` or ``ValueError`` that
says what is wrong, or an ``OSError`` from the kernel that carries its
errno (and, for a path, the path), as ``subprocess`` raises it; after each
example no fd and no child is left.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
from typing import Any

import pytest
from conftest import open_fds, require, sleeper, zombies
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pyclone3
from pyclone3 import PidFd, WaitTimeout
from pyclone3.clone_options import check_clone_options

pytestmark = require("waitid_pidfd")  # children are reaped through their pidfds

CLEAR = (TypeError, ValueError, OSError)

junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([-1, 0, 1, 2, 3, 2**31 - 1, 2**31, 2**32, 2**63, -(2**63) - 1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=4),
    st.binary(max_size=4),
    st.sampled_from(["a\0b", b"a\0b", "", b"", "/", "\udcff"]),
    st.lists(st.integers(min_value=-3, max_value=2**33), max_size=3),
    st.tuples(st.integers(), st.integers()),
    st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2),
    st.just(object()),
    st.just([b"x", object()]),
)

SPAWN_KEYWORDS = [
    "executable",
    "cwd",
    "env",
    "stdin",
    "stdout",
    "stderr",
    "pass_fds",
    "close_fds",
    "restore_signals",
    "start_new_session",
    "process_group",
    "uid",
    "gid",
    "extra_groups",
    "umask",
    "create_pidfd",
    "spawn_path",
    "pdeathsig",
    "clone_flags",
    "exit_signal",
    "set_tid",
    "cgroup",
    "uid_map",
    "gid_map",
    "setgroups",
    "setns",
]

SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


#: The keywords whose paths a kernel refusal names, as subprocess names them.
PATH_KEYWORDS = ("executable", "cwd", "cgroup")


def assert_clear(exc: BaseException, keyword: str | None = None, value: Any = None) -> None:
    """*exc* is a clear error: a message that says something, or the kernel's errno."""
    if isinstance(exc, (TypeError, ValueError)):
        assert str(exc).strip(), f"{type(exc).__name__} with no message"
        return
    assert isinstance(exc, OSError), exc
    # Built as OSError(errno, strerror[, filename]): Python then picks the
    # subclass for the errno (FileNotFoundError for ENOENT ...).
    assert isinstance(exc.errno, int) and exc.errno > 0 and exc.strerror, repr(exc)
    assert type(exc) is type(OSError(exc.errno, exc.strerror)), repr(exc)
    given_a_path = isinstance(value, (str, bytes, os.PathLike))  # not an fd (cgroup=)
    if keyword in PATH_KEYWORDS and given_a_path and exc.errno not in (errno.EAGAIN, errno.ENOMEM):
        assert exc.filename is not None, f"no path named: {exc!r}"


def _reap(child: pyclone3.SpawnedChild) -> None:
    if child.pidfd is not None:
        with contextlib.suppress(ProcessLookupError):  # it may exit on its own first
            child.pidfd.kill()
        child.pidfd.wait()
        child.pidfd.close()
    else:
        os.waitpid(child.pid, 0)


def _nothing_left(fds: set[int]) -> None:
    leaked = {}
    for fd in open_fds() - fds:
        with contextlib.suppress(FileNotFoundError):  # a transient, gone again
            leaked[fd] = os.readlink(f"/proc/self/fd/{fd}")
    assert not leaked, f"leaked fds: {leaked}"
    assert zombies() == []


@SETTINGS
@given(keyword=st.sampled_from(SPAWN_KEYWORDS), value=junk)
def test_spawn_keywords(keyword: str, value: Any) -> None:
    fds = open_fds()
    args = {keyword: value}
    if keyword in ("stdin", "stdout", "stderr") and isinstance(value, int) and 0 <= value <= 2:
        args[keyword] = -1  # our own stdio: valid, and not worth a hang on a tty
    try:
        child = pyclone3.spawn(["/bin/true"], **args)
    except CLEAR as exc:
        assert_clear(exc, keyword, value)
    else:
        _reap(child)
    _nothing_left(fds)


@SETTINGS
@given(argv=junk)
def test_spawn_argv(argv: Any) -> None:
    fds = open_fds()
    try:
        child = pyclone3.spawn(argv)
    except CLEAR as exc:
        assert_clear(exc)
    else:
        _reap(child)
    _nothing_left(fds)


#: Popen keywords that subprocess.Popen does not have.
PYCLONE3_ONLY = ("create_pidfd", "spawn_path", "pdeathsig", "kill_tree")
#: Keywords taking fd numbers: whether one is open differs from one call to
#: the next (subprocess's own error pipe may land on the number given), so
#: subprocess's outcome is no reference for them.
FD_KEYWORDS = ("stdin", "stdout", "stderr", "pass_fds")


@SETTINGS
@given(keyword=st.sampled_from([*SPAWN_KEYWORDS[:-8], "kill_tree", "user", "group"]), value=junk)
def test_popen_keywords(keyword: str, value: Any) -> None:
    """A clear error, or the very exception subprocess.Popen raises for the same input."""
    import subprocess

    fds = open_fds()
    if keyword in ("stdin", "stdout", "stderr") and value in (0, 1, 2):
        value = None
    reference: type[BaseException] | None = None
    seen: BaseException | None = None
    try:
        with subprocess.Popen(["/bin/true"], **{keyword: value}):
            pass
    except BaseException as exc:
        reference = type(exc)
        seen = exc
    subreaper = pyclone3.tree.is_child_subreaper()  # kill_tree=True sets it for good
    try:
        p = pyclone3.Popen(["/bin/true"], **{keyword: value})
    except CLEAR as exc:
        assert_clear(exc, keyword, value)
        if isinstance(exc, OSError) and keyword not in (*PYCLONE3_ONLY, *FD_KEYWORDS):
            # The kernel refused the spawn: subprocess's spawn was refused alike.
            assert isinstance(seen, OSError) and seen.errno == exc.errno, (exc, seen)
            assert seen.filename == exc.filename, (exc, seen)
    except BaseException as exc:
        assert reference is not None and isinstance(exc, reference), (exc, reference)
    else:
        with p:  # closes any pipes asked for, and waits
            pass
    finally:
        pyclone3.tree.set_child_subreaper(subreaper)
    _nothing_left(fds)


@pytest.mark.slow  # 300 examples, each waiting on a 0.05 s sleep
@SETTINGS
@given(timeout=junk)
def test_wait_timeouts(timeout: Any) -> None:
    with sleeper(0.05) as child:
        first = None
        try:
            first = child.wait(timeout)
        except WaitTimeout:
            pass
        except CLEAR as exc:
            assert_clear(exc)
        # Whatever the timeout did, it neither harmed the child nor lost its exit.
        status = child.wait()
        assert status.exited and status.exit_code == 0, status
        assert first is None or first == status


@pytest.mark.slow  # 300 examples, each waiting on a 0.05 s sleep
@SETTINGS
@given(timeout=junk)
def test_popen_wait_timeouts(timeout: Any) -> None:
    import subprocess

    with pyclone3.Popen(["/bin/sleep", "0.05"]) as p:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        except CLEAR as exc:
            assert_clear(exc)
    assert p.returncode == 0


@SETTINGS
@given(sig=junk, flags=junk)
def test_send_signal_arguments(sig: Any, flags: Any) -> None:
    sent = None
    with sleeper() as child:
        try:
            child.send_signal(sig, flags=flags)
            sent = sig
        except CLEAR as exc:
            assert_clear(exc)
        with contextlib.suppress(ProcessLookupError):  # the signal sent may have killed it
            child.kill()
        status = child.wait()
    # The child died by the signal that got through, or else by the kill
    # (a signal 0, an ignored or a stopping one leaves it to the kill).
    assert status.signaled, status
    assert status.signal in (signal.SIGKILL, sent), (status, sent)


@SETTINGS
@given(value=junk)
def test_pidfd_constructor_and_methods(value: Any) -> None:
    fds = open_fds()
    try:
        PidFd(value).close()
    except CLEAR as exc:
        assert_clear(exc)
    with sleeper() as child:
        for call in (child.setns, child.getfd, child.info, PidFd.open):
            try:
                result = call(value)
            except CLEAR as exc:
                assert_clear(exc)
                continue
            if isinstance(result, int) and call == child.getfd:
                os.close(result)
            elif isinstance(result, PidFd):
                result.close()
        child.kill()
        child.wait()
    _nothing_left(fds)


@SETTINGS
@given(keyword=st.sampled_from(SPAWN_KEYWORDS[-8:]), value=junk)
def test_clone_option_checks(keyword: str, value: Any) -> None:
    try:
        opts = check_clone_options(**{keyword: value})  # no syscall: nothing to leak
    except (TypeError, ValueError):
        return
    # Accepted: an option other than the default is never dropped silently.
    default = (
        value is None
        or (keyword == "clone_flags" and value == 0)
        or (keyword == "exit_signal" and value == signal.SIGCHLD)
        or (keyword == "set_tid" and len(value) == 0)
    )
    assert opts.any is not default, (keyword, value, opts)


@pytest.mark.slow  # 300 examples of a child and four calls
@SETTINGS
@given(value=junk)
def test_many_children_arguments(value: Any) -> None:
    from pyclone3 import iter_exits, wait_all, wait_any

    fds = open_fds()
    with sleeper(0.02) as child:
        for call in (
            lambda: wait_all(value),
            lambda: wait_any(value),
            lambda: list(iter_exits(value)),
            lambda: wait_all([child], timeout=value),
        ):
            try:
                call()
            except pyclone3.WaitAllTimeout:
                pass
            except CLEAR as exc:
                assert_clear(exc)
        child.wait()
    _nothing_left(fds)


def test_a_closed_pidfd_refuses_every_call() -> None:
    child = sleeper()
    pid = child.pid
    child.close()
    for call in (
        child.wait,
        child.try_wait,
        child.kill,
        child.fileno,
        lambda: child.send_signal(signal.SIGTERM),
        lambda: child.setns(pyclone3.CloneFlag.CLONE_NEWNET),
        lambda: pyclone3.tree.kill_tree(child),
    ):
        with pytest.raises(ValueError):
            call()
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
