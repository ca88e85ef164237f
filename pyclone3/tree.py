"""Whole process trees: find, signal and reap a child's descendants.

A child that forks (a shell, a build tool, a test runner) leaves
grandchildren that ``kill(child)`` does not reach, and that outlive it. With
this process a *child subreaper* (``PR_SET_CHILD_SUBREAPER``, Linux 3.4),
descendants orphaned by the death of their parent become our children
instead of init's, so they can still be found and must be reaped here.

:func:`kill_tree` stops the tree first (a stopped process cannot fork a
child we would miss), collects each member's pidfd, then signals them all
through their pidfds, so no signal can reach a recycled PID. A member is
the child, any process whose parent chain leads to it, and any child of
ours in the session the child leads (``start_new_session=True``), which is
where its orphans land when we are a subreaper. A descendant that left both
(a daemon that called ``setsid`` and whose parent is gone, before this
process became a subreaper) is out of reach: a cgroup (``cgroup=``, then
``cgroup.kill``) is the complete answer to that.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from collections.abc import Iterable

from ._clone3 import ffi, lib
from ._features import features
from .flags import WaitFlag
from .pidfd import PidFd
from .syscalls import pidfd_open

__all__ = [
    "descendants",
    "is_child_subreaper",
    "kill_tree",
    "reap_orphans",
    "set_child_subreaper",
]

_WEXITED_WNOHANG_WALL = int(WaitFlag.WEXITED | WaitFlag.WNOHANG | WaitFlag["__WALL"])
_WALL = int(WaitFlag["__WALL"])


def set_child_subreaper(on: bool = True) -> None:
    """Make this process a child subreaper (``prctl(PR_SET_CHILD_SUBREAPER)``), or stop being one.

    It is a property of the whole process, inherited by nothing: orphans
    anywhere below it are reparented to it, and it must reap them.
    """
    if lib.pyclone3_set_child_subreaper(1 if on else 0) < 0:
        err = ffi.errno
        raise OSError(err, os.strerror(err))


def is_child_subreaper() -> bool:
    """Whether this process is a child subreaper."""
    value = lib.pyclone3_get_child_subreaper()
    if value < 0:
        err = ffi.errno
        raise OSError(err, os.strerror(err))
    return bool(value)


def _stat(pid: int | str) -> tuple[bytes, int, int] | None:
    """(state, ppid, session id) from /proc/PID/stat; None once the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        fields = stat[stat.rindex(b")") + 2 :].split()  # the name may hold spaces
        return fields[0], int(fields[1]), int(fields[3])
    except (OSError, ValueError, IndexError):
        return None


def _process_table() -> dict[int, tuple[int, int, bytes]]:
    """pid -> (ppid, session id, state), for every process now."""
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = _stat(name)
            if stat is not None:  # else gone meanwhile
                table[int(name)] = (stat[1], stat[2], stat[0])
    return table


def _members(root: int, table: dict[int, tuple[int, int, bytes]]) -> list[int]:
    """The PIDs of root's tree (root excluded), parents before children."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    me = os.getpid()
    start = [root]
    # Orphans reparented to us (as a subreaper) in the session root leads.
    start += [pid for pid in children.get(me, ()) if pid != root and table[pid][1] == root]
    found: list[int] = []
    seen = {root, me}
    queue = list(start)
    while queue:
        pid = queue.pop(0)
        if pid != root:
            found.append(pid)
        for child in children.get(pid, ()):
            if child not in seen:
                seen.add(child)
                queue.append(child)
    return found


def _open_member(pid: int, parent: int) -> PidFd | None:
    """A pidfd for *pid*, if it still is *parent*'s child once opened."""
    try:
        fd = pidfd_open(pid)
    except ProcessLookupError:
        return None
    pidfd = PidFd._adopt(fd, pid)
    # The PID may have been reused between the listing and pidfd_open; a
    # process with the same parent is still one of the tree.
    if _parent_of(pid) == parent:
        return pidfd
    pidfd.close()
    return None


def descendants(pidfd: PidFd) -> list[PidFd]:
    """Pidfds of the process's descendants now (see the module's notes); the caller closes them.

    The tree may change while it is read; :func:`kill_tree` stops it first.
    """
    table = _process_table()
    out = []
    for pid in _members(pidfd.pid, table):
        member = _open_member(pid, table[pid][0])
        if member is not None:
            out.append(member)
    return out


def _signal(pidfd: PidFd, sig: int) -> bool:
    try:
        pidfd._send_signal_or_kill(sig)
    except (ProcessLookupError, ValueError):
        return False
    return True


def _reap_ours(pidfd: PidFd) -> bool:
    """Reap *pidfd*'s process if it is our exited child; True once it needs nothing more."""
    info = ffi.new("struct pyclone3_waitinfo *")
    if lib.sys_waitid(lib.P_PIDFD, pidfd.fileno(), info, _WEXITED_WNOHANG_WALL, ffi.NULL) < 0:
        if ffi.errno != errno.ENOSYS:
            return bool(ffi.errno == errno.ECHILD)  # not ours: its own parent reaps it
        # No waitid(P_PIDFD) (before 5.4): by PID, if it is our exited child.
        if pidfd.is_alive() or _parent_of(pidfd.pid) != os.getpid():
            return not pidfd.is_alive()
        try:
            return os.waitpid(pidfd.pid, os.WNOHANG | _WALL)[0] != 0
        except ChildProcessError:
            return True
    return bool(info.pid != 0)


def _parent_of(pid: int) -> int:
    stat = _stat(pid)
    return stat[1] if stat is not None else -1


def reap_orphans(session: int) -> int:
    """Reap this process's exited children in *session* (a tree's orphans); return how many.

    Only zombies are reaped, so no status is taken from a child that some
    other part of the program is about to wait for while it still runs.
    """
    me = os.getpid()
    count = 0
    for pid, (ppid, sid, state) in _process_table().items():
        if ppid != me or sid != session or pid == session or state != b"Z":
            continue
        try:
            if os.waitpid(pid, os.WNOHANG | _WALL)[0] == pid:
                count += 1
        except ChildProcessError:
            pass
    return count


def kill_tree(pidfd: PidFd, sig: int = signal.SIGKILL, *, timeout: float = 5.0) -> int:
    """Signal the process and its whole tree with *sig*; return how many were signalled.

    The tree is stopped (``SIGSTOP``) and re-read until no new member
    appears, then each member gets *sig* through its pidfd, then
    ``SIGCONT`` (so that a catchable *sig* is handled; on any error too, so
    that nothing is left stopped). The members that are our children
    (orphans reparented to us as a subreaper) are reaped: with ``SIGKILL``
    this waits up to *timeout* seconds for every member to exit, then
    reaps; otherwise the orphans already gone are reaped
    (:func:`reap_orphans`) and later ones are left to a later call. The
    process itself is not reaped: it belongs to whoever spawned it.

    Without ``pidfd_open`` (before 5.3, or filtered), the members cannot be
    held: the process group the process leads, if it leads one, is
    signalled instead (``killpg``; safe while the process is unreaped, as
    its PID, the group's ID, cannot be reused), and the count is 1.
    """
    if isinstance(sig, bool) or not isinstance(sig, int):
        raise TypeError(f"sig must be an int, not {type(sig).__name__}")
    pidfd.fileno()  # ValueError if closed
    held: dict[int, PidFd] = {}
    done = False
    alive = _signal(pidfd, signal.SIGSTOP)
    try:
        if not features().pidfd_open:
            return _signal_group(pidfd, sig)
        for _ in range(1000):  # a fork bomb gets no more rounds than this
            table = _process_table()
            new = [pid for pid in _members(pidfd.pid, table) if pid not in held]
            if not new:
                break
            for pid in new:
                member = _open_member(pid, table[pid][0])
                if member is not None:
                    held[pid] = member
                    _signal(member, signal.SIGSTOP)
        count = 1 if alive and _signal(pidfd, sig) else 0
        for member in held.values():
            count += _signal(member, sig)
        if sig == signal.SIGKILL:
            done = True
            # Once every member and the process itself are gone, every orphan
            # has been reparented (to us, as a subreaper): reap ours.
            deadline = time.monotonic() + timeout
            everyone = [pidfd, *held.values()]
            while any(m.is_alive() for m in everyone if not m.closed):
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.001)
            for member in held.values():
                _reap_ours(member)
        else:
            _continue(pidfd, held.values())
            done = True
            reap_orphans(pidfd.pid)
        return count
    finally:
        if not done:
            _continue(pidfd, held.values())
        for member in held.values():
            with contextlib.suppress(OSError):
                member.close()


def _continue(pidfd: PidFd, members: Iterable[PidFd]) -> None:
    _signal(pidfd, signal.SIGCONT)
    for member in members:
        _signal(member, signal.SIGCONT)


def _signal_group(pidfd: PidFd, sig: int) -> int:
    """The fallback without pidfd_open: the process group the process leads."""
    pid = pidfd.pid
    try:
        leads = os.getpgid(pid) == pid
    except ProcessLookupError:
        return 0
    try:
        if leads:
            os.killpg(pid, sig)
            if sig != signal.SIGKILL:
                os.killpg(pid, signal.SIGCONT)
            return 1
        return 1 if _signal(pidfd, sig) else 0
    except ProcessLookupError:
        return 0
