"""pyclone3.Popen against subprocess.Popen itself: the same arguments, the same outcome.

Each case runs under the standard library first, then under pyclone3; the
outcome is either an exception (pyclone3's must be the same class or a
subclass: ``except OverflowError`` must keep working) or what the child
printed, which must match.
"""

from __future__ import annotations

import gc
import os
import pathlib
import subprocess
import sys
import tempfile
from typing import Any

import pytest
from conftest import PYTHON, children, subprocess_without_posix_spawn

import pyclone3

ROOT = os.geteuid() == 0

# The child prints what the case is about: its ids, umask and process group.
REPORT = [
    PYTHON,
    "-S",
    "-c",
    "import os; m = os.umask(0); print(os.getuid(), os.getgid(), oct(m), os.getpgrp())",
]

CASES: list[tuple[str, dict[str, Any]]] = [
    ("user-2**64", {"user": 2**64}),
    ("user-2**32", {"user": 2**32}),
    ("user-unchanged", {"user": 2**32 - 1}),
    ("group-2**64", {"group": 2**64}),
    ("group-2**32", {"group": 2**32}),
    ("group-unchanged", {"group": 2**32 - 1}),
    ("user-negative", {"user": -5}),
    ("group-negative", {"group": -5}),
    ("user-True", {"user": True}),
    ("user-float", {"user": 1.5}),
    ("extra_groups-2**32-1", {"extra_groups": [2**32 - 1]}),
    ("extra_groups-2**32", {"extra_groups": [2**32]}),
    ("extra_groups-2**64", {"extra_groups": [2**64]}),
    ("extra_groups-negative", {"extra_groups": [-1]}),
    ("extra_groups-float", {"extra_groups": [1.5]}),
    ("umask-negative", {"umask": -2}),
    ("umask-2**31", {"umask": 2**31}),
    ("umask-2**64", {"umask": 2**64}),
    ("umask-True", {"umask": True}),
    ("umask-float", {"umask": 0.5}),
]
if sys.version_info >= (3, 11):
    CASES += [
        ("process_group-negative", {"process_group": -2}),
        ("process_group-2**64", {"process_group": 2**64}),
        ("process_group-float", {"process_group": 1.5}),
    ]
    if sys.version_info[:2] != (3, 12):
        # 3.12 truncates 2**31 to a negative pid_t and ignores it; 3.11 and
        # 3.13 raise OverflowError, as pyclone3 does on every version.
        CASES.append(("process_group-2**31", {"process_group": 2**31}))


def outcome(popen: Any, kwargs: dict[str, Any]) -> tuple[str, Any]:
    # Output into a file of ours, not a pipe: 3.9's subprocess leaks the pipes
    # it made when it then refuses an argument (and pyclone3 runs its code).
    with tempfile.TemporaryFile() as out:
        try:
            with popen(REPORT, stdout=out, **kwargs) as p:
                p.wait()
        except Exception as exc:
            errno = exc.errno if isinstance(exc, OSError) else None
            return ("raised", (type(exc), errno))
        out.seek(0)
        return ("ran", (p.returncode, out.read()))


@pytest.mark.parametrize(("kwargs"), [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_the_same_arguments_give_the_same_outcome(kwargs: dict[str, Any]) -> None:
    expected = outcome(subprocess.Popen, kwargs)
    got = outcome(pyclone3.Popen, kwargs)
    if expected[0] == "raised" and got[0] == "raised":
        (want_type, want_errno), (got_type, got_errno) = expected[1], got[1]
        assert issubclass(got_type, want_type), (got, expected)
        assert got_errno == want_errno
    else:
        assert got == expected


def test_out_of_range_ids_raise_overflow_error_like_subprocess() -> None:
    # The checks above compare; this one pins the classes down.
    for kwargs in ({"user": 2**40}, {"group": 2**64}, {"umask": 2**31}):
        with pytest.raises(OverflowError):
            pyclone3.Popen(["/bin/true"], **kwargs)


@pytest.mark.parametrize("gc_on", [True, False])
def test_the_collector_is_off_in_the_preexec_fn_child_and_restored_after(gc_on: bool) -> None:
    """A collection in the child would run the parent's finalizers there."""

    def report() -> None:
        os.write(1, b"on" if gc.isenabled() else b"off")

    was = gc.isenabled()
    try:
        (gc.enable if gc_on else gc.disable)()
        for popen in (subprocess.Popen, pyclone3.Popen):
            with popen(["/bin/true"], preexec_fn=report, stdout=subprocess.PIPE) as p:
                assert p.communicate()[0] == b"off", popen
            assert gc.isenabled() == gc_on, popen
    finally:
        (gc.enable if was else gc.disable)()


def test_a_failing_gc_disable_is_raised_before_the_fork(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse() -> None:
        raise RuntimeError("gc.disable refused")

    before = children()
    monkeypatch.setattr(gc, "disable", refuse)
    with pytest.raises(RuntimeError, match=r"gc\.disable refused"):
        pyclone3.Popen(["/bin/true"], preexec_fn=lambda: None)
    assert children() == before  # nothing was forked


def _failure(popen: Any, **kwargs: Any) -> tuple[type[BaseException], Any, Any]:
    with pytest.raises(OSError) as info:
        popen(["/bin/true"], **kwargs)
    return (type(info.value), info.value.errno, info.value.filename)


def test_a_failed_step_before_exec_names_what_subprocess_names(tmp_path: Any) -> None:
    """The cwd for a failed chdir; for other steps the cwd before 3.13, nothing from 3.13."""
    # setgroups fails: EINVAL for (gid_t)-1 as root, EPERM for anyone else.
    groups = [2**32 - 1] if ROOT else [0]
    for kwargs in (
        {"cwd": str(tmp_path / "missing")},
        {"cwd": str(tmp_path), "extra_groups": groups},
        {"extra_groups": groups},
    ):
        expected = _failure(subprocess.Popen, **kwargs)
        assert _failure(pyclone3.Popen, **kwargs) == expected, kwargs


class _RaisingPath:
    """A path-like whose conversion fails: which input is converted first shows."""

    def __fspath__(self) -> str:
        raise RuntimeError("this executable cannot be converted")


ARGS_CASES: list[tuple[str, Any, dict[str, Any]]] = [
    ("empty-args-with-executable", [], {"executable": "/bin/true"}),
    ("empty-args", [], {}),
    ("argv0-is-not-the-executable", ["name0", "-c", 'echo "$0"'], {"executable": "/bin/sh"}),
    ("bytes-executable", ["name0", "-c", 'echo "$0"'], {"executable": b"/bin/sh"}),
    ("path-search", ["sh", "-c", 'echo "$0"'], {}),
    ("path-search-with-env-path", ["sh", "-c", "echo ok"], {"env": {"PATH": "/bin"}}),
    ("path-search-miss", ["no-such-program-here"], {}),
    ("tuple", ("/bin/sh", "-c", "echo tuple"), {}),
    ("a-string", "/bin/true", {}),
    ("a-path", pathlib.Path("/bin/true"), {}),
    ("bytes-args", [b"/bin/sh", b"-c", b"echo bytes"], {}),
    # Two bad inputs: the error is the one subprocess meets first.
    ("bad-executable-and-bad-arg", ["/bin/true", None], {"executable": _RaisingPath()}),
    ("int-executable-and-unencodable-arg", ["/bin/true", "\ud800"], {"executable": 3}),
    ("ambiguous-env-path-and-bad-arg", ["true", None], {"env": {"PATH": "/bin", b"PATH": b"/"}}),
    ("nul-in-env-and-bad-arg", ["/bin/true", None], {"env": {"A": "x\0y"}}),
    ("nul-in-env-and-nul-in-arg", ["/bin/true", "a\0b"], {"env": {"A": "x\0y"}}),
]


@pytest.mark.parametrize(
    ("args", "kwargs"), [c[1:] for c in ARGS_CASES], ids=[c[0] for c in ARGS_CASES]
)
def test_the_same_program_and_arguments_give_the_same_outcome(
    args: Any, kwargs: dict[str, Any]
) -> None:
    """What the child is and what it prints, or what is raised, as subprocess."""

    def run(popen: Any) -> tuple[str, Any]:
        try:
            with popen(args, stdout=subprocess.PIPE, **kwargs) as p:
                out, _ = p.communicate()
        except Exception as exc:
            return ("raised", (type(exc), exc.errno if isinstance(exc, OSError) else None))
        return ("ran", (p.returncode, out))

    with subprocess_without_posix_spawn():
        expected = run(subprocess.Popen)
    got = run(pyclone3.Popen)
    if expected[0] == "raised" and got[0] == "raised":
        assert issubclass(got[1][0], expected[1][0]) and got[1][1] == expected[1][1], got
    else:
        assert got == expected
