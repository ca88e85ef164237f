"""Type-checked, never run: scopes as users see them (``mypy --strict tests/typing``).

A ``type: ignore`` below marks a call that must be refused (``--strict``'s
``warn_unused_ignores`` fails the check if it is ever accepted).
"""

from __future__ import annotations

import subprocess
from typing import Optional, Union

from typing_extensions import assert_type

import pyclone3
from pyclone3.multi import ExitStream, ScopeExitStream
from pyclone3.scope import ScopeEvents


def popen_and_run_take_a_scope() -> None:
    p = pyclone3.Popen(["x"], scope=True)
    assert_type(p, pyclone3.Popen[bytes])
    assert_type(p.scope, Optional[pyclone3.Scope])
    with pyclone3.Scope() as scope:
        pyclone3.Popen(["x"], scope=scope, text=True)
        # run() is typed as typeshed types subprocess.run, which knows none of
        # pyclone3's keywords: scope= works at run time, and Popen is the typed way.
        pyclone3.run(["x"], scope=True, timeout=5)  # type: ignore[call-overload]
        with pyclone3.Popen(["x"], stdout=subprocess.PIPE, scope=True) as p2:
            assert_type(p2.communicate(timeout=5)[0], bytes)
        assert_type(pyclone3.spawn(["x"], scope=scope), pyclone3.SpawnedChild)
    pyclone3.Popen(["x"], scope="yes")  # type: ignore[call-overload]
    pyclone3.spawn(["x"], scope=True)  # type: ignore[arg-type]


def the_scope_api() -> None:
    scope = pyclone3.Scope(pids_max=10, memory_max="512M", cpu_max=0.5)
    pyclone3.Scope("/sys/fs/cgroup/x", name="job")
    pyclone3.Scope(cpu_max="half")  # accepted by the types: 'max' is a str (refused at run time)
    pyclone3.Scope(pids_max=1.5)  # type: ignore[arg-type]
    assert_type(scope.path, str)
    assert_type(scope.members(), list[int])
    assert_type(scope.pidfds(), list[pyclone3.PidFd])
    assert_type(scope.populated, bool)
    assert_type(scope.send_signal(15), int)
    assert_type(scope.discard(), bool)
    assert_type(scope.fileno(), int)
    scope.limit(pids_max="max")
    scope.kill()
    scope.wait(timeout=1.0)
    with scope.events() as events:
        assert_type(events, ScopeEvents)
        assert_type(events.fileno(), int)
        assert_type(events.populated, bool)
    scope.release()
    scope.close(kill=False, timeout=None)
    try:
        scope.wait(0)
    except pyclone3.ScopeTimeout as exc:
        assert_type(exc.timeout, Optional[float])
    except pyclone3.ControllerNotEnabledError as exc:
        assert_type(exc.controller, str)


def waiting_on_jobs_keeps_childrens_types() -> None:
    p = pyclone3.Popen(["x"])
    scope = pyclone3.Scope()
    assert_type(pyclone3.wait_all([p]), list[pyclone3.WaitStatus])
    assert_type(pyclone3.wait_all([p, scope]), list[Optional[pyclone3.WaitStatus]])
    assert_type(pyclone3.iter_exits([p]), ExitStream)
    assert_type(pyclone3.iter_exits([scope, p]), ScopeExitStream)
    for job, status in pyclone3.iter_exits([scope, p]):
        assert_type(status, Optional[pyclone3.WaitStatus])
        assert_type(job, Union[pyclone3.PidFd, pyclone3.multi.HasPidFd, pyclone3.Scope])
    for _, exited in pyclone3.iter_exits([p]):
        assert_type(exited, pyclone3.WaitStatus)
    assert_type(pyclone3.wait_any([p])[1], pyclone3.WaitStatus)
    assert_type(pyclone3.wait_any([p, scope])[1], Optional[pyclone3.WaitStatus])
    pyclone3.wait_all([p, "job"])  # type: ignore[list-item]
