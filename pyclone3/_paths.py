"""The path policy: which spawn path to try, in what order, and what a refusal teaches.

The paths, fastest first (see :data:`SPAWN_PATHS`): ``clone3``, ``clone``,
``vfork_pidfd``, ``vfork``. The first choice is probed once and cached, as
robust runtimes do it: a kernel's ``ENOSYS`` (and ``EINVAL`` for an unknown
flag) is remembered; an ``EPERM`` (a seccomp filter, perhaps for some flags
only) moves to the next path for this spawn only; ``EAGAIN``, ``ENOMEM``,
``EMFILE`` and ``ENFILE`` are raised and change nothing.
:func:`set_spawn_path` or the environment variable ``PYCLONE3_SPAWN_PATH``
force one path (and only that one).
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable

from ._clone3 import lib
from ._executors import SpawnedChild, learned, spawn_copied, spawn_forked, spawn_vm
from ._features import TRANSIENT_ERRNOS, features
from ._plan import Plan
from ._report import ChildFailed
from .clone_options import CloneOptions
from .pidfd import PidFd

# typing is not imported at run time (see pyclone3/__init__.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "SPAWN_PATHS",
    "get_spawn_path",
    "in_pid_namespace",
    "run_option_paths",
    "run_paths",
    "set_spawn_path",
]

#: The spawn paths, fastest first.
SPAWN_PATHS = ("clone3", "clone", "vfork_pidfd", "vfork")
ENV_VAR = "PYCLONE3_SPAWN_PATH"

_lock = threading.Lock()
_forced: str | None = None
_unsupported: set[str] = set()


def set_spawn_path(path: str | None) -> None:
    """Force every spawn to use *path* (one of :data:`SPAWN_PATHS`), or ``None`` to probe.

    Takes precedence over ``PYCLONE3_SPAWN_PATH``. A forced path is used even
    where it fails: its error is raised, with no fallback.
    """
    global _forced
    if path is not None and path not in SPAWN_PATHS:
        raise ValueError(f"unknown spawn path {path!r}; choose from {SPAWN_PATHS}")
    _forced = path


def get_spawn_path() -> str | None:
    """The forced spawn path (set_spawn_path, else $PYCLONE3_SPAWN_PATH), or ``None``."""
    if _forced is not None:
        return _forced
    raw = _environ_get(_ENV_KEY)  # read on every spawn: the variable may change
    if not raw:
        return None
    env = os.fsdecode(raw)
    if env not in SPAWN_PATHS:
        raise ValueError(f"{ENV_VAR}={env!r} is not one of {SPAWN_PATHS}")
    return env


# os.environ keeps its contents in a dict of encoded keys; reading that is
# many times cheaper than os.environ.get, which runs on every spawn.
_environ_data = getattr(os.environ, "_data", None)
if isinstance(_environ_data, dict):
    _ENV_KEY: Any = os.environ.encodekey(ENV_VAR)
    _environ_get = _environ_data.get
else:  # pragma: no cover - another os.environ implementation
    _ENV_KEY = ENV_VAR
    _environ_get = os.environ.get


def unsupported_paths() -> frozenset[str]:
    """The paths this process found the kernel or sandbox lacks, and no longer tries."""
    with _lock:
        return frozenset(_unsupported)


def _mark_unsupported(path: str) -> None:
    with _lock:
        _unsupported.add(path)


_candidates_cache: tuple[frozenset[str], tuple[str, ...]] | None = None


def _candidates(forced: str | None) -> tuple[str, ...]:
    global _candidates_cache
    if forced is not None:
        return (forced,)
    cache = _candidates_cache
    if cache is not None and cache[0] == _unsupported:
        return cache[1]
    unsupported = frozenset(_unsupported)
    paths = tuple(
        p for p in SPAWN_PATHS if p not in unsupported and (p != "clone3" or lib.HAS_CLONE3_SPAWN)
    )
    _candidates_cache = (unsupported, paths)
    return paths


def run_paths(
    plan: Plan, preexec_fn: Callable[[], Any] | None, forced: str | None, create_pidfd: bool
) -> SpawnedChild:
    """Spawn without clone options, down the paths until one makes the child."""
    paths = ("vfork",) if not create_pidfd else _candidates(forced)
    if preexec_fn is not None:
        path = "vfork" if paths == ("vfork",) else (forced or "vfork_pidfd")
        return spawn_forked(plan, path, preexec_fn)
    last: OSError | None = None
    for path in paths:
        if path == "vfork_pidfd" and forced is None and not features().pidfd_open:
            continue
        retry = True
        while retry:
            retry = False
            try:
                # One attempt. Inline, not a call of its own: this runs on
                # every plain spawn, when the CPU's caches are cold after the
                # last child and each call costs the most.
                if plan.changes_ids:
                    child = spawn_copied(plan, path, None)
                else:
                    child = spawn_vm(plan, path)
                if child.pidfd is None and path in ("clone3", "clone"):
                    _mark_unsupported(path)  # a kernel older than CLONE_PIDFD ignores the flag
                return child
            except ChildFailed as failed:
                if failed.step != lib.SPAWN_ERR_PIDFD or forced is not None:
                    raise
                _mark_unsupported(path)  # the child could not open or send its pidfd
                last = OSError(failed.err, os.strerror(failed.err))
            except OSError as exc:
                if forced is not None or exc.errno in TRANSIENT_ERRNOS:
                    raise
                last = exc
                if exc.errno == errno.EPERM:
                    break  # a filter, perhaps for this flag set only: do not cache
                if path == "clone3" and exc.errno == errno.EINVAL and learned.clear_sighand:
                    learned.clear_sighand = False  # 5.3 and 5.4 lack CLONE_CLEAR_SIGHAND
                    retry = True
                    continue
                _mark_unsupported(path)
    assert last is not None
    raise last


def _option_paths(opts: CloneOptions, forced: str | None) -> tuple[str, ...]:
    """The paths that can honour *opts*: clone3, and clone unless clone3 is needed."""
    if opts.needs_clone3:
        able: tuple[str, ...] = ("clone3",)
    elif opts.needs_clone or opts.fork_like:
        able = ("clone3", "clone")
    else:
        able = SPAWN_PATHS  # a cgroup or setns only: the child can do either itself
    if forced is not None:
        if forced not in able:
            raise ValueError(
                f"spawn path {forced!r} cannot honour these options; use one of {able}"
            )
        return (forced,)
    if not opts.fork_like and not lib.HAS_CLONE3_SPAWN:
        able = tuple(p for p in able if p != "clone3")
    return tuple(p for p in able if p not in _unsupported) or able


#: What CLONE_INTO_CGROUP returns for a cgroup it will not take (a domain
#: with controllers and no room for processes, a threaded cgroup, no access).
_CGROUP_ERRNOS = frozenset({errno.EBUSY, errno.EOPNOTSUPP, errno.EACCES, errno.EBADF})


def run_option_paths(plan: Plan, opts: CloneOptions, forced: str | None) -> SpawnedChild:
    """Spawn with clone options: move down a path only for ENOSYS or EPERM; cache nothing.

    An ``EINVAL`` or ``E2BIG`` from clone3 with a cgroup means no
    ``CLONE_INTO_CGROUP`` (before 5.7): the same path is tried once more with
    the child joining the cgroup itself. And an ``EINVAL`` where the options
    are the child's to apply (a cgroup, setns) moves on: the clone call was
    then a plain spawn's, which the path refused.
    """
    last: OSError | None = None
    for path in _option_paths(opts, forced):
        plan.s.cgroup_in_child = 0 if path == "clone3" else 1
        for _ in range(2):
            try:
                if opts.fork_like or plan.changes_ids:
                    return spawn_copied(plan, path, opts)
                return spawn_vm(plan, path)
            except OSError as exc:
                last = exc
                if (
                    exc.errno in (errno.EINVAL, errno.E2BIG)
                    and plan.s.cgroup_fd >= 0
                    and not plan.s.cgroup_in_child
                ):
                    plan.s.cgroup_in_child = 1
                    continue
                if (
                    exc.errno == errno.EINVAL
                    and forced is None
                    and not (opts.needs_clone3 or opts.needs_clone or opts.fork_like)
                ):
                    # Options the child applies itself (a cgroup, setns): the
                    # call was a plain spawn's, so the path is at fault, as
                    # clone(CLONE_PIDFD) under qemu-user is. The next one, then.
                    break
                if forced is not None or exc.errno not in (errno.ENOSYS, errno.EPERM):
                    if exc.errno in _CGROUP_ERRNOS and plan.s.cgroup_fd >= 0:
                        # CLONE_INTO_CGROUP's own refusals: say which cgroup.
                        cgroup = plan.request.cgroup_filename()
                        raise OSError(exc.errno, exc.strerror, cgroup) from None
                    raise
                break
    assert last is not None
    raise last


def in_pid_namespace(target: PidFd | int, run: Callable[[], SpawnedChild]) -> SpawnedChild:
    """Run *run* on a new thread that first entered *target*'s PID namespace.

    ``setns(CLONE_NEWPID)`` changes where the caller's *children* go, so a
    thread of our own enters it and spawns: the child is born inside, and
    the thread, with its changed namespace, ends.
    """
    from . import syscalls

    result: list[Any] = []

    def body() -> None:
        try:
            syscalls.setns(target, lib.CLONE_NEWPID)
            result.append(run())
        except BaseException as exc:
            result.append(exc)

    thread = threading.Thread(target=body, name="pyclone3-setns-pid")
    thread.start()
    thread.join()
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]  # type: ignore[no-any-return]
