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

The tree is found in ``/proc``, which names processes by PID, and a PID
names someone else once its process has been reaped. So nothing here acts
on what ``/proc`` says without proof, through a pidfd, that the PID still
belongs to the process meant: a process keeps its PID until it is reaped,
and its pidfd tells whether it has been (``PIDFD_GET_INFO`` fails with
``ESRCH`` from Linux 6.13; ``/proc/self/fdinfo`` shows ``Pid: -1`` before).
The child is checked before and after each read of the process table, and
each member after its pidfd is opened and its ``/proc`` entry read, along
with the parent (or session leader) that entry names. Once the child has
been reaped, by anyone, its tree is not read at all: the table could
describe a stranger that was given the same PID.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from collections.abc import Iterable, Mapping

from . import syscalls
from ._features import features
from ._signals import signal_or_kill
from .flags import IdType, WaitFlag
from .pidfd import PidFd

__all__ = [
    "descendants",
    "is_child_subreaper",
    "kill_orphans",
    "kill_tree",
    "reap_orphans",
    "set_child_subreaper",
]

_P_PIDFD = int(IdType.P_PIDFD)
_WEXITED_WNOHANG_WALL = int(WaitFlag.WEXITED | WaitFlag.WNOHANG | WaitFlag["__WALL"])
_WALL = int(WaitFlag["__WALL"])
#: PIDFD_GET_INFO missing (before 6.13) or refused (a seccomp filter).
_NO_GET_INFO = frozenset({errno.ENOTTY, errno.EINVAL, errno.ENOSYS, errno.EPERM})


def set_child_subreaper(on: bool = True) -> None:
    """Make this process a child subreaper (``prctl(PR_SET_CHILD_SUBREAPER)``), or stop being one.

    It is a property of the whole process, inherited by nothing: orphans
    anywhere below it are reparented to it, and it must reap them.
    """
    syscalls.set_child_subreaper(on)


def is_child_subreaper() -> bool:
    """Whether this process is a child subreaper."""
    return syscalls.get_child_subreaper()


def _pid_now(pidfd: PidFd) -> int:
    """The PID the process behind *pidfd* holds now, as seen here.

    -1 once it has been reaped (by anyone: its PID may then be another's),
    or when that cannot be known and the process has exited; 0 if it is
    not visible from this PID namespace. ``ValueError`` if *pidfd* is closed.
    """
    if features().pidfd_get_info:
        try:
            info = pidfd.info()
        except ProcessLookupError:
            return -1
        except OSError as exc:
            if exc.errno not in _NO_GET_INFO:
                raise
        else:
            return info.pid if info.pid is not None else -1
    fd = pidfd.fileno()
    try:
        with open(f"/proc/self/fdinfo/{fd}", encoding="ascii") as f:
            for line in f:
                if line.startswith("Pid:"):
                    return int(line.split()[1])
    except FileNotFoundError:
        raise ValueError(f"fd {fd} of {pidfd!r} is not open") from None
    except OSError:
        pass
    # No way to ask (an old kernel, no /proc): a running process is unreaped.
    return pidfd.pid if pidfd.is_alive() else -1


def _holds_pid(pidfd: PidFd) -> bool:
    """Whether *pidfd*'s process still holds the PID it was known by (is unreaped).

    While it does, that number names it and no one else; checked on both
    sides of a read of ``/proc``, it proves the read was about it.
    """
    pid = pidfd.pid
    return pid > 0 and _pid_now(pidfd) == pid


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


def _table_for(root: PidFd) -> dict[int, tuple[int, int, bytes]] | None:
    """The process table, read while *root* provably held its PID; None if it did not.

    Checked before and after the read: a process is reaped once, so if it
    holds its PID at both ends it held it throughout, and every ``ppid`` or
    session id in the table equal to that PID means *root*. Otherwise
    (reaped, by anyone) the table may describe a stranger given its PID.
    """
    if not _holds_pid(root):
        return None
    table = _process_table()
    return table if _holds_pid(root) else None


def _members(root: int, table: Mapping[int, tuple[int, int, bytes]]) -> list[int]:
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


def _open_member(pid: int, parent: int, root: PidFd, held: Mapping[int, PidFd]) -> PidFd | None:
    """A pidfd for *pid*, if it is still the tree's member that *parent*'s child was.

    *held* maps the PIDs of members already opened to their pidfds. The
    PID may have been reused between the listing and ``pidfd_open``: a
    process with the same parent is still one of the tree. The proof, after
    ``/proc/PID/stat`` is read: the new pidfd still holds *pid* (so the
    entry described it), and the parent the entry names holds its PID too
    (*root*, a held member, or this process; for this process, the entry's
    session must be *root*'s, as :func:`_members` chose it).
    """
    try:
        fd = syscalls.pidfd_open(pid)
    except ProcessLookupError:
        return None
    member = PidFd(fd, pid=pid)
    try:
        if _is_member(member, parent, root, held):
            return member
    except BaseException:
        member.close()
        raise
    member.close()
    return None


def _is_member(member: PidFd, parent: int, root: PidFd, held: Mapping[int, PidFd]) -> bool:
    stat = _stat(member.pid)
    if stat is None or stat[1] != parent or not _holds_pid(member):
        return False
    if parent == os.getpid():  # an orphan of the session root leads, now ours
        return stat[2] == root.pid and _holds_pid(root)
    holder = root if parent == root.pid else held.get(parent)
    return holder is not None and _holds_pid(holder)


def descendants(pidfd: PidFd) -> list[PidFd]:
    """Pidfds of the process's descendants now (see the module's notes); the caller closes them.

    The tree may change while it is read; :func:`kill_tree` stops it first.
    Once the process has been reaped (by anyone) its PID may name a
    stranger, so its tree is not read and the list is empty. Raises
    ``ValueError`` if *pidfd* is closed.
    """
    table = _table_for(pidfd)
    if table is None:
        return []
    held: dict[int, PidFd] = {}
    try:
        for pid in _members(pidfd.pid, table):
            member = _open_member(pid, table[pid][0], pidfd, held)
            if member is not None:
                held[pid] = member
    except BaseException:
        for member in held.values():
            member.close()
        raise
    return list(held.values())


def _signal(pidfd: PidFd, sig: int) -> bool:
    try:
        signal_or_kill(pidfd, sig)
    except (ProcessLookupError, ValueError):
        return False
    return True


def _reap_ours(member: PidFd) -> None:
    """Reap *member*'s process if it is our exited child (through its pidfd)."""
    if features().waitid_pidfd:
        # ECHILD: not ours (its own parent reaps it), or reaped already.
        with contextlib.suppress(ChildProcessError):
            syscalls.waitid(_P_PIDFD, member, _WEXITED_WNOHANG_WALL)
        return
    # No waitid(P_PIDFD) (before 5.4): by PID, if it is our exited child.
    # Holding its PID around the read of its parent proves the number is
    # its; then only a reap by this very process could free it.
    if member.is_alive() or not _holds_pid(member):
        return
    if _parent_of(member.pid) != os.getpid() or not _holds_pid(member):
        return
    with contextlib.suppress(ChildProcessError):
        os.waitpid(member.pid, os.WNOHANG | _WALL)


def _parent_of(pid: int) -> int:
    stat = _stat(pid)
    return stat[1] if stat is not None else -1


def reap_orphans(session: int) -> int:
    """Reap this process's exited children in *session* (a tree's orphans); return how many.

    Only zombies are reaped, so no status is taken from a child that some
    other part of the program is about to wait for while it still runs.
    Each is reaped through a pidfd opened on it and checked (still our
    zombie in *session*) after it was opened, where pidfds allow.
    """
    return _reap_orphans(session, _process_table())


def _reap_orphans(session: int, table: Mapping[int, tuple[int, int, bytes]]) -> int:
    me = os.getpid()
    count = 0
    for pid, (ppid, sid, state) in table.items():
        if ppid != me or sid != session or pid == session or state != b"Z":
            continue
        count += _reap_zombie(pid, session)
    return count


def _reap_zombie(pid: int, session: int) -> bool:
    """Reap *pid* if it is still our zombie child in *session*; whether it was reaped."""
    if not (features().pidfd_open and features().waitid_pidfd):
        # Our zombie child's PID can be freed only by a reap in this process.
        try:
            return os.waitpid(pid, os.WNOHANG | _WALL)[0] == pid
        except ChildProcessError:
            return False
    try:
        fd = syscalls.pidfd_open(pid)
    except ProcessLookupError:
        return False
    with PidFd(fd, pid=pid) as zombie:
        stat = _stat(pid)
        if stat is None or stat[:3] != (b"Z", os.getpid(), session) or not _holds_pid(zombie):
            return False
        try:
            return syscalls.waitid(_P_PIDFD, zombie, _WEXITED_WNOHANG_WALL) is not None
        except ChildProcessError:
            return False


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

    Once the process has been reaped (by anyone), its PID may name a
    stranger: its tree is not read, nothing is signalled and the count is
    0. If it is reaped while its tree is being read, the reading stops
    there: the members already held (found while it still held its PID,
    and held by pidfd) are signalled, and no orphan is reaped.

    Without ``pidfd_open`` (before 5.3, or filtered), the members cannot be
    held: the process group the process leads, if it leads one, is
    signalled instead (``killpg``, once the process is shown unreaped, so
    that its PID, the group's ID, is its own; as with ``subprocess``, a
    reap and a reuse between that check and the ``killpg`` cannot be
    excluded), and the count is 1.
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
        intact = True  # the process held its PID through every read
        for _ in range(1000):  # a fork bomb gets no more rounds than this
            table = _table_for(pidfd)
            if table is None:
                intact = False
                break
            new = [pid for pid in _members(pidfd.pid, table) if pid not in held]
            if not new:
                break
            for pid in new:
                member = _open_member(pid, table[pid][0], pidfd, held)
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
            if intact:
                table = _table_for(pidfd)
                if table is not None:
                    _reap_orphans(pidfd.pid, table)
        return count
    finally:
        if not done:
            _continue(pidfd, held.values())
        for member in held.values():
            with contextlib.suppress(OSError):
                member.close()


def kill_orphans(session: int, sig: int = signal.SIGKILL, *, timeout: float = 5.0) -> int:
    """Signal what is left of a tree whose root has ended; return how many were signalled.

    *session* is the ended root's PID, where the root led a session (as a
    ``start_new_session`` or ``kill_tree=True`` child does). Its orphans were
    reparented to this process, a child subreaper: each of our children in
    that session gets :func:`kill_tree` (it and everything below it), through
    a pidfd checked, once open, to name our child in *session*. With
    ``SIGKILL`` they are reaped too, waiting up to *timeout* seconds, and
    the rounds go on until none is left (a dying member's own orphans come
    to us in turn). A member that left the session (``setsid``) is not seen.
    """
    if isinstance(sig, bool) or not isinstance(sig, int):
        raise TypeError(f"sig must be an int, not {type(sig).__name__}")
    deadline = time.monotonic() + timeout
    count = 0
    me = os.getpid()
    for _ in range(1000):  # a fork bomb gets no more rounds than this
        table = _process_table()
        orphans = [
            pid
            for pid, (ppid, sid, state) in table.items()
            if ppid == me and sid == session and pid != session and state != b"Z"
        ]
        _reap_orphans(session, table)
        if not orphans:
            break
        for pid in orphans:
            count += _kill_orphan(pid, session, sig, deadline)
        if sig != signal.SIGKILL or time.monotonic() >= deadline:
            break
    return count


def _kill_orphan(pid: int, session: int, sig: int, deadline: float) -> int:
    if not features().pidfd_open:
        # Our unreaped child: only a reap by this process can free its PID.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
            return 1
        return 0
    try:
        fd = syscalls.pidfd_open(pid)
    except ProcessLookupError:
        return 0
    with PidFd(fd, pid=pid) as orphan:
        stat = _stat(pid)
        if stat is None or stat[1:] != (os.getpid(), session) or not _holds_pid(orphan):
            return 0  # not the orphan that was listed
        count = kill_tree(orphan, sig, timeout=max(deadline - time.monotonic(), 0.0))
        if sig == signal.SIGKILL:
            with contextlib.suppress(TimeoutError, ChildProcessError):
                orphan.wait(max(deadline - time.monotonic(), 0.0))  # ours to reap
        return count


def _continue(pidfd: PidFd, members: Iterable[PidFd]) -> None:
    _signal(pidfd, signal.SIGCONT)
    for member in members:
        _signal(member, signal.SIGCONT)


def _signal_group(pidfd: PidFd, sig: int) -> int:
    """The fallback without pidfd_open: the process group the process leads."""
    pid = pidfd.pid
    if not _holds_pid(pidfd):
        return 0
    try:
        leads = os.getpgid(pid) == pid
    except ProcessLookupError:
        return 0
    if not _holds_pid(pidfd):  # getpgid may have answered for a stranger
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
