"""The :class:`CommandExt` mixin: a ``subprocess.Popen`` whose child is spawned by pyclone3.

It routes ``_execute_child`` through pyclone3's spawn core (every child gets
its pidfd at creation), takes pyclone3's spawn-time keywords, and hands the
child's state over to :class:`~pyclone3.ChildExt` (:mod:`.shared`).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable, Mapping, Sequence

from .._clone3 import lib
from .._paths import SPAWN_PATHS
from .._request import NO_FDS, SpawnRequest, check_pdeathsig
from .._spawn import start
from ..clone_options import options_if_any, options_with_cgroup
from ..pidfd import state_of
from ..sandbox import sandbox_if_any
from .shared import PopenState, check_mixin_order, reap_orphans

# typing is not imported at run time (see pyclone3/__init__.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ..clone_options import IdMap
    from ..landlock import Landlock
    from ..pidfd import PidFd
    from ..scope import Scope
    from ..seccomp import SeccompFilter

__all__ = ["KEYWORDS", "CommandExt"]

_new_request = object.__new__

#: How long the reap of a scoped child waits for a killed scope's other
#: members to be gone (SIGKILLed, they go at once) before leaving it.
KILLED_SCOPE_GRACE_S = 2.0


def _scope_arg(scope: object, cgroup: object, kill_tree: bool) -> Scope | None:
    """Check *scope* (``None``/``False``, ``True`` or a Scope); make a Scope for True."""
    if scope is None or scope is False:
        return None
    from ..scope import Scope  # here, not at the top: only scoped spawns need it

    if scope is not True and not isinstance(scope, Scope):
        raise TypeError(f"scope must be True, False, None or a Scope, not {type(scope).__name__}")
    if cgroup is not None:
        raise ValueError("[scope-cgroup] scope and cgroup cannot be combined: a scope is a cgroup")
    if kill_tree:
        raise ValueError("scope and kill_tree cannot be combined: a scope reaches the whole tree")
    return Scope() if scope is True else scope


def _discard_scope(scope: Scope) -> None:
    """A scoped child was reaped: remove its own scope if nothing else is left in it."""
    with contextlib.suppress(OSError):
        scope.discard(KILLED_SCOPE_GRACE_S if scope.killed else 0.0)


class CommandExt(PopenState):
    """Spawn-time options for a :class:`subprocess.Popen` subclass.

    Keywords added to ``Popen(...)``:

    *create_pidfd* (default ``True``)
        take the child's pidfd at creation (see :attr:`ChildExt.pidfd`).
    *spawn_path*
        force one of :data:`pyclone3.SPAWN_PATHS` for this child.
    *pdeathsig*
        a signal the child gets when the spawning thread exits
        (``PR_SET_PDEATHSIG``; see :func:`pyclone3.check_pdeathsig`).
    *clone_flags*, *exit_signal*, *set_tid*, *cgroup*, *uid_map*, *gid_map*, *setgroups*, *setns*
        the child is born in new namespaces, in a cgroup, with chosen PIDs,
        ID maps, or inside another process's namespaces: see
        :mod:`pyclone3.clone_options` for each and the rules they obey.
    *rlimits*, *nice*, *oom_score_adj*, *cpu_affinity*, *capabilities*, \
    *ambient_capabilities*, *no_new_privs*, *seccomp*, *landlock*
        what the child sets on itself just before exec, in C, where
        ``preexec_fn`` would run Python: see :mod:`pyclone3.sandbox`.
    *scope*
        ``True``: the child is born into a fresh :class:`pyclone3.Scope`
        (a cgroup of its own below this process's, ``CLONE_INTO_CGROUP``),
        which it and everything it starts cannot leave; a
        :class:`~pyclone3.Scope`: into that one. :meth:`~subprocess.Popen.kill`
        and :meth:`~subprocess.Popen.terminate` then reach the whole scope
        (``cgroup.kill``; ``SIGTERM`` to every member through pidfds), and
        :attr:`ChildExt.scope` gives it. A scope made for the child is
        removed once the child is reaped and nothing is left in it, and at
        the end of a ``with`` block, which kills what is left: ``run(...,
        scope=True)`` leaves nothing behind, on timeout too.
    *kill_tree*
        make :meth:`~subprocess.Popen.kill` and
        :meth:`~subprocess.Popen.terminate` signal the child's whole tree
        (:func:`pyclone3.tree.kill_tree`), and make this process a child
        subreaper, for good, so that the tree's orphans stay findable; they
        are reaped by ``kill()`` and when the child is. Best with
        ``start_new_session=True``.

    The child is set up exactly as ``subprocess`` does it (fds, ``cwd``,
    ``env``, ``umask``, sessions, process groups, users and groups,
    ``restore_signals``, ``preexec_fn``, ``close_fds``/``pass_fds``) and its
    failures raise the same exceptions.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        check_mixin_order(cls, CommandExt)

    _child_created: bool
    if TYPE_CHECKING:  # subprocess.Popen's, which the mixin is composed with

        def _close_pipe_fds(
            self,
            p2cread: int,
            p2cwrite: int,
            c2pread: int,
            c2pwrite: int,
            errread: int,
            errwrite: int,
        ) -> None: ...

    if TYPE_CHECKING:

        def __init__(
            self,
            *args: Any,
            create_pidfd: bool = True,
            spawn_path: str | None = None,
            pdeathsig: int | None = None,
            clone_flags: int = 0,
            exit_signal: int | None = None,
            set_tid: Sequence[int] | None = None,
            cgroup: Any = None,
            uid_map: IdMap | None = None,
            gid_map: IdMap | None = None,
            setgroups: bool | None = None,
            setns: tuple[PidFd | int, int] | None = None,
            kill_tree: bool = False,
            rlimits: Mapping[int | str, int | tuple[int, int]] | None = None,
            nice: int | None = None,
            oom_score_adj: int | None = None,
            cpu_affinity: Iterable[int] | None = None,
            capabilities: Iterable[int | str] | None = None,
            no_new_privs: bool = False,
            seccomp: bytes | SeccompFilter | None = None,
            landlock: Landlock | None = None,
            ambient_capabilities: Iterable[int | str] | None = None,
            scope: Scope | bool | None = None,
            **kwargs: Any,
        ) -> None: ...

    else:

        def __init__(self, *args, **kwargs):
            # pyclone3's keywords (those of _take_options) are taken out of
            # kwargs only when one is given: binding twenty-one keyword
            # defaults and checking each cost about 4,000 instructions on
            # every spawn, some 3% of a plain spawn and wait.
            self._pyclone3_request = _new_request(SpawnRequest)
            if kwargs:
                if not KEYWORDS.isdisjoint(kwargs):
                    ours = {name: kwargs.pop(name) for name in KEYWORDS.intersection(kwargs)}
                    self._take_options(**ours)
                for name in ("stdin", "stdout", "stderr"):
                    stream = kwargs.get(name)
                    if not (
                        stream is None
                        or isinstance(stream, int)
                        or callable(getattr(stream, "fileno", None))
                    ):
                        # subprocess would fail later with an AttributeError
                        raise TypeError(
                            f"{name} must be None, PIPE, DEVNULL, an fd or a file object, "
                            f"not {type(stream).__name__}"
                        )
            try:
                super().__init__(*args, **kwargs)
            except BaseException:
                # Interrupted after the spawn (a signal handler raised): the
                # caller never gets this Popen, so its child is killed and reaped.
                # Or a failed spawn: a scope made for it goes with it.
                self._close_own_scope()
                pidfd = self._pidfd
                if pidfd is not None:
                    state_of(pidfd).abandon()
                elif self.__dict__.get("_child_created") and (
                    self.__dict__.get("_pyclone3_returncode") is None
                ):
                    # No pidfd (the vfork path): unreaped, so its PID is still its own.
                    wstatus = lib.pyclone3_kill_and_reap(-1, self.pid, 1)
                    if wstatus >= 0:
                        self.__dict__["_pyclone3_returncode"] = os.waitstatus_to_exitcode(wstatus)
                raise
            state = self._pyclone3_state
            if state is not None:
                state.abandon_on_drop = False  # handed over
                if self._pyclone3_owns_scope:  # a scope made for the child goes once empty
                    made = self._pyclone3_scope
                    state.on_exit(lambda _status: _discard_scope(made))

    def _take_options(
        self,
        *args: Any,
        create_pidfd: bool = True,
        spawn_path: str | None = None,
        pdeathsig: int | None = None,
        clone_flags: int = 0,
        exit_signal: int | None = None,
        set_tid: Sequence[int] | None = None,
        cgroup: Any = None,
        uid_map: IdMap | None = None,
        gid_map: IdMap | None = None,
        setgroups: bool | None = None,
        setns: tuple[PidFd | int, int] | None = None,
        kill_tree: bool = False,
        rlimits: Mapping[int | str, int | tuple[int, int]] | None = None,
        nice: int | None = None,
        oom_score_adj: int | None = None,
        cpu_affinity: Iterable[int] | None = None,
        capabilities: Iterable[int | str] | None = None,
        no_new_privs: bool = False,
        seccomp: bytes | SeccompFilter | None = None,
        landlock: Landlock | None = None,
        ambient_capabilities: Iterable[int | str] | None = None,
        scope: Scope | bool | None = None,
        **kwargs: Any,
    ) -> None:
        """Check pyclone3's keywords, given to ``__init__``, onto the spawn request.

        Shaped as ``__init__`` is seen (*args* and *kwargs*, subprocess's,
        are never given here), so that it is also what
        :func:`inspect.signature` shows for ``__init__``, whose run-time
        form takes only ``*args, **kwargs``.
        """
        request = self._pyclone3_request
        if spawn_path is not None:
            if spawn_path not in SPAWN_PATHS:
                raise ValueError(f"unknown spawn path {spawn_path!r}; choose from {SPAWN_PATHS}")
            request.spawn_path = spawn_path
        if pdeathsig is not None:
            request.pdeathsig = check_pdeathsig(pdeathsig)
        options = options_if_any(
            clone_flags, exit_signal, set_tid, cgroup, uid_map, gid_map, setgroups, setns
        )
        if options is not None:
            request.options = options
        request.sandbox = sandbox_if_any(
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
        if kill_tree:
            self._pyclone3_kill_tree = True
        if not create_pidfd:
            request.create_pidfd = False
        if scope is not None and scope is not False:
            made = _scope_arg(scope, cgroup, kill_tree)
            assert made is not None
            try:
                request.options = options_with_cgroup(options, made.fileno())
            except BaseException:
                if scope is True:
                    made.close()
                raise
            self._pyclone3_scope = made
            self._pyclone3_owns_scope = scope is True
            request.display_cgroup = made.path

    def _get_handles(self, stdin: Any, stdout: Any, stderr: Any) -> tuple[int, ...]:
        # Nothing redirected, the common spawn: no fd to make and none to
        # close on error, so the answer is six -1s, as subprocess's own
        # Windows branch gives it at once. Its POSIX branch gets there through
        # a generator-based context manager, about a tenth of the Python a
        # plain spawn and wait run (test_subprocess_contract pins the answer).
        if stdin is None and stdout is None and stderr is None:
            return NO_FDS
        return super()._get_handles(stdin, stdout, stderr)  # type: ignore[misc, no-any-return]

    def _close_own_scope(self) -> None:
        """End a scope made for this child: kill what is left, remove the cgroup."""
        made: Scope | None = self.__dict__.get("_pyclone3_scope")
        if made is not None and self.__dict__.get("_pyclone3_owns_scope"):
            made.close()

    def __exit__(self, exc_type: Any, value: Any, traceback: Any) -> None:
        try:
            super().__exit__(exc_type, value, traceback)  # type: ignore[misc]
        finally:
            self._close_own_scope()

    def _execute_child(
        self,
        args: Any,
        executable: Any,
        preexec_fn: Any,
        close_fds: bool,
        pass_fds: Any,
        cwd: Any,
        env: Any,
        startupinfo: Any,
        creationflags: int,
        shell: bool,
        p2cread: int,
        p2cwrite: int,
        c2pread: int,
        c2pwrite: int,
        errread: int,
        errwrite: int,
        restore_signals: bool,
        gid: int | None,
        gids: Any,
        uid: int | None,
        umask: int,
        start_new_session: bool,
        process_group: int = -1,  # 3.11+
    ) -> None:
        if type(args) is list:  # the common case, without the ABC check below
            args = list(args)
        elif isinstance(args, (str, bytes)):
            args = [args]
        elif isinstance(args, os.PathLike):
            if shell:
                raise TypeError("path-like args is not allowed when shell is true")
            args = [args]
        else:
            args = list(args)
        if shell:
            args = ["/bin/sh", "-c", *args]
            if executable:
                args[0] = executable
        if executable is None:
            executable = args[0]
        sys.audit("subprocess.Popen", executable, args, cwd, env)
        if self._pyclone3_kill_tree:
            from .. import tree

            if not tree.is_child_subreaper():
                tree.set_child_subreaper(True)

        # subprocess's own options, onto the request CommandExt.__init__ began.
        request = self._pyclone3_request
        request.args = args
        request.executable = request.display_executable = executable
        request.cwd = cwd
        request.env = env
        request.stdio = (p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite)
        request.set_process_options(
            pass_fds,
            close_fds,
            restore_signals,
            start_new_session,
            process_group,
            uid,
            gid,
            gids,
            umask,
        )
        if preexec_fn is not None:
            request.preexec_fn = preexec_fn
        child = start(request, self._pyclone3_failed)
        self.pid = child.pid
        pidfd = child.pidfd
        if pidfd is not None:
            state = state_of(pidfd)
            state.close_on_exit = True  # the Popen owns it: closed once the exit is known
            state.returncode_sink = (self.__dict__, "_pyclone3_returncode")
            self._pyclone3_state = state
            if self._pyclone3_kill_tree:  # the tree's orphans are reaped with the child
                pid = child.pid
                state.on_exit(lambda _status: reap_orphans(pid))
            self._pidfd = pidfd
        self.spawn_path = child.path
        self._child_created = True
        if p2cread != -1 or c2pwrite != -1 or errwrite != -1:
            self._close_pipe_fds(p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite)
        # Else there is nothing of the child's to close: subprocess's DEVNULL fd
        # is always one of these three (test_subprocess_contract pins that), and
        # skipping the call saves its ExitStack on the common, unredirected spawn.

    def _pyclone3_failed(self, pid: int, returncode: int | None) -> None:
        """``start``'s *on_failed*: the child failed before exec and was reaped."""
        self.pid = pid
        self.__dict__["_pyclone3_returncode"] = (
            returncode if returncode is not None else sys.maxsize
        )
        self._close_pipe_fds(*self._pyclone3_request.stdio)


#: The keywords CommandExt takes for itself (the rest go to subprocess.Popen).
KEYWORDS = frozenset(
    CommandExt._take_options.__code__.co_varnames[
        1 : 1 + CommandExt._take_options.__code__.co_kwonlyargcount
    ]
)
if not TYPE_CHECKING:
    # For inspect.signature (help(), IDEs at run time, Sphinx): the keywords.
    CommandExt.__init__.__wrapped__ = CommandExt._take_options
