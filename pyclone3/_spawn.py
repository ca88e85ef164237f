"""Spawn a program with its pidfd taken at creation: :func:`spawn`, and the fallback chain.

The child is created by the C spawn core (``pyclone3/_spawn_parent.c`` and ``_spawn_child.c``) along
the first path that this kernel and sandbox allow:

``clone3``
    ``clone3(CLONE_VM | CLONE_VFORK | CLONE_PIDFD | CLONE_CLEAR_SIGHAND)`` on
    a small private stack (Linux 5.3+; x86_64 and aarch64).
``clone``
    glibc's ``clone()`` with ``CLONE_VM | CLONE_VFORK | CLONE_PIDFD``
    (Linux 5.2+), for when ``clone3`` is missing or filtered.
``vfork_pidfd``
    ``vfork()``; the child opens its own pidfd and sends it to the parent
    over a socket (``SCM_RIGHTS``) before it does anything else, so the
    pidfd still names the right process.
``vfork``
    ``vfork()`` and no pidfd: the child runs, but has no pidfd.

The first choice is probed once and cached, as robust runtimes do it: a
kernel's ``ENOSYS`` (and ``EINVAL`` for an unknown flag) is remembered; an
``EPERM`` (a seccomp filter, perhaps for some flags only) moves to the next
path for this spawn only; ``EAGAIN``, ``ENOMEM``, ``EMFILE`` and ``ENFILE``
are raised and change nothing. :func:`set_spawn_path` or the environment
variable ``PYCLONE3_SPAWN_PATH`` force one path (and only that one).

With *preexec_fn* the child must run Python, which rules out the shared
memory of the ``vfork`` family: the child is made by glibc's ``fork()``, with
its atfork handlers and the interpreter's (as :func:`os.fork` and
``subprocess`` do), and, unless the path is
``vfork``, sends its own pidfd back the same way as ``vfork_pidfd``.
"""

from __future__ import annotations

import errno
import os
import signal
import struct
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, Union

from ._clone3 import ffi, lib
from ._features import TRANSIENT_ERRNOS, features
from .clone_options import CloneOptions, IdMap, options_if_any
from .pidfd import PidFd, adopt_spawned, state_of

__all__ = [
    "SPAWN_PATHS",
    "SpawnedChild",
    "get_spawn_path",
    "set_spawn_path",
    "spawn",
]

#: The spawn paths, fastest first.
SPAWN_PATHS = ("clone3", "clone", "vfork_pidfd", "vfork")
ENV_VAR = "PYCLONE3_SPAWN_PATH"

_NO_FDS = (-1, -1, -1, -1, -1, -1)
_ERR_NONE = lib.SPAWN_ERR_NONE
_SIGCHLD = int(signal.SIGCHLD)
_WALL = 0x40000000  # __WALL: also a child with another exit signal
_STACK_SIZE = 64 * 1024
_new_uncleared = ffi.new_allocator(should_clear_after_alloc=False)


class _ThreadBuffers(threading.local):
    """Per thread, the child's stack and the pidfd cell: a spawn never nests in a thread."""

    def __init__(self) -> None:
        self.stack = _new_uncleared("char[]", _STACK_SIZE)
        self.pidfd = ffi.new("int *", -1)
        #: The spawn's own fds (error pipe, sync pipe, socket pair), born and
        #: closed in C cells so that no interruption can lose one.
        self.temp = ffi.new("int[6]", [-1] * 6)


_buffers = _ThreadBuffers()

_lock = threading.Lock()
_forced: str | None = None
_unsupported: set[str] = set()
_clear_sighand = True  # False once clone3 refused CLONE_CLEAR_SIGHAND (5.3, 5.4)

StrOrBytesPath = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]


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


class SpawnedChild(NamedTuple):
    """What :func:`spawn` made: PID, pidfd (``None`` on the ``vfork`` path), and the path used."""

    pid: int
    pidfd: PidFd | None
    path: str


class _ChildFailed(Exception):
    """The child was created but failed before or at exec; it has been reaped."""

    def __init__(self, pid: int, step: int, err: int, returncode: int | None) -> None:
        super().__init__(pid, step, err)
        self.pid = pid
        self.step = step
        self.err = err
        self.returncode = returncode


# ---- the plan: everything the child needs, made in the parent ---------------


def _pack(first: list[bytes], second: list[bytes], what: str, keep: list[Any]) -> Any:
    """Two NULL-terminated ``char *[]`` over *first* then *second*, in one buffer.

    The result's element 0 starts the first array and element
    ``len(first) + 1`` the second. One C call, whatever the number of strings.
    """
    items = first + second
    blob = b"\0".join(items) + b"\0" if items else b""
    if blob.count(b"\0") != len(items):
        raise ValueError(f"embedded null byte in {what}")
    buf = ffi.from_buffer("char[]", blob)
    arr = ffi.new("char *[]", len(items) + 2)
    lib.pyclone3_split(buf, arr, len(first), len(second))
    keep.append(blob)
    keep.append(buf)
    keep.append(arr)
    return arr


_INT_MAX = 2**31 - 1
_ID_MAX = 2**32 - 2  # uid_t/gid_t; (uid_t)-1 means "unchanged"


def _c_int(value: Any, what: str, lo: int, hi: int) -> int:
    """*value* as a C integer in [lo, hi]: TypeError or ValueError, never OverflowError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if not lo <= value <= hi:
        raise ValueError(f"{what} must be in {lo}..{hi}, got {value}")
    return int(value)


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
_FS_ENCODING = sys.getfilesystemencoding()


def _fsencode(value: Any) -> bytes:
    if type(value) is str:  # the common case, without os.fsencode's checks
        return value.encode(_FS_ENCODING, "surrogateescape")
    return os.fsencode(value)


class _Plan:
    """The C struct for the child and every buffer it points to (kept alive here)."""

    def __init__(
        self,
        args: Sequence[StrOrBytesPath],
        executable: StrOrBytesPath,
        cwd: StrOrBytesPath | None,
        env: Mapping[Any, Any] | None,
        fds: tuple[int, int, int, int, int, int],
        pass_fds: Iterable[int],
        close_fds: bool,
        restore_signals: bool,
        start_new_session: bool,
        process_group: int,
        gid: int | None,
        gids: Iterable[int] | None,
        uid: int | None,
        umask: int,
        pdeathsig: int = 0,
        opts: CloneOptions | None = None,
    ) -> None:
        keep: list[Any] = []
        self.cgroup_fd = -1
        #: Any of uid, gid or extra groups given: the child must not share
        #: our memory (subprocess too refuses vfork then).
        self.changes_ids = uid is not None or gid is not None or gids is not None
        self._keep = keep
        s = ffi.new("struct pyclone3_spawn *", _TEMPLATE)
        self.s = s
        fsencode = _fsencode
        if env is not None:
            if not isinstance(env, Mapping):
                raise TypeError(f"env must be a mapping, not {type(env).__name__}")
            entries = []
            for key, value in env.items():
                k = fsencode(key)
                if b"=" in k:
                    raise ValueError("illegal environment variable name")
                entries.append(k + b"=" + fsencode(value))
            s.envp = _pack(entries, [], "env", keep)
        else:
            s.envp = ffi.NULL
        exe = fsencode(executable)
        if b"/" in exe:
            candidates = [exe]
        else:  # the PATH search os.execvpe does, prepared here
            candidates = [os.path.join(fsencode(d), exe) for d in os.get_exec_path(env)]
        fs_encoding = _FS_ENCODING
        argv = [  # _fsencode, inlined for the common str case: this runs on every spawn
            a.encode(fs_encoding, "surrogateescape") if type(a) is str else fsencode(a)
            for a in args
        ]
        both = _pack(argv, candidates, "args or executable", keep)
        s.argv = both
        s.exec_paths = both + (len(argv) + 1)
        if cwd is not None:
            cwd_b = fsencode(cwd)
            if b"\0" in cwd_b:
                raise ValueError("embedded null byte in cwd")
            s.cwd = cwd_c = ffi.new("char[]", cwd_b)
            keep.append(cwd_c)
        if fds != _NO_FDS:
            for fd in fds:
                _c_int(fd, "file descriptor", -1, _INT_MAX)
            (s.p2cread, s.p2cwrite, s.c2pread, s.c2pwrite, s.errread, s.errwrite) = fds
        if pass_fds:
            self.pass_fds = sorted({_c_int(fd, "pass_fds entry", 0, _INT_MAX) for fd in pass_fds})
            self.set_keep(self.pass_fds)
        else:
            self.pass_fds = []
        if not close_fds:
            s.close_fds = 0
        if umask != -1:
            s.umask = _c_int(umask, "umask", 0, _INT_MAX)
        if not restore_signals:
            s.restore_signals = 0
        if start_new_session:
            s.setsid = 1
        if process_group != -1:
            s.pgid = _c_int(process_group, "process_group", 0, _INT_MAX)
        if gid is not None:
            s.gid = _c_int(gid, "gid", 0, _ID_MAX)
        if uid is not None:
            s.uid = _c_int(uid, "uid", 0, _ID_MAX)
        if pdeathsig:
            s.pdeathsig = pdeathsig
            s.parent_pid = os.getpid()
        if gids is not None:
            group_list = [_c_int(g, "extra_groups entry", 0, _ID_MAX) for g in gids]
            groups = ffi.new("unsigned int[]", group_list or [0])
            keep.append(groups)
            s.groups = groups
            s.n_groups = len(group_list)
        if opts is not None:
            self._set_options(opts)

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
            if ns_flags & ~lib.CLONE_NEWPID:  # NEWPID: see _in_pid_namespace
                s.setns_fd = target if isinstance(target, int) else target.fileno()
                s.setns_flags = ns_flags & ~lib.CLONE_NEWPID
        if opts.cgroup is not None:
            cgroup = opts.cgroup
            if isinstance(cgroup, int):
                fd = cgroup
            else:  # the plan owns this fd: close() closes it
                fd = self.cgroup_fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
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
        if self.cgroup_fd >= 0:
            os.close(self.cgroup_fd)
            self.cgroup_fd = -1

    def set_keep(self, fds: list[int]) -> None:
        if fds:
            arr = ffi.new("int[]", fds)
            self._keep.append(arr)
            self.s.keep_fds = arr
        self.s.n_keep_fds = len(fds)


# ---- the paths ----------------------------------------------------------------


def _finish(plan: _Plan, pid: int, path: str) -> SpawnedChild:
    """The child exec'd (hand it over) or failed before exec (reap it, raise _ChildFailed).

    Either way, from the record the spawn left in ``plan.s.child_pid`` and the
    thread's pidfd cell, so that a signal handler raising anywhere here
    leaves a child that ``spawn_for_popen`` still finds and reaps.
    """
    s = plan.s
    cell = _buffers.pidfd
    step = s.err_step
    if step != lib.SPAWN_ERR_NONE:
        wstatus = lib.pyclone3_reap_cell(s, cell, 0)
        returncode = os.waitstatus_to_exitcode(wstatus) if wstatus >= 0 else None
        raise _ChildFailed(pid, step, s.err_errno, returncode)
    if cell[0] < 0:
        return SpawnedChild(pid, None, path)  # s.child_pid is cleared at the hand-over
    return SpawnedChild(pid, adopt_spawned(cell, s), path)


def _spawn_vm(plan: _Plan, path: str) -> SpawnedChild:
    """One attempt on a vfork-family path; OSError if no child was created."""
    s = plan.s
    s.pidfd_sock = -1
    bufs = _buffers
    stack = bufs.stack
    pidfd_out = bufs.pidfd
    pidfd_out[0] = -1
    if path == "clone3":
        pid = lib.pyclone3_spawn(
            s, lib.SPAWN_CLONE3, 1 if _clear_sighand else 0, stack, _STACK_SIZE, pidfd_out
        )
    elif path == "clone":
        pid = lib.pyclone3_spawn(s, lib.SPAWN_CLONE, 0, stack, _STACK_SIZE, pidfd_out)
    elif path == "vfork":
        pid = lib.pyclone3_spawn(s, lib.SPAWN_VFORK, 0, ffi.NULL, 0, ffi.NULL)
    else:  # vfork_pidfd
        socks = bufs.temp  # [parent end, child end], closed from the cells
        try:
            if lib.pyclone3_socketpair_cells(socks) < 0:
                err = ffi.errno
                raise OSError(err, os.strerror(err))
            s.pidfd_sock = socks[1]
            pid = lib.pyclone3_spawn(s, lib.SPAWN_VFORK, 0, ffi.NULL, 0, ffi.NULL)
            err = ffi.errno
            if pid > 0:
                lib.pyclone3_recv_pidfd_into(socks[0], pidfd_out)
        finally:
            lib.pyclone3_close_cells(socks, 2)
            s.pidfd_sock = -1
        if pid < 0:
            raise OSError(err, os.strerror(err))
        return _finish(plan, pid, path)
    if pid < 0:
        err = ffi.errno
        raise OSError(err, os.strerror(err))
    if pidfd_out[0] >= 0:
        if s.err_step == _ERR_NONE:  # the common case, without a call
            return SpawnedChild(pid, adopt_spawned(pidfd_out, s), path)
    elif path != "vfork":
        # A kernel older than CLONE_PIDFD ignores the flag: a child, no pidfd.
        with _lock:
            _unsupported.add(path)
    return _finish(plan, pid, path)


def _spawn_forked(plan: _Plan, path: str, preexec_fn: Callable[[], Any]) -> SpawnedChild:
    """The preexec_fn path: fork(), the child sends its own pidfd unless path is vfork."""
    s = plan.s
    want_pidfd = path != "vfork" and features().pidfd_open
    cells = _buffers.temp  # [errpipe r, errpipe w, parent end, child end]
    try:
        if lib.pyclone3_error_pipe(cells) < 0 or (
            want_pidfd and lib.pyclone3_socketpair_cells(cells + 2) < 0
        ):
            err = ffi.errno
            raise OSError(err, os.strerror(err))
        errpipe_w = cells[1]
        plan.set_keep(sorted({*plan.pass_fds, errpipe_w}))
        s.errpipe = errpipe_w
        s.pidfd_sock = cells[3]
        s.reset_handlers = 0
        s.restore_mask = 0
        s.err_step = lib.SPAWN_ERR_NONE
        _buffers.pidfd[0] = -1
        pid = lib.pyclone3_fork(s)  # os.fork() without its multi-thread warning
        if pid < 0:
            err = ffi.errno
            raise OSError(err, os.strerror(err))
        if pid == 0:  # pragma: no cover - runs in the child
            try:
                lib.pyclone3_child_setup(s)
                try:
                    preexec_fn()
                except BaseException:
                    os.write(errpipe_w, _REPORT.pack(lib.SPAWN_ERR_PREEXEC, 0))
                    os._exit(255)
                lib.pyclone3_child_exec(s)
            finally:
                os._exit(255)
        lib.pyclone3_close_cells(cells + 1, 1)  # our copy of the write end
        lib.pyclone3_close_cells(cells + 3, 1)  # and of the child's socket end
        report = _read_report(cells[0])
        if cells[2] >= 0:
            lib.pyclone3_recv_pidfd_into(cells[2], _buffers.pidfd)
        failure = parse_report(report)
        if failure is not None:
            plan.s.err_step, plan.s.err_errno = failure
        return _finish(plan, pid, path)
    finally:
        lib.pyclone3_close_cells(cells, 4)
        s.errpipe = -1
        s.pidfd_sock = -1
        plan.set_keep(plan.pass_fds)


def _read_report(errpipe_r: int) -> bytes:
    """Read to EOF (the child exec'd or died) or past one full report."""
    report = b""
    while len(report) <= _REPORT.size:
        part = os.read(errpipe_r, 64)
        if not part:
            break
        report += part
    return report


def _write_id_maps(pid: int, opts: CloneOptions) -> None:
    """Write the waiting child's setgroups, uid_map and gid_map, in the order the kernel needs.

    Each file is opened, written and closed in one call into C, so that no
    interruption can leave one open.
    """
    for name, data in (
        ("setgroups", None if opts.setgroups is None else b"allow" if opts.setgroups else b"deny"),
        ("uid_map", opts.uid_map),
        ("gid_map", opts.gid_map),
    ):
        if data is None:
            continue
        path = f"/proc/{pid}/{name}"
        err = lib.pyclone3_write_file(path.encode(), data, len(data))
        if err:
            raise OSError(err, os.strerror(err), path)


_COPY_METHODS = {
    "clone3": lib.SPAWN_CLONE3_FORK,
    "clone": lib.SPAWN_CLONE_FORK,
    "vfork_pidfd": lib.SPAWN_FORK,
    "vfork": lib.SPAWN_FORK,
}


def _spawn_copied(plan: _Plan, path: str, opts: CloneOptions | None) -> SpawnedChild:
    """Any path, with the child in a copy of our memory instead of sharing it.

    For a child that changes its credentials (a process with other ids must
    never share the caller's address space: the kernel would mark the shared
    memory non-dumpable, ours included) and for options a vfork child cannot
    honour (ID maps it waits for, a time namespace). The child reports a
    failure through an error pipe; on ``vfork_pidfd`` it sends its pidfd.
    """
    s = plan.s
    waits = opts is not None and (
        opts.uid_map is not None or opts.gid_map is not None or opts.setgroups is not None
    )
    sends_pidfd = path == "vfork_pidfd"
    pidfd_out = _buffers.pidfd
    pidfd_out[0] = -1
    # [errpipe r, errpipe w, then sync r, sync w or our socket end, the child's]
    cells = _buffers.temp
    try:
        if (
            lib.pyclone3_error_pipe(cells) < 0
            or (waits and lib.pyclone3_pipe_cells(cells + 2) < 0)
            or (sends_pidfd and lib.pyclone3_socketpair_cells(cells + 2) < 0)
        ):
            err = ffi.errno
            raise OSError(err, os.strerror(err))
        if waits:
            s.sync_fd, s.sync_wfd = cells[2], cells[3]
        if sends_pidfd:
            s.pidfd_sock = cells[3]
        plan.set_keep(sorted({*plan.pass_fds, cells[1]}))
        s.errpipe = cells[1]
        method = _COPY_METHODS[path]
        clear = 1 if path == "clone3" and _clear_sighand else 0
        pid = lib.pyclone3_spawn(s, method, clear, ffi.NULL, 0, pidfd_out)
        if pid < 0:
            err = ffi.errno
            raise OSError(err, os.strerror(err))
        lib.pyclone3_close_cells(cells + 1, 1)  # our copy of the error pipe's write end
        if sends_pidfd:
            lib.pyclone3_close_cells(cells + 3, 1)  # and of the child's socket end
        if waits:
            lib.pyclone3_close_cells(cells + 2, 1)  # and of the sync pipe's read end
            try:
                _write_id_maps(pid, opts)
                os.write(cells[3], b"g")
            except BaseException:
                lib.pyclone3_close_cells(cells + 3, 1)  # the child sees EOF and exits
                lib.pyclone3_reap_cell(s, pidfd_out, 0)
                raise
        report = _read_report(cells[0])
        if sends_pidfd:
            lib.pyclone3_recv_pidfd_into(cells[2], pidfd_out)
        failure = parse_report(report)
        if failure is not None:
            s.err_step, s.err_errno = failure
        return _finish(plan, pid, path)
    finally:
        lib.pyclone3_close_cells(cells, 4)
        s.errpipe = s.sync_fd = s.sync_wfd = s.pidfd_sock = -1
        plan.set_keep(plan.pass_fds)


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


def _run_option_paths(plan: _Plan, opts: CloneOptions, forced: str | None) -> SpawnedChild:
    """Spawn with clone options: move down a path only for ENOSYS or EPERM; cache nothing.

    An ``EINVAL`` or ``E2BIG`` from clone3 with a cgroup means no
    ``CLONE_INTO_CGROUP`` (before 5.7): the same path is tried once more with
    the child joining the cgroup itself.
    """
    last: OSError | None = None
    for path in _option_paths(opts, forced):
        plan.s.cgroup_in_child = 0 if path == "clone3" else 1
        for _ in range(2):
            try:
                if opts.fork_like or plan.changes_ids:
                    return _spawn_copied(plan, path, opts)
                return _spawn_vm(plan, path)
            except OSError as exc:
                last = exc
                if (
                    exc.errno in (errno.EINVAL, errno.E2BIG)
                    and plan.s.cgroup_fd >= 0
                    and not plan.s.cgroup_in_child
                ):
                    plan.s.cgroup_in_child = 1
                    continue
                if forced is not None or exc.errno not in (errno.ENOSYS, errno.EPERM):
                    if exc.errno in _CGROUP_ERRNOS and plan.s.cgroup_fd >= 0:
                        # CLONE_INTO_CGROUP's own refusals: say which cgroup.
                        cgroup = opts.cgroup if not isinstance(opts.cgroup, int) else None
                        raise OSError(exc.errno, exc.strerror, cgroup) from None
                    raise
                break
    assert last is not None
    raise last


#: What CLONE_INTO_CGROUP returns for a cgroup it will not take (a domain
#: with controllers and no room for processes, a threaded cgroup, no access).
_CGROUP_ERRNOS = frozenset({errno.EBUSY, errno.EOPNOTSUPP, errno.EACCES, errno.EBADF})


def _in_pid_namespace(target: PidFd | int, run: Callable[[], SpawnedChild]) -> SpawnedChild:
    """Run *run* on a new thread that first entered *target*'s PID namespace.

    ``setns(CLONE_NEWPID)`` changes where the caller's *children* go, so a
    thread of our own enters it and spawns: the child is born inside, and
    the thread, with its changed namespace, ends.
    """
    result: list[Any] = []

    def body() -> None:
        try:
            fd = target if isinstance(target, int) else target.fileno()
            if lib.sys_setns(fd, lib.CLONE_NEWPID) < 0:
                err = ffi.errno
                raise OSError(err, os.strerror(err))
            result.append(run())
        except BaseException as exc:
            result.append(exc)

    thread = threading.Thread(target=body, name="pyclone3-setns-pid")
    thread.start()
    thread.join()
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]  # type: ignore[no-any-return]


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


def _spawn_plain(plan: _Plan, path: str) -> SpawnedChild:
    """One attempt, without clone options, on *path*."""
    if plan.changes_ids:
        return _spawn_copied(plan, path, None)
    return _spawn_vm(plan, path)


def _run_paths(
    plan: _Plan, preexec_fn: Callable[[], Any] | None, forced: str | None, create_pidfd: bool
) -> SpawnedChild:
    global _clear_sighand
    paths = ("vfork",) if not create_pidfd else _candidates(forced)
    if preexec_fn is not None:
        path = "vfork" if paths == ("vfork",) else (forced or "vfork_pidfd")
        return _spawn_forked(plan, path, preexec_fn)
    last: OSError | None = None
    for path in paths:
        if path == "vfork_pidfd" and forced is None and not features().pidfd_open:
            continue
        try:
            return _spawn_plain(plan, path)
        except _ChildFailed as failed:
            if failed.step != lib.SPAWN_ERR_PIDFD or forced is not None:
                raise
            with _lock:
                _unsupported.add(path)  # the child could not open or send its pidfd
            last = OSError(failed.err, os.strerror(failed.err))
            continue
        except OSError as exc:
            if forced is not None or exc.errno in TRANSIENT_ERRNOS:
                raise
            last = exc
            if exc.errno == errno.EPERM:
                continue  # a filter, perhaps for this flag set only: do not cache
            if path == "clone3" and exc.errno == errno.EINVAL and _clear_sighand:
                _clear_sighand = False  # 5.3 and 5.4 lack CLONE_CLEAR_SIGHAND
                try:
                    return _spawn_plain(plan, path)
                except OSError as again:
                    if again.errno in TRANSIENT_ERRNOS:
                        raise
                    last = again
            with _lock:
                _unsupported.add(path)
    assert last is not None
    raise last


_REPORT = struct.Struct("ii")  # what a failing fork-path child writes: step, errno
_BAD_REPORT = -1
_STEPS = frozenset(
    {
        lib.SPAWN_ERR_NOEXEC,
        lib.SPAWN_ERR_EXEC,
        lib.SPAWN_ERR_PREEXEC,
        lib.SPAWN_ERR_PIDFD,
        lib.SPAWN_ERR_CGROUP,
        lib.SPAWN_ERR_SETNS,
    }
)
_ERRNO_MAX = 4095  # the kernel's errno range


def parse_report(data: bytes) -> tuple[int, int] | None:
    """Read what a fork-path child wrote to its error pipe.

    ``None`` if nothing (it exec'd); else ``(step, errno)``; anything but one
    well-formed record (a short or long write, an unknown step, an errno out
    of range) is ``(_BAD_REPORT, 0)``, never an exception.
    """
    if not data:
        return None
    if len(data) != _REPORT.size:
        return (_BAD_REPORT, 0)
    step, err = _REPORT.unpack(data)
    if step not in _STEPS or not 0 <= err <= _ERRNO_MAX:
        return (_BAD_REPORT, 0)
    return (step, err)


def _child_error(
    step: int, err: int, cwd: Any, executable: Any, cgroup: Any = None
) -> BaseException:
    """The exception subprocess raises for a child that failed before or at exec."""
    if step == lib.SPAWN_ERR_PREEXEC or step == _BAD_REPORT:
        import subprocess

        if step == _BAD_REPORT:
            return subprocess.SubprocessError("Bad error report from the child process")
        return subprocess.SubprocessError("Exception occurred in preexec_fn.")
    if step == lib.SPAWN_ERR_EXEC:
        filename = executable
    elif step == lib.SPAWN_ERR_CGROUP:
        filename = cgroup if not isinstance(cgroup, int) else None
    elif step == lib.SPAWN_ERR_SETNS:
        filename = None
    else:
        filename = cwd
    return OSError(err, os.strerror(err), filename)


def spawn_for_popen(
    args: Sequence[StrOrBytesPath],
    executable: StrOrBytesPath,
    orig_executable: Any,
    cwd: StrOrBytesPath | None,
    env: Mapping[Any, Any] | None,
    fds: tuple[int, int, int, int, int, int],
    pass_fds: Iterable[int],
    close_fds: bool,
    restore_signals: bool,
    start_new_session: bool,
    process_group: int,
    gid: int | None,
    gids: Iterable[int] | None,
    uid: int | None,
    umask: int,
    preexec_fn: Callable[[], Any] | None,
    create_pidfd: bool,
    path: str | None,
    on_failed: Callable[[int, int | None], None] | None = None,
    pdeathsig: int = 0,
    options: CloneOptions | None = None,
) -> SpawnedChild:
    """The spawn core as ``Popen``'s ``_execute_child`` needs it (see popen.py)."""
    opts = options if options is not None and options.any else None
    if opts is not None:
        if preexec_fn is not None:
            raise ValueError("[no-preexec] preexec_fn cannot be combined with clone options")
        if not create_pidfd:
            raise ValueError("[no-preexec] clone options need create_pidfd=True")
        if pdeathsig and opts.setns is not None and opts.setns[1] & lib.CLONE_NEWPID:
            # The child is spawned by a thread that enters the PID namespace
            # and then ends: PR_SET_PDEATHSIG would fire at once.
            raise ValueError(
                "pdeathsig cannot be combined with setns into a PID namespace: the child "
                "is spawned from a helper thread whose exit would send it the signal"
            )
    plan = _Plan(
        args,
        executable,
        cwd,
        env,
        fds,
        pass_fds,
        close_fds,
        restore_signals,
        start_new_session,
        process_group,
        gid,
        gids,
        uid,
        umask,
        pdeathsig,
        opts,
    )
    cell = _buffers.pidfd
    cell[0] = -1
    try:
        forced = path or get_spawn_path()
        if opts is None:
            child = _run_paths(plan, preexec_fn, forced, create_pidfd)
        else:
            setns = opts.setns
            if setns is not None and setns[1] & lib.CLONE_NEWPID:
                child = _in_pid_namespace(setns[0], lambda: _run_option_paths(plan, opts, forced))
            else:
                child = _run_option_paths(plan, opts, forced)
        plan.s.child_pid = -1  # handed over (a child without a pidfd is known by its PID)
        return child
    except _ChildFailed as failed:
        if on_failed is not None:  # Popen records the failed child's pid and status
            on_failed(failed.pid, failed.returncode)
        cgroup = opts.cgroup if opts is not None else None
        raise _child_error(failed.step, failed.err, cwd, orig_executable, cgroup) from None
    except BaseException:
        # Interrupted (a signal handler raised) with a child made and not yet
        # handed over: one call into C kills it, reaps it, closes its pidfd.
        lib.pyclone3_reap_cell(plan.s, cell, 1)
        raise
    finally:
        if plan.cgroup_fd >= 0:
            plan.close()


def check_pdeathsig(sig: int | None) -> int:
    """Check a *pdeathsig* argument: ``None`` or 0 for none, else a signal number.

    With it, the child gets that signal when the thread that spawned it exits
    (``PR_SET_PDEATHSIG``, set as the child's last step before exec, after
    any change of user or group, which would clear it). If the parent died
    before that, the child sends it to itself at once. Note that it is the
    spawning *thread*'s exit that counts, as the kernel defines it.
    """
    if sig is None:
        return 0
    if isinstance(sig, bool) or not isinstance(sig, int):
        raise TypeError(f"pdeathsig must be a signal number, not {type(sig).__name__}")
    if not 0 <= sig <= 64:
        raise ValueError(f"pdeathsig must be a signal number in 1..64, got {sig}")
    return int(sig)


def spawn(
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
    ID maps written, before anything of the program runs.

    Raises ``ValueError`` (empty *args*, NUL bytes, bad spawn path) or
    ``TypeError`` before creating anything.
    """
    if isinstance(args, (str, bytes, os.PathLike)):
        raise TypeError("args must be a sequence of program arguments, not a single string")
    args = list(args)
    if not args:
        raise ValueError("args must not be empty")
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
    death = check_pdeathsig(pdeathsig)
    options = options_if_any(
        clone_flags, exit_signal, set_tid, cgroup, uid_map, gid_map, setgroups, setns
    )
    exe = executable if executable is not None else args[0]
    child = spawn_for_popen(
        args,
        exe,
        exe,
        cwd=cwd,
        env=env,
        fds=(stdin, -1, -1, stdout, -1, stderr),
        pass_fds=pass_fds,
        close_fds=close_fds,
        restore_signals=restore_signals,
        start_new_session=start_new_session,
        process_group=process_group,
        gid=gid,
        gids=extra_groups,
        uid=uid,
        umask=umask,
        preexec_fn=preexec_fn,
        create_pidfd=create_pidfd,
        path=spawn_path,
        pdeathsig=death,
        options=options,
    )
    if child.pidfd is not None:
        state_of(child.pidfd).abandon_on_drop = False  # handed over
    return child
