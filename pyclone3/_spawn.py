"""Spawn a program with its pidfd taken at creation: :func:`spawn`, and :func:`start` under it.

A spawn goes down four layers, one module each:

* ``_request``: :class:`~pyclone3._request.SpawnRequest`, every option of one
  spawn, as ``Popen`` and :func:`spawn` ask for it;
* ``_plan``: the request turned into the C struct the child reads;
* ``_paths``: which spawn path to try (``clone3``, ``clone``,
  ``vfork_pidfd``, ``vfork``) and what a refusal teaches;
* ``_executors``: one attempt on one path, the C spawn core
  (``pyclone3/_spawn_parent.c`` and ``_spawn_child.c``) doing the work, and
  the hand-over of the child; ``_report`` turns a child's failure into the
  exception ``subprocess`` raises.

With *preexec_fn* the child must run Python, which rules out the shared
memory of the ``vfork`` family: the child is made by glibc's ``fork()``, with
its atfork handlers and the interpreter's (as :func:`os.fork` and
``subprocess`` do), and, unless the path is ``vfork``, sends its own pidfd
back over a socket.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence

from ._clone3 import lib
from ._executors import SpawnedChild, buffers
from ._paths import SPAWN_PATHS, get_spawn_path, in_pid_namespace, run_option_paths, run_paths
from ._plan import Plan
from ._report import ChildFailed, child_error
from ._request import SpawnRequest, check_pdeathsig
from .clone_options import options_if_any, options_with_cgroup
from .pidfd import PidFd, state_of
from .sandbox import sandbox_if_any

# typing is not imported at run time (see pyclone3/__init__.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .clone_options import IdMap, StrOrBytesPath
    from .landlock import Landlock
    from .scope import Scope
    from .seccomp import SeccompFilter

_new_request = object.__new__

__all__ = ["SpawnRequest", "SpawnedChild", "check_pdeathsig", "spawn", "start"]


def start(
    request: SpawnRequest, on_failed: Callable[[int, int | None], None] | None = None
) -> SpawnedChild:
    """Make the child *request* asks for; ``Popen`` and :func:`spawn` both come here.

    *on_failed(pid, returncode)* is called for a child that was created and
    failed before exec (it has been reaped), before the exception is raised.
    """
    opts = request.options
    if opts is not None and not opts.any:
        opts = None
    if opts is not None:
        if request.preexec_fn is not None:
            raise ValueError("[no-preexec] preexec_fn cannot be combined with clone options")
        if not request.create_pidfd:
            raise ValueError("[no-preexec] clone options need create_pidfd=True")
        if request.pdeathsig and opts.setns is not None and opts.setns[1] & lib.CLONE_NEWPID:
            # The child is spawned by a thread that enters the PID namespace
            # and then ends: PR_SET_PDEATHSIG would fire at once.
            raise ValueError(
                "pdeathsig cannot be combined with setns into a PID namespace: the child "
                "is spawned from a helper thread whose exit would send it the signal"
            )
    plan = Plan(request)
    cell = buffers.pidfd
    cell[0] = -1
    try:
        forced = request.spawn_path or get_spawn_path()
        if opts is None:
            child = run_paths(plan, request.preexec_fn, forced, request.create_pidfd)
        else:
            setns = opts.setns
            if setns is not None and setns[1] & lib.CLONE_NEWPID:
                child = in_pid_namespace(setns[0], lambda: run_option_paths(plan, opts, forced))
            else:
                child = run_option_paths(plan, opts, forced)
        plan.s.child_pid = -1  # handed over (a child without a pidfd is known by its PID)
        return child
    except ChildFailed as failed:
        if on_failed is not None:  # Popen records the failed child's pid and status
            on_failed(failed.pid, failed.returncode)
        cgroup = request.cgroup_filename()
        raise child_error(
            failed.step,
            failed.err,
            request.cwd,
            request.display_executable,
            cgroup,
            request.sandbox,
        ) from None
    except BaseException:
        # Interrupted (a signal handler raised) with a child made and not yet
        # handed over: one call into C kills it, reaps it, closes its pidfd.
        lib.pyclone3_reap_cell(plan.s, cell, 1)
        raise
    finally:
        if plan.owned_fds:
            plan.close()


def _program(args: Sequence[StrOrBytesPath]) -> list[StrOrBytesPath]:
    # A list or tuple skips the isinstance check: os.PathLike is an ABC,
    # whose check is a Python call on every spawn.
    if (
        type(args) is not list
        and type(args) is not tuple
        and isinstance(args, (str, bytes, os.PathLike))
    ):
        raise TypeError("args must be a sequence of program arguments, not a single string")
    args = list(args)
    if not args:
        raise ValueError("args must not be empty")
    return args


def _spawn_with_options(
    args: Sequence[StrOrBytesPath],
    *,
    executable: StrOrBytesPath | None = None,
    cwd: StrOrBytesPath | None = None,
    env: Mapping[Any, Any] | None = None,
    stdin: int = -1,
    stdout: int = -1,
    stderr: int = -1,
    pass_fds: Iterable[int] = (),
    close_fds: bool = True,
    restore_signals: bool = True,
    start_new_session: bool = False,
    process_group: int = -1,
    uid: int | None = None,
    gid: int | None = None,
    extra_groups: Iterable[int] | None = None,
    umask: int = -1,
    preexec_fn: Callable[[], Any] | None = None,
    create_pidfd: bool = True,
    spawn_path: str | None = None,
    pdeathsig: int | None = None,
    clone_flags: int = 0,
    exit_signal: int | None = None,
    set_tid: Sequence[int] | None = None,
    cgroup: StrOrBytesPath | int | None = None,
    uid_map: IdMap | None = None,
    gid_map: IdMap | None = None,
    setgroups: bool | None = None,
    setns: tuple[PidFd | int, int] | None = None,
    rlimits: Mapping[int | str, int | tuple[int, int]] | None = None,
    nice: int | None = None,
    oom_score_adj: int | None = None,
    cpu_affinity: Iterable[int] | None = None,
    capabilities: Iterable[int | str] | None = None,
    no_new_privs: bool = False,
    seccomp: bytes | SeccompFilter | None = None,
    landlock: Landlock | None = None,
    ambient_capabilities: Iterable[int | str] | None = None,
    scope: Scope | None = None,
) -> SpawnedChild:
    """Start *args* and return its PID and pidfd: the low-level spawn.

    The keywords mean what :class:`subprocess.Popen`'s do, with file
    descriptors in place of its ``PIPE``/file-object conveniences: *stdin*,
    *stdout*, *stderr* are fds to install as 0, 1, 2 in the child (-1:
    inherit), numeric *uid*/*gid*/*extra_groups*. Exec failures raise what
    ``subprocess`` raises (``FileNotFoundError`` with the executable as
    filename, the cwd's for a failed ``chdir``, ...) after the failed child
    was reaped. The caller owns the returned pidfd and must reap the child
    (``child.pidfd.wait()``); on the ``vfork`` path, or with
    ``create_pidfd=False``, ``pidfd`` is ``None``. *pdeathsig*: see
    :func:`check_pdeathsig`.

    The Linux options (*clone_flags*, *exit_signal*, *set_tid*, *cgroup*,
    *uid_map*, *gid_map*, *setgroups*, *setns*) are described, with the
    rules they are checked against, in :mod:`pyclone3.clone_options`. The
    child is born with them: in its new namespaces and its cgroup, with its
    ID maps written, before anything of the program runs. *scope*: a
    :class:`pyclone3.Scope` to be born into (its cgroup, as *cgroup*; the
    two cannot be combined); the caller owns the scope.

    The sandbox options (*rlimits*, *nice*, *oom_score_adj*, *cpu_affinity*,
    *capabilities*, *ambient_capabilities*, *no_new_privs*, *seccomp*,
    *landlock*) are set by the
    child on itself just before exec, in the order :mod:`pyclone3.sandbox`
    describes, on every spawn path.

    Raises ``ValueError`` (empty *args*, NUL bytes, bad spawn path) or
    ``TypeError`` before creating anything.
    """
    args = _program(args)
    if not (
        type(stdin) is int
        and type(stdout) is int
        and type(stderr) is int
        and type(process_group) is int
        and type(umask) is int
    ):  # the exact-int case passes with no loop: this runs on every spawn
        for name, value in (
            ("stdin", stdin),
            ("stdout", stdout),
            ("stderr", stderr),
            ("process_group", process_group),
            ("umask", umask),
        ):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if spawn_path is not None and spawn_path not in SPAWN_PATHS:
        raise ValueError(f"unknown spawn path {spawn_path!r}; choose from {SPAWN_PATHS}")
    request = _new_request(SpawnRequest)
    if pdeathsig is not None:
        request.pdeathsig = check_pdeathsig(pdeathsig)
    options = options_if_any(
        clone_flags, exit_signal, set_tid, cgroup, uid_map, gid_map, setgroups, setns
    )
    if scope is not None:
        from .scope import Scope  # here, not at the top: only scoped spawns need it

        if not isinstance(scope, Scope):
            raise TypeError(
                f"scope must be a Scope, not {type(scope).__name__} (spawn() returns no "
                "object to hold a scope it would make: make one with pyclone3.Scope())"
            )
        options = options_with_cgroup(options, scope.fileno())
        request.display_cgroup = scope.path
    if options is not None:
        request.options = options
    sandbox = sandbox_if_any(
        rlimits,
        nice,
        oom_score_adj,
        cpu_affinity,
        capabilities,
        no_new_privs,
        seccomp,
        landlock,
        ambient_capabilities,
    )
    if sandbox is not None:
        request.sandbox = sandbox
    request.args = args
    request.executable = request.display_executable = (
        executable if executable is not None else args[0]
    )
    request.cwd = cwd
    request.env = env
    request.stdio = (stdin, -1, -1, stdout, -1, stderr)
    request.set_process_options(
        pass_fds,
        close_fds,
        restore_signals,
        start_new_session,
        process_group,
        uid,
        gid,
        extra_groups,
        umask,
    )
    if preexec_fn is not None:
        request.preexec_fn = preexec_fn
    if not create_pidfd:
        request.create_pidfd = False
    if spawn_path is not None:
        request.spawn_path = spawn_path
    return start(request)  # spawn() hands it over


if TYPE_CHECKING:
    spawn = _spawn_with_options
else:

    def spawn(args, **options):
        # The plain spawn, the common case, binds and checks no option:
        # twenty-nine keyword defaults and their checks cost about 10,000
        # instructions, a tenth of a plain spawn and wait.
        if options:
            child = _spawn_with_options(args, **options)
        else:
            request = _new_request(SpawnRequest)
            request.args = args = _program(args)
            request.executable = request.display_executable = args[0]
            child = start(request)
        # Handed over here, the last step before the caller has it: until
        # now a signal handler's exception (one may run as the call above
        # returns) drops a child that is killed and reaped, never lost.
        if child.pidfd is not None:
            state_of(child.pidfd).abandon_on_drop = False
        return child

    # help(), inspect.signature and Sphinx see the documented keywords.
    spawn.__wrapped__ = _spawn_with_options
    spawn.__doc__ = _spawn_with_options.__doc__
    spawn.__annotations__ = _spawn_with_options.__annotations__
