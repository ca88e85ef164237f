"""One cheap, cached probe of what this kernel and sandbox allow: :func:`features`."""

from __future__ import annotations

import contextlib
import errno
import os
import threading

from . import syscalls
from ._clone3 import ffi, lib
from ._errors import raise_errno
from ._frozen import Frozen
from .flags import CloneFlag, IdType, PidfdFlag, PidfdInfoFlag, PidfdSignalFlag, WaitFlag

# typing is not imported at run time (see pyclone3/__init__.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["Features", "features"]

#: errnos that say "try again later", not "unsupported": never cached.
TRANSIENT_ERRNOS = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN, errno.EINTR, errno.ENOSPC}
)


class Features(Frozen):
    """What the running kernel, as this process sees it, supports.

    Each boolean was found by making the call, not by reading the kernel
    version: a seccomp filter or an emulator (qemu-user) may refuse what the
    version would promise. :attr:`notes` says why a feature is missing (the
    errno name the probe got). Print it for a table; :meth:`as_dict` for JSON.
    Immutable; equal to another ``Features`` with the same fields.
    """

    __match_args__ = (
        "kernel",
        "clone3",
        "clone_pidfd",
        "pidfd_open",
        "pidfd_send_signal",
        "waitid_pidfd",
        "pidfd_getfd",
        "pidfd_nonblock",
        "pidfd_thread",
        "pidfd_signal_process_group",
        "pidfd_get_info",
        "pidfd_info_exit",
        "pidfd_identity",
        "close_range",
        "cgroup2_mount",
        "cgroup",
        "landlock_abi",
        "scope",
        "notes",
    )

    #: The kernel release, as ``uname -r`` prints it.
    kernel: str
    #: clone3(2) exists and may be called (Linux 5.3+).
    clone3: bool
    #: clone3 with CLONE_PIDFD gives the parent a pidfd (5.3+; qemu-user refuses).
    clone_pidfd: bool
    #: pidfd_open(2) (5.3+).
    pidfd_open: bool
    #: pidfd_send_signal(2) (5.1+).
    pidfd_send_signal: bool
    #: waitid(P_PIDFD) (5.4+).
    waitid_pidfd: bool
    #: pidfd_getfd(2) (5.6+).
    pidfd_getfd: bool
    #: pidfd_open(PIDFD_NONBLOCK) (5.10+).
    pidfd_nonblock: bool
    #: pidfd_open(PIDFD_THREAD) (6.9+).
    pidfd_thread: bool
    #: pidfd_send_signal(PIDFD_SIGNAL_PROCESS_GROUP) (6.9+).
    pidfd_signal_process_group: bool
    #: the PIDFD_GET_INFO ioctl (6.13+).
    pidfd_get_info: bool
    #: PIDFD_INFO_EXIT, the exit status of a reaped process through its pidfd (6.15+).
    pidfd_info_exit: bool
    #: pidfds of one process share an inode and of two processes do not (pidfs, 6.9+).
    pidfd_identity: bool
    #: close_range(2) (5.9+). With it, a spawn's child born sharing our fd
    #: table copies only the low fds it needs, so spawn cost does not grow
    #: with the fds and live children we hold.
    close_range: bool
    #: where the cgroup v2 hierarchy is mounted, if it is.
    cgroup2_mount: str | None
    #: this process's cgroup v2 path (from /proc/self/cgroup), if any.
    cgroup: str | None
    #: the Landlock ABI version, what a spawn's ``landlock=`` can use
    #: (1 from Linux 5.13, 4 with TCP ports from 6.7; 0 without Landlock).
    landlock_abi: int
    #: a :class:`~pyclone3.Scope` can be made below this process's cgroup (a
    #: writable cgroup v2, as root or delegated) and killed by ``cgroup.kill``
    #: (5.14+). Where not, ``kill_tree=`` (:mod:`pyclone3.tree`) is the fallback.
    scope: bool
    #: Why a feature is False, by feature name (an errno name or a reason).
    notes: dict[str, str]

    def __init__(
        self,
        kernel: str,
        clone3: bool,
        clone_pidfd: bool,
        pidfd_open: bool,
        pidfd_send_signal: bool,
        waitid_pidfd: bool,
        pidfd_getfd: bool,
        pidfd_nonblock: bool,
        pidfd_thread: bool,
        pidfd_signal_process_group: bool,
        pidfd_get_info: bool,
        pidfd_info_exit: bool,
        pidfd_identity: bool,
        close_range: bool,
        cgroup2_mount: str | None,
        cgroup: str | None,
        landlock_abi: int = 0,
        scope: bool = False,
        notes: dict[str, str] | None = None,
    ) -> None:
        set_ = object.__setattr__
        set_(self, "kernel", kernel)
        set_(self, "clone3", clone3)
        set_(self, "clone_pidfd", clone_pidfd)
        set_(self, "pidfd_open", pidfd_open)
        set_(self, "pidfd_send_signal", pidfd_send_signal)
        set_(self, "waitid_pidfd", waitid_pidfd)
        set_(self, "pidfd_getfd", pidfd_getfd)
        set_(self, "pidfd_nonblock", pidfd_nonblock)
        set_(self, "pidfd_thread", pidfd_thread)
        set_(self, "pidfd_signal_process_group", pidfd_signal_process_group)
        set_(self, "pidfd_get_info", pidfd_get_info)
        set_(self, "pidfd_info_exit", pidfd_info_exit)
        set_(self, "pidfd_identity", pidfd_identity)
        set_(self, "close_range", close_range)
        set_(self, "cgroup2_mount", cgroup2_mount)
        set_(self, "cgroup", cgroup)
        set_(self, "landlock_abi", landlock_abi)
        set_(self, "scope", scope)
        set_(self, "notes", {} if notes is None else notes)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready ``dict`` of every field (:attr:`notes` copied)."""
        data = {name: getattr(self, name) for name in self.__match_args__}
        data["notes"] = dict(self.notes)
        return data

    def to_json(self) -> str:
        """:meth:`as_dict` as indented JSON."""
        import json  # here, not at the top: few programs ask, and it costs every import

        return json.dumps(self.as_dict(), indent=2, sort_keys=False)

    def __str__(self) -> str:
        rows = []
        for name in self.__match_args__:
            if name == "notes":
                continue
            value = getattr(self, name)
            if isinstance(value, bool):
                shown = "yes" if value else "no"
                if not value and name in self.notes:
                    shown += f" ({self.notes[name]})"
            else:
                shown = "-" if value is None else str(value)
            rows.append((name, shown))
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name.ljust(width)}  {shown}" for name, shown in rows)


_lock = threading.Lock()
_cached: Features | None = None


def features(*, refresh: bool = False) -> Features:
    """Probe (once, then cached) what this kernel and sandbox allow.

    The probe makes each call for real: it opens pidfds on this process,
    sends it signal 0, and creates one short-lived child with ``clone3``
    that exits at once (with no exit signal, so no ``SIGCHLD`` handler
    sees it) and is reaped before this returns. It costs well under a
    millisecond on a small process. It asks nothing of the parent process,
    so it works as well in PID 1 of a PID namespace (a container's init),
    whose parent is outside the namespace (``getppid()`` is 0).

    A refusal (``ENOSYS``, ``EPERM`` from a seccomp filter, ``EINVAL`` for an
    unknown flag, ``ENOTTY`` for an unknown ioctl) makes the feature
    ``False`` and is cached. A transient failure (``EMFILE``, ``ENFILE``,
    ``ENOMEM``, ``EAGAIN``) is raised as ``OSError`` and nothing is cached,
    so the next call probes again. ``refresh=True`` forces a new probe.
    """
    global _cached
    with _lock:
        if _cached is None or refresh:
            _cached = _probe()
        return _cached


class _Prober:
    def __init__(self) -> None:
        self.notes: dict[str, str] = {}
        self.fds: list[int] = []

    def attempt(self, name: str, call: Any, *args: Any) -> Any:
        """Run *call*; return its result, or None after noting a refusal."""
        ok, result = self.succeeds(name, call, *args)
        return result if ok else None

    def succeeds(
        self, name: str, call: Any, *args: Any, accept: tuple[int, ...] = ()
    ) -> tuple[bool, Any]:
        """Run *call*; (True, result), or (False, None) after noting a refusal.

        An errno in *accept* counts as success: the kernel understood the
        call and answered about its argument. Transient errors propagate, so
        that nothing is cached for them.
        """
        try:
            return True, call(*args)
        except OSError as exc:
            if exc.errno in accept:
                return True, None
            self.refused(name, exc)
            return False, None

    def refused(self, name: str, exc: OSError) -> None:
        """Note why *name* is unavailable; re-raise a transient failure."""
        if exc.errno in TRANSIENT_ERRNOS:
            raise exc
        self.notes[name] = errno.errorcode.get(exc.errno or 0, str(exc))

    def keep(self, fd: int | None) -> int | None:
        if fd is not None:
            self.fds.append(fd)
        return fd

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()


def _probe() -> Features:
    p = _Prober()
    try:
        return _probe_with(p)
    finally:
        p.close()


def _probe_with(p: _Prober) -> Features:
    me = os.getpid()
    own = p.keep(p.attempt("pidfd_open", syscalls.pidfd_open, me, 0))
    nonblock = thread = send = getfd = group = get_info = False
    waitid_pidfd = False
    if own is not None:
        nonblock = (
            p.keep(p.attempt("pidfd_nonblock", syscalls.pidfd_open, me, PidfdFlag.PIDFD_NONBLOCK))
            is not None
        )
        thread = (
            p.keep(
                p.attempt(
                    "pidfd_thread",
                    syscalls.pidfd_open,
                    threading.get_native_id(),
                    PidfdFlag.PIDFD_THREAD,
                )
            )
            is not None
        )
        send, _ = p.succeeds("pidfd_send_signal", syscalls.pidfd_send_signal, own, 0, 0)
        if send:
            # The kernel signals the process group our PID leads; unless we
            # lead one, ESRCH still proves it knew the flag (older: EINVAL).
            group, _ = p.succeeds(
                "pidfd_signal_process_group",
                syscalls.pidfd_send_signal,
                own,
                0,
                PidfdSignalFlag.PIDFD_SIGNAL_PROCESS_GROUP,
                accept=(errno.ESRCH,),
            )
        else:
            p.notes["pidfd_signal_process_group"] = "needs pidfd_send_signal"
        getfd = p.keep(p.attempt("pidfd_getfd", syscalls.pidfd_getfd, own, own, 0)) is not None
        get_info = p.attempt("pidfd_get_info", syscalls.pidfd_get_info, own) is not None
        # We are not our own child: a kernel that knows P_PIDFD says ECHILD,
        # one that does not says EINVAL.
        waitid_pidfd, _ = p.succeeds(
            "waitid_pidfd",
            syscalls.waitid,
            IdType.P_PIDFD,
            own,
            WaitFlag.WEXITED | WaitFlag.WNOHANG,
            accept=(errno.ECHILD,),
        )
    else:
        for name in (
            "pidfd_nonblock",
            "pidfd_thread",
            "pidfd_send_signal",
            "pidfd_signal_process_group",
            "pidfd_getfd",
            "pidfd_get_info",
            "waitid_pidfd",
        ):
            p.notes[name] = "needs pidfd_open"

    clone3, clone_pidfd, info_exit, other = _probe_clone3(p, get_info)
    if own is None and clone_pidfd:
        send, waitid_pidfd = _probe_with_a_child_pidfd(p)
    identity = _probe_identity(p, own, other)
    # Closes nothing: the highest fd number the kernel can have is below this.
    close_range, _ = p.succeeds("close_range", syscalls.close_range, 2**32 - 1, 2**32 - 1)
    mount, cgroup = _cgroup2()
    return Features(
        kernel=os.uname().release,
        clone3=clone3,
        clone_pidfd=clone_pidfd,
        pidfd_open=own is not None,
        pidfd_send_signal=send,
        waitid_pidfd=waitid_pidfd,
        pidfd_getfd=getfd,
        pidfd_nonblock=nonblock,
        pidfd_thread=thread,
        pidfd_signal_process_group=group,
        pidfd_get_info=get_info,
        pidfd_info_exit=info_exit,
        pidfd_identity=identity,
        close_range=close_range,
        cgroup2_mount=mount,
        cgroup=cgroup,
        landlock_abi=_landlock_abi(),
        scope=_probe_scope(p, mount, cgroup),
        notes=p.notes,
    )


def _landlock_abi() -> int:
    from .landlock import abi_version

    return abi_version()


def _probe_with_a_child_pidfd(p: _Prober) -> tuple[bool, bool]:
    """pidfd_open is refused, but clone3 gives pidfds: probe (pidfd_send_signal,
    waitid_pidfd) on a probe child's, which the waitid reaps when it works."""
    try:
        pid, fd = _clone3_child(CloneFlag.CLONE_PIDFD)
    except OSError:
        return False, False
    try:
        send, _ = p.succeeds("pidfd_send_signal", syscalls.pidfd_send_signal, fd, 0, 0)
        waitid_pidfd, _ = p.succeeds(
            "waitid_pidfd",
            syscalls.waitid,
            IdType.P_PIDFD,
            fd,
            WaitFlag.WEXITED | WaitFlag["__WALL"],
            accept=(errno.ECHILD,),  # reaped by someone else: P_PIDFD was understood
        )
        if send:
            p.notes.pop("pidfd_send_signal", None)
        if waitid_pidfd:
            p.notes.pop("waitid_pidfd", None)
        else:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, lib.__WALL)
        return send, waitid_pidfd
    finally:
        os.close(fd)


def _probe_identity(p: _Prober, own: int | None, other: int | None) -> bool:
    """pidfs (6.9+) gives each process its own inode; before, all share one anon inode.

    *own* is a pidfd of this process, *other* one of another process (the
    reaped probe child) or None, when the parent's or a spawned `true`'s is
    taken instead.
    """
    if own is None:
        p.notes["pidfd_identity"] = "needs pidfd_open"
        return False
    if other is None:
        other = _other_pidfd(p)
        if other is None:
            return False
    again = p.keep(p.attempt("pidfd_identity", syscalls.pidfd_open, os.getpid()))
    if again is None:
        return False
    mine, theirs, same = os.fstat(own), os.fstat(other), os.fstat(again)
    if (mine.st_dev, mine.st_ino) == (same.st_dev, same.st_ino) and mine.st_ino != theirs.st_ino:
        return True
    p.notes["pidfd_identity"] = "pidfds share one anonymous inode (before Linux 6.9)"
    return False


def _other_pidfd(p: _Prober) -> int | None:
    """A pidfd of a process other than this one, when there is no probe child's.

    The parent's, if it is in our PID namespace (``getppid()`` is 0 in PID 1
    of a namespace, or after a ``setns`` into one) and still there, else a
    spawned `true`'s, reaped.
    """
    ppid = os.getppid()
    if ppid > 0:
        try:
            return p.keep(syscalls.pidfd_open(ppid))
        except ProcessLookupError:
            pass  # the parent exited meanwhile: not a refusal
        except OSError as exc:
            p.refused("pidfd_identity", exc)
            return None
    return _spawned_pidfd(p, "pidfd_identity")


def _clone3_child(flags: int) -> tuple[int, int]:
    """probe_clone3 as a Python call: (pid, pidfd or -1); raises OSError."""
    pidfd = ffi.new("int *", -1)
    pid = lib.probe_clone3(flags, pidfd)
    if pid < 0:
        raise_errno(ffi.errno)
    return int(pid), int(pidfd[0])


def _reap(pid: int, pidfd: int) -> None:
    """Reap a probe child (exit_signal 0, hence __WALL) by pidfd, else by PID."""
    if pidfd >= 0:
        try:
            syscalls.waitid(lib.P_PIDFD, pidfd, WaitFlag.WEXITED | WaitFlag["__WALL"])
            return
        except ChildProcessError:
            return  # reaped by someone calling wait(__WALL): nothing to do
        except OSError:
            pass  # P_PIDFD refused: fall back to the PID, still a zombie of ours
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, lib.__WALL)


def _probe_clone3(p: _Prober, get_info: bool) -> tuple[bool, bool, bool, int | None]:
    """Return (clone3, clone_pidfd, pidfd_info_exit, a pidfd of the reaped child or None).

    The pidfd is kept open (in *p*) for :func:`_probe_identity`.
    """
    clone3 = clone_pidfd = False
    child: tuple[int, int] | None = None
    try:
        child = _clone3_child(CloneFlag.CLONE_PIDFD)
        clone3 = clone_pidfd = True
    except OSError as exc:
        p.refused("clone_pidfd", exc)
        if exc.errno == errno.EINVAL:
            # clone3 exists but CLONE_PIDFD was refused (qemu-user does this).
            child = p.attempt("clone3", _clone3_child, 0)
            clone3 = child is not None
        else:
            p.notes["clone3"] = p.notes["clone_pidfd"]
    if child is None:
        if get_info:
            info_exit, spawned = _probe_info_exit_spawned(p)
            return clone3, clone_pidfd, info_exit, spawned
        p.notes["pidfd_info_exit"] = "needs PIDFD_GET_INFO"
        return clone3, clone_pidfd, False, None
    pid, pidfd = child
    if pidfd >= 0:
        p.keep(pidfd)  # closed with the prober's fds
    else:
        opened = p.keep(p.attempt("pidfd_info_exit", syscalls.pidfd_open, pid))
        pidfd = -1 if opened is None else opened
    _reap(pid, pidfd)
    info_exit = False
    if pidfd >= 0 and get_info:
        info_exit = _has_exit_info(p, pidfd)
    elif not get_info:
        p.notes["pidfd_info_exit"] = "needs PIDFD_GET_INFO"
    return clone3, clone_pidfd, info_exit, (pidfd if pidfd >= 0 else None)


def _has_exit_info(p: _Prober, pidfd: int) -> bool:
    info = p.attempt(
        "pidfd_info_exit", syscalls.pidfd_get_info, pidfd, PidfdInfoFlag.PIDFD_INFO_EXIT
    )
    if info is not None and info.exit_code is not None:
        return True
    p.notes.setdefault("pidfd_info_exit", "not reported")
    return False


def _probe_info_exit_spawned(p: _Prober) -> tuple[bool, int | None]:
    """PIDFD_INFO_EXIT without clone3: reap a posix_spawn'ed `true` and ask.

    Returns (pidfd_info_exit, the reaped child's pidfd, kept in *p*, or None).
    """
    pidfd = _spawned_pidfd(p, "pidfd_info_exit")
    if pidfd is None:
        return False, None
    return _has_exit_info(p, pidfd), pidfd


def _spawned_pidfd(p: _Prober, name: str) -> int | None:
    """posix_spawn `true`, open its pidfd (kept in *p*), reap it; None, noted as *name*, if not."""
    import shutil  # here, not at the top: it pulls in compression modules at every import

    true = shutil.which("true") or "/bin/true"
    try:
        pid = os.posix_spawn(true, [true], {})
    except OSError as exc:
        if exc.errno in TRANSIENT_ERRNOS:
            raise
        p.notes[name] = f"not probed ({exc.strerror})"
        return None
    try:
        pidfd = p.keep(p.attempt(name, syscalls.pidfd_open, pid))
    finally:
        with contextlib.suppress(ChildProcessError):  # a SIGCHLD handler won: fine
            os.waitpid(pid, 0)
    return pidfd


def _probe_scope(p: _Prober, mount: str | None, cgroup: str | None) -> bool:
    """Make a Scope below our cgroup, look for its cgroup.kill, and remove it."""
    if mount is None or cgroup is None:
        p.notes["scope"] = "no cgroup v2 hierarchy"
        return False
    if cgroup.startswith("/.."):
        p.notes["scope"] = "our cgroup is outside our cgroup namespace"
        return False
    from .scope import Scope  # here, not at the top: scope imports pidfd, which imports us

    parent = mount + cgroup.rstrip("/") if cgroup != "/" else mount
    try:
        with Scope(parent, name=f"pyclone3-probe-{os.getpid()}-{threading.get_ident()}") as probe:
            if not os.path.exists(os.path.join(probe.path, "cgroup.kill")):
                p.notes["scope"] = "no cgroup.kill (before Linux 5.14)"
                return False
    except OSError as exc:
        p.refused("scope", exc)
        return False
    except ValueError:
        p.notes["scope"] = "our cgroup is not a cgroup v2 directory"
        return False
    return True


def _cgroup2() -> tuple[str | None, str | None]:
    mount = None
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                if right.split(" ", 1)[0] == "cgroup2":
                    mount = left.split(" ")[4]
                    break
    except OSError:
        pass
    cgroup = None
    try:
        with open("/proc/self/cgroup", encoding="utf-8") as f:
            for line in f:
                if line.startswith("0::"):
                    cgroup = line[3:].rstrip("\n")
                    break
    except OSError:
        pass
    return mount, cgroup
