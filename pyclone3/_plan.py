"""The plan: a :class:`~pyclone3._request.SpawnRequest` turned into the C struct the child reads.

Everything the child needs is made here, in the parent, before the clone:
the ``argv``/``envp`` arrays, the exec candidates of the PATH search, the
numeric options checked and converted. The child allocates nothing.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

from ._clone3 import ffi, lib
from ._request import (
    NO_FDS,
    SpawnRequest,
    fd_number,
    group_list,
    unless_negative,
    user_or_group_id,
)
from .clone_options import CloneOptions

# typing is not imported at run time (see pyclone3/__init__.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["Plan"]

_SIGCHLD = 17
_INT_MAX = 2**31 - 1
_FS_ENCODING = sys.getfilesystemencoding()
# The note the spawn checks refer to: `sub in some_bytes` first tries `sub`
# as an integer and builds, formats and clears a TypeError before it
# searches: bytes.find() is a third of its cost (CPython 3.9-3.13), and the
# spawn checks run on every spawn, once per environment entry.


def _template() -> Any:
    t = ffi.new("struct pyclone3_spawn *")
    t.p2cread = t.p2cwrite = t.c2pread = t.c2pwrite = t.errread = t.errwrite = -1
    t.umask = t.pgid = t.gid = t.uid = t.n_groups = t.pidfd_sock = t.errpipe = -1
    t.close_fds = t.restore_signals = 1
    t.cgroup_fd = t.setns_fd = t.sync_fd = t.sync_wfd = -1
    t.exit_signal = _SIGCHLD
    t.child_pid = -1
    return t


#: The defaults, copied into each new plan (cheaper than setting fields).
_TEMPLATE = _template()[0]


def _fsencode(value: Any) -> bytes:
    if type(value) is str:  # the common case, without os.fsencode's checks
        return value.encode(_FS_ENCODING, "surrogateescape")
    return os.fsencode(value)


_PTR = ffi.sizeof("char *")
#: The packed arrays are written whole in C: no need to zero them first.
_new_uncleared = ffi.new_allocator(should_clear_after_alloc=False)


def _room(n: int, blob: bytes) -> Any:
    """A ``char *[]`` with room for *n* + 2 pointers (two NULLs) and, after them, *blob*."""
    return _new_uncleared("char *[]", n + 2 + (len(blob) + _PTR - 1) // _PTR)


class Plan:
    """The C struct for the child and every buffer it points to (kept alive here)."""

    #: The fds the child keeps open across exec, sorted (from pass_fds).
    pass_fds: Sequence[int] = ()
    #: The child changes its ids: it must not share our memory (the kernel
    #: would mark that memory, ours, non-dumpable), so it runs in a copy, on
    #: every path; subprocess too refuses vfork then.
    changes_ids = False
    #: The fds the plan opened and owns (a cgroup directory, a Landlock
    #: ruleset): close() closes them. Empty for most spawns.
    owned_fds: tuple[int, ...] = ()

    def __init__(self, request: SpawnRequest) -> None:
        keep: list[Any] = []
        self.request = request
        self._keep = keep
        s = ffi.new("struct pyclone3_spawn *", _TEMPLATE)
        self.s = s
        # Each input is converted, and refused, in the order subprocess
        # converts it: the environment, the executable and its PATH search,
        # the arguments, then the NUL checks (executable and arguments, then
        # the environment) and the cwd. Where two inputs are bad, the same
        # error is raised.
        fsencode = _fsencode
        fs_encoding = _FS_ENCODING
        env = request.env
        entries = None
        if env is not None:
            if type(env) is not dict and not isinstance(env, Mapping):  # (an ABC: a call)
                raise TypeError(f"env must be a mapping, not {type(env).__name__}")
            entries = []
            for key, value in env.items():  # _fsencode inlined: two calls per variable else
                k = (
                    key.encode(fs_encoding, "surrogateescape")
                    if type(key) is str
                    else fsencode(key)
                )
                if k.find(b"=") >= 0:  # not `in`: see the note at _FS_ENCODING
                    raise ValueError("illegal environment variable name")
                v = (
                    value.encode(fs_encoding, "surrogateescape")
                    if type(value) is str
                    else fsencode(value)
                )
                entries.append(k + b"=" + v)
        executable = request.executable
        exe = (  # _fsencode, inlined for the common str case: this runs on every spawn
            executable.encode(fs_encoding, "surrogateescape")
            if type(executable) is str
            else fsencode(executable)
        )
        if exe.find(b"/") >= 0:  # not `b"/" in exe`: see the note at _FS_ENCODING
            candidates = [exe]
        else:  # the PATH search os.execvpe does, prepared here
            candidates = [os.path.join(fsencode(d), exe) for d in os.get_exec_path(env)]
        argv = [
            a.encode(fs_encoding, "surrogateescape") if type(a) is str else fsencode(a)
            for a in request.args
        ]
        # One buffer and one C call for both arrays, whatever their length.
        blob = b"\0".join(argv + candidates) + b"\0"
        both = _room(len(argv) + len(candidates), blob)
        if lib.pyclone3_set_argv(s, both, blob, len(blob), len(argv), len(candidates)) < 0:
            raise ValueError("embedded null byte in args or executable")
        keep.append(both)
        if entries is not None:
            blob = b"\0".join(entries) + b"\0" if entries else b""
            envp = _room(len(entries), blob)
            if lib.pyclone3_set_envp(s, envp, blob, len(blob), len(entries)) < 0:
                raise ValueError("embedded null byte in env")
            keep.append(envp)
        cwd = request.cwd
        if cwd is not None:
            cwd_b = fsencode(cwd)
            if cwd_b.find(b"\0") >= 0:
                raise ValueError("embedded null byte in cwd")
            s.cwd = cwd_c = ffi.new("char[]", cwd_b)
            keep.append(cwd_c)
        fds = request.stdio
        if fds != NO_FDS:
            for fd in fds:
                if fd != -1:
                    fd_number(fd, "file descriptor")
            (s.p2cread, s.p2cwrite, s.c2pread, s.c2pwrite, s.errread, s.errwrite) = fds
        if (
            request.customized
            or request.pdeathsig
            or request.options is not None
            or request.sandbox is not None
        ):
            self._set_more(request)  # most spawns set none of these

    def _set_more(self, request: SpawnRequest) -> None:
        s = self.s
        keep = self._keep
        pass_fds = request.pass_fds
        if pass_fds:
            self.pass_fds = sorted({fd_number(fd, "pass_fds entry") for fd in pass_fds})
            self.set_keep(self.pass_fds)
        if not request.close_fds:
            s.close_fds = 0
        if request.umask != -1:
            s.umask = unless_negative(request.umask, "umask")
        if not request.restore_signals:
            s.restore_signals = 0
        if request.start_new_session:
            s.setsid = 1
        if request.process_group != -1:
            s.pgid = unless_negative(request.process_group, "process_group")
        changes_ids = False
        if request.gid is not None:
            gid = user_or_group_id(request.gid, "gid")
            if gid is not None:
                s.gid = gid
                changes_ids = True
        if request.uid is not None:
            uid = user_or_group_id(request.uid, "uid")
            if uid is not None:
                s.uid = uid
                changes_ids = True
        if request.pdeathsig:
            s.pdeathsig = request.pdeathsig
            s.parent_pid = os.getpid()
        if request.extra_groups is not None:
            gids = group_list(request.extra_groups)
            groups = ffi.new("unsigned int[]", gids or [0])
            keep.append(groups)
            s.groups = groups
            s.n_groups = len(gids)
            changes_ids = True
        self.changes_ids = changes_ids
        if request.options is not None:
            self._set_options(request.options)
        if request.sandbox is not None:
            from ._sandbox_plan import sandbox_struct

            try:
                sandbox, landlock_fd = sandbox_struct(request.sandbox, keep)
            except BaseException:
                self.close()  # a cgroup opened above
                raise
            if landlock_fd >= 0:
                self.owned_fds += (landlock_fd,)
            s.sandbox = sandbox

    def _set_options(self, opts: CloneOptions) -> None:
        s = self.s
        s.clone_flags = opts.flags & ~lib.CLONE_CLEAR_SIGHAND  # always used where possible
        s.exit_signal = opts.exit_signal
        if opts.set_tid:
            tids = ffi.new("int[]", list(opts.set_tid))
            self._keep.append(tids)
            s.set_tid = tids
            s.set_tid_size = len(opts.set_tid)
        if opts.setns is not None:
            target, ns_flags = opts.setns
            if ns_flags & ~lib.CLONE_NEWPID:  # NEWPID: see paths.in_pid_namespace
                s.setns_fd = target if isinstance(target, int) else target.fileno()
                s.setns_flags = ns_flags & ~lib.CLONE_NEWPID
        if opts.cgroup is not None:
            cgroup = opts.cgroup
            if isinstance(cgroup, int):
                fd = cgroup
            else:
                fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                self.owned_fds += (fd,)
            s.cgroup_fd = fd
            v2 = lib.pyclone3_is_cgroup2(fd)
            if v2 < 0:
                err = ffi.errno
                self.close()
                raise OSError(err, os.strerror(err), None if isinstance(cgroup, int) else cgroup)
            if not v2:
                self.close()
                raise ValueError(f"cgroup {cgroup!r} is not a directory of a cgroup v2 hierarchy")

    def close(self) -> None:
        """Close the fds the plan opened (a cgroup directory, a Landlock ruleset)."""
        fds, self.owned_fds = self.owned_fds, ()
        for fd in fds:
            os.close(fd)

    def set_keep(self, fds: Sequence[int]) -> None:
        """The fds the child keeps open across exec (sorted): pass_fds, and an error pipe."""
        if fds:
            arr = ffi.new("int[]", fds)
            self._keep.append(arr)
            self.s.keep_fds = arr
        self.s.n_keep_fds = len(fds)
