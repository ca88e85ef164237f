"""The parts of ``subprocess``'s insides that pyclone3.Popen relies on, pinned down.

``pyclone3.Popen`` subclasses :class:`subprocess.Popen` and overrides four
of its private methods (``_execute_child``, ``_internal_poll``, ``_wait``,
and ``_get_handles`` for the case of no redirection),
calls one (``_close_pipe_fds``), keeps one private attribute
(``_child_created``) as the standard library does, and turns the public
``returncode`` attribute into a property. ``run``, ``call`` & co. are the
standard library's own functions, re-bound to a namespace whose ``Popen``
is pyclone3's. A new CPython that changes any of these must fail here, by
name, on the first day, not somewhere deep in a spawn.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys

import pytest

import pyclone3

# subprocess.Popen's __init__ calls self._execute_child(...) with these, in
# this order; pyclone3's override takes them so.
EXECUTE_CHILD = [
    "self",
    "args",
    "executable",
    "preexec_fn",
    "close_fds",
    "pass_fds",
    "cwd",
    "env",
    "startupinfo",
    "creationflags",
    "shell",
    "p2cread",
    "p2cwrite",
    "c2pread",
    "c2pwrite",
    "errread",
    "errwrite",
    "restore_signals",
    "gid",
    "gids",
    "uid",
    "umask",
    "start_new_session",
]
if sys.version_info >= (3, 11):
    EXECUTE_CHILD.append("process_group")


STREAMS = ("stdin", "stdout", "stderr")


def _parameters(name: str) -> list[str]:
    method = getattr(subprocess.Popen, name, None)
    assert method is not None, f"subprocess.Popen.{name} is gone: pyclone3.Popen overrides it"
    return list(inspect.signature(method).parameters)


def test_execute_child_takes_what_pyclone3_expects() -> None:
    assert _parameters("_execute_child") == EXECUTE_CHILD, (
        "subprocess.Popen._execute_child changed its parameters: "
        "update pyclone3.mixins.CommandExt._execute_child"
    )
    init = subprocess.Popen.__init__.__code__.co_names
    assert "_execute_child" in init, "subprocess.Popen.__init__ no longer calls _execute_child"


def test_internal_poll_and_wait_take_what_pyclone3_expects() -> None:
    poll = _parameters("_internal_poll")
    assert poll[:2] == ["self", "_deadstate"], (
        f"subprocess.Popen._internal_poll changed: {poll}; update ChildExt._internal_poll"
    )
    assert _parameters("_wait") == ["self", "timeout"], (
        "subprocess.Popen._wait changed: update ChildExt._wait"
    )
    # The public methods that reach them: wait() -> _wait, poll() -> _internal_poll.
    assert "_wait" in subprocess.Popen.wait.__code__.co_names, "Popen.wait no longer calls _wait"
    assert "_internal_poll" in subprocess.Popen.poll.__code__.co_names, (
        "Popen.poll no longer calls _internal_poll"
    )


def test_get_handles_without_redirection_is_six_minus_ones_and_nothing_else() -> None:
    """CommandExt._get_handles answers (None, None, None) itself: it must be
    what the standard library answers, with nothing opened or kept."""
    assert _parameters("_get_handles") == ["self", "stdin", "stdout", "stderr"], (
        "subprocess.Popen._get_handles changed: update CommandExt._get_handles"
    )
    fds_before = sorted(os.listdir("/proc/self/fd"))
    p = subprocess.Popen.__new__(subprocess.Popen)
    assert p._get_handles(None, None, None) == (-1,) * 6
    assert vars(p) == {}, f"subprocess.Popen._get_handles now keeps {vars(p)}"
    assert sorted(os.listdir("/proc/self/fd")) == fds_before
    ours = pyclone3.Popen.__new__(pyclone3.Popen)
    assert ours._get_handles(None, None, None) == (-1,) * 6
    assert vars(ours) == {}


def test_close_pipe_fds_takes_the_six_pipe_fds() -> None:
    assert _parameters("_close_pipe_fds") == [
        "self",
        "p2cread",
        "p2cwrite",
        "c2pread",
        "c2pwrite",
        "errread",
        "errwrite",
    ], "subprocess.Popen._close_pipe_fds changed: CommandExt._execute_child calls it"


@pytest.mark.parametrize("stream", ["stdin", "stdout", "stderr"])
def test_every_fd_close_pipe_fds_closes_is_a_child_end(stream: str) -> None:
    """CommandExt._execute_child skips _close_pipe_fds when p2cread, c2pwrite
    and errwrite are all -1: that is sound only while the DEVNULL fd
    _get_handles opens always travels as one of them."""
    p = subprocess.Popen.__new__(subprocess.Popen)
    handles = p._get_handles(*[subprocess.DEVNULL if s == stream else None for s in STREAMS])
    devnull = getattr(p, "_devnull", None)
    try:
        assert devnull is not None, "subprocess no longer keeps its DEVNULL fd as _devnull"
        assert len(handles) == 6, "subprocess.Popen._get_handles no longer gives six fds"
        p2cread, _, _, c2pwrite, _, errwrite = handles
        assert devnull in (p2cread, c2pwrite, errwrite), (
            f"subprocess.Popen._get_handles gives DEVNULL for {stream} outside the child "
            "ends: CommandExt._execute_child must call _close_pipe_fds for it"
        )
        # And with nothing redirected, there is nothing to close.
        assert p._get_handles(None, None, None) == (-1,) * 6
    finally:
        if devnull is not None:
            os.close(devnull)


def test_child_created_is_what_del_and_init_look_at() -> None:
    assert "_child_created" in subprocess.Popen.__del__.__code__.co_names, (
        "subprocess.Popen.__del__ no longer reads _child_created, which "
        "CommandExt._execute_child sets"
    )


def test_returncode_is_a_plain_attribute_in_the_standard_library() -> None:
    # ChildExt makes it a property; the standard library must only assign it.
    assert "returncode" not in vars(subprocess.Popen), (
        "subprocess.Popen now defines returncode on the class: ChildExt.returncode overrides it"
    )
    assert isinstance(inspect.getattr_static(pyclone3.Popen, "returncode"), property)


@pytest.mark.parametrize(
    ("name", "reaches"),
    [
        ("call", "Popen"),
        ("check_call", "call"),
        ("check_output", "run"),
        ("run", "Popen"),
        ("getstatusoutput", "check_output"),
        ("getoutput", "getstatusoutput"),
    ],
)
def test_the_rebound_functions_reach_popen_by_global_name(name: str, reaches: str) -> None:
    code = getattr(subprocess, name).__code__
    assert reaches in code.co_names, (
        f"subprocess.{name} no longer looks up {reaches} as a global: "
        "pyclone3's re-bound copy would not use pyclone3.Popen"
    )
    assert getattr(pyclone3, name).__globals__["Popen"] is pyclone3.Popen
