"""The executors: one attempt to create the child on one path, and the hand-over.

Three ways to make the child, each given a :class:`~pyclone3._plan.Plan`
and a path name:

:func:`spawn_vm`
    the child shares our memory (``CLONE_VM | CLONE_VFORK``, or ``vfork``)
    and reports a failure in the spawn struct: the fast path.
:func:`spawn_copied`
    the child runs in a copy of our memory and reports through an error
    pipe: for a child that changes its ids, or options a vfork child cannot
    honour (ID maps it waits for, a time namespace).
:func:`spawn_forked`
    ``fork()`` with the interpreter's hooks, for ``preexec_fn``.

Each returns a :class:`SpawnedChild` or raises ``OSError`` (no child was
made) or :class:`~pyclone3._report.ChildFailed` (the child failed before
exec and was reaped). The child and its pidfd are recorded in C
(``plan.s.child_pid`` and the thread's pidfd cell) before any Python runs
again, so an exception raised by a signal handler anywhere here still
leaves them where ``_spawn.start`` finds, kills and reaps them.
"""

from __future__ import annotations

import gc
import os
import threading
from collections import namedtuple
from collections.abc import Callable

from ._clone3 import ffi, lib
from ._features import features
from ._plan import Plan
from ._report import PREEXEC_REPORT, ChildFailed, parse_report, read_report
from .clone_options import CloneOptions
from .pidfd import PidFd, adopt_spawned

# typing is not imported at run time (see pyclone3/__init__.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NamedTuple

__all__ = ["SpawnedChild", "buffers", "learned", "spawn_copied", "spawn_forked", "spawn_vm"]

_STACK_SIZE = 64 * 1024
_new_uncleared = ffi.new_allocator(should_clear_after_alloc=False)


if TYPE_CHECKING:

    class SpawnedChild(NamedTuple):
        pid: int
        pidfd: PidFd | None
        path: str

else:
    # The class typing.NamedTuple makes, made without importing typing.
    SpawnedChild = namedtuple("SpawnedChild", ("pid", "pidfd", "path"))
    SpawnedChild.__annotations__ = {"pid": "int", "pidfd": "PidFd | None", "path": "str"}
# The namedtuple's own __new__ is a Python function, a frame when the CPU's
# caches are cold after the child: spawn_vm's common case builds the tuple
# with tuple.__new__ directly.
_tuple_new = tuple.__new__
SpawnedChild.__doc__ = (
    """What :func:`pyclone3.spawn` made: PID, pidfd (``None`` on ``vfork``), and the path used."""
)


class _ThreadBuffers(threading.local):
    """Per thread, the child's stack and the pidfd cell: a spawn never nests in a thread."""

    def __init__(self) -> None:
        self.stack = _new_uncleared("char[]", _STACK_SIZE)
        self.pidfd = ffi.new("int *", -1)
        #: The spawn's own fds (error pipe, sync pipe, socket pair), born and
        #: closed in C cells so that no interruption can lose one.
        self.temp = ffi.new("int[6]", [-1] * 6)


buffers = _ThreadBuffers()


class _Learned:
    """What spawns have learnt about this kernel and sandbox, for every later spawn."""

    __slots__ = ("clear_sighand", "share_files")

    def __init__(self) -> None:
        #: clone3 takes CLONE_CLEAR_SIGHAND (not on 5.3 and 5.4).
        self.clear_sighand = True
        #: A child may be born sharing our fd table and leave it with
        #: close_range(CLOSE_RANGE_UNSHARE) (5.9+) or unshare(CLONE_FILES):
        #: false once a child could do neither.
        self.share_files = True


learned = _Learned()


def _finish(plan: Plan, pid: int, path: str) -> SpawnedChild:
    """The child exec'd (hand it over) or failed before exec (reap it, raise ChildFailed)."""
    s = plan.s
    cell = buffers.pidfd
    step = s.err_step
    if step != lib.SPAWN_ERR_NONE:
        wstatus = lib.pyclone3_reap_cell(s, cell, 0)
        returncode = os.waitstatus_to_exitcode(wstatus) if wstatus >= 0 else None
        raise ChildFailed(pid, step, s.err_errno, returncode)
    if cell[0] < 0:
        return SpawnedChild(pid, None, path)  # s.child_pid is cleared at the hand-over
    return SpawnedChild(pid, adopt_spawned(cell, s), path)


def _stop_sharing(failed: ChildFailed) -> None:
    """Re-raise *failed* unless its child could not leave our fd table; then stop sharing."""
    if failed.step != lib.SPAWN_ERR_FILES:
        raise failed
    learned.share_files = False  # a sandbox refusing close_range and unshare


def spawn_vm(plan: Plan, path: str) -> SpawnedChild:
    """One attempt on a vfork-family path, the child sharing our memory."""
    s = plan.s
    # With close_fds=False the child keeps every inheritable fd, so it would
    # copy the whole table anyway: sharing gains nothing. The C core shares
    # only once our table is big (see _spawn_parent.c).
    s.share_files = 1 if learned.share_files and s.close_fds else 0
    bufs = buffers
    stack = bufs.stack
    pidfd_out = bufs.pidfd
    pidfd_out[0] = -1
    if path == "clone3":
        pid = lib.pyclone3_spawn(
            s, lib.SPAWN_CLONE3, 1 if learned.clear_sighand else 0, stack, _STACK_SIZE, pidfd_out
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
        return _finish_vm(plan, pid, path)
    if pid < 0:
        err = ffi.errno
        raise OSError(err, os.strerror(err))
    if pidfd_out[0] >= 0 and s.err_step == lib.SPAWN_ERR_NONE:  # the common case, without a call
        return _tuple_new(SpawnedChild, (pid, adopt_spawned(pidfd_out, s), path))
    return _finish_vm(plan, pid, path)


def _finish_vm(plan: Plan, pid: int, path: str) -> SpawnedChild:
    """:func:`_finish` for :func:`spawn_vm`, which tries once more without sharing our fd table."""
    try:
        return _finish(plan, pid, path)
    except ChildFailed as failed:
        _stop_sharing(failed)
    return spawn_vm(plan, path)


_COPY_METHODS = {
    "clone3": lib.SPAWN_CLONE3_FORK,
    "clone": lib.SPAWN_CLONE_FORK,
    "vfork_pidfd": lib.SPAWN_FORK,
    "vfork": lib.SPAWN_FORK,
}


def spawn_copied(plan: Plan, path: str, opts: CloneOptions | None) -> SpawnedChild:
    """Any path, with the child in a copy of our memory instead of sharing it.

    For a child that changes its credentials (a process with other ids must
    never share the caller's address space: the kernel would mark the shared
    memory non-dumpable, ours included) and for options a vfork child cannot
    honour (ID maps it waits for, a time namespace). The child reports a
    failure through an error pipe; on ``vfork_pidfd`` it sends its pidfd.
    """
    try:
        return _spawn_copied(plan, path, opts)
    except ChildFailed as failed:
        _stop_sharing(failed)
    return _spawn_copied(plan, path, opts)


def _spawn_copied(plan: Plan, path: str, opts: CloneOptions | None) -> SpawnedChild:
    s = plan.s
    waits = opts is not None and (
        opts.uid_map is not None or opts.gid_map is not None or opts.setgroups is not None
    )
    sends_pidfd = path == "vfork_pidfd"
    pidfd_out = buffers.pidfd
    pidfd_out[0] = -1
    # [errpipe r, errpipe w, then sync r, sync w or our socket end, the child's]
    cells = buffers.temp
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
        # A child that waits for us to write its ID maps cannot share our fd
        # table: sharing makes us wait for its exec.
        s.share_files = (
            1 if learned.share_files and s.close_fds and not (opts and opts.fork_like) else 0
        )
        clear = 1 if path == "clone3" and learned.clear_sighand else 0
        pid = lib.pyclone3_spawn(s, _COPY_METHODS[path], clear, ffi.NULL, 0, pidfd_out)
        if pid < 0:
            err = ffi.errno
            raise OSError(err, os.strerror(err))
        lib.pyclone3_close_cells(cells + 1, 1)  # our copy of the error pipe's write end
        if sends_pidfd:
            lib.pyclone3_close_cells(cells + 3, 1)  # and of the child's socket end
        if waits:
            assert opts is not None
            lib.pyclone3_close_cells(cells + 2, 1)  # and of the sync pipe's read end
            try:
                _write_id_maps(pid, opts)
                os.write(cells[3], b"g")
            except BaseException:
                lib.pyclone3_close_cells(cells + 3, 1)  # the child sees EOF and exits
                lib.pyclone3_reap_cell(s, pidfd_out, 0)
                raise
        report = read_report(cells[0])
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


def spawn_forked(plan: Plan, path: str, preexec_fn: Callable[[], Any]) -> SpawnedChild:
    """The preexec_fn path: fork(), the child sends its own pidfd unless path is vfork.

    As ``subprocess`` does, the garbage collector is off across the fork, so
    that no collection in the child runs the parent's finalizers there; the
    parent turns it back on.
    """
    s = plan.s
    want_pidfd = path != "vfork" and features().pidfd_open
    cells = buffers.temp  # [errpipe r, errpipe w, parent end, child end]
    gc_was_enabled = gc.isenabled()
    gc.disable()
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
        s.share_files = 0  # the child runs Python, which may use any of our fds
        s.err_step = lib.SPAWN_ERR_NONE
        buffers.pidfd[0] = -1
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
                    os.write(errpipe_w, PREEXEC_REPORT)
                    os._exit(255)
                lib.pyclone3_child_exec(s)
            finally:
                os._exit(255)
        lib.pyclone3_close_cells(cells + 1, 1)  # our copy of the write end
        lib.pyclone3_close_cells(cells + 3, 1)  # and of the child's socket end
        report = read_report(cells[0])
        if cells[2] >= 0:
            lib.pyclone3_recv_pidfd_into(cells[2], buffers.pidfd)
        failure = parse_report(report)
        if failure is not None:
            plan.s.err_step, plan.s.err_errno = failure
        return _finish(plan, pid, path)
    finally:
        # The cells first: one C call, which an exception from a signal
        # handler cannot cut short; then the collector.
        try:
            lib.pyclone3_close_cells(cells, 4)
            s.errpipe = -1
            s.pidfd_sock = -1
            plan.set_keep(plan.pass_fds)
        finally:
            if gc_was_enabled:
                gc.enable()
