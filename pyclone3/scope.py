"""Process scopes: a child, and everything it ever starts, in a cgroup of their own.

A :class:`Scope` is a fresh cgroup v2 directory. A process born into it
(``spawn(..., scope=s)``, ``Popen(..., scope=True)``, both through
``CLONE_INTO_CGROUP``) cannot leave it, nor can anything it starts: a
double-forked daemon, a ``setsid`` escapee and an orphan re-parented to init
all stay members. So the scope can be killed as a whole (``cgroup.kill``,
Linux 5.14+: the kernel kills every member at once, with no PID read in
between) and waited for as a whole (``cgroup.events`` says ``populated 0``
when the last member is gone, and the kernel wakes a ``poll(2)`` for
``POLLPRI`` on that file when it changes: no sleep loop).

Where to make one: under a cgroup this process may write to. That is its own
cgroup (``/proc/self/cgroup``, below the cgroup v2 mount) when root owns
everything or when it was *delegated* to this user: systemd does that for a
unit with ``Delegate=yes`` (``systemd-run --user -p Delegate=yes ...``), or
an administrator by ``chown``-ing a cgroup directory and its
``cgroup.procs``, ``cgroup.subtree_control`` and ``cgroup.threads`` to the
user. Moving a process into a cgroup also needs write access to the
``cgroup.procs`` of the closest cgroup holding both the mover's cgroup and
the target: a scope should be made below the caller's own cgroup.
:func:`pyclone3.features` reports whether scopes work here
(``Features.scope``); where they do not, :mod:`pyclone3.tree` finds a
child's tree through ``/proc`` instead.

Limits (``pids.max``, ``memory.max``, ``cpu.max``) need their controller
enabled in the parent's ``cgroup.subtree_control``; where it is not,
:class:`ControllerNotEnabledError` says which and why.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import threading

from ._cgroup import (
    O_DIR,
    ScopeEvents,
    check_cpu_max,
    check_memory_max,
    check_name,
    check_pids_max,
    is_frozen,
    is_populated,
    remove_below,
)
from ._clone3 import lib
from ._signals import signal_or_kill
from ._waiting import deadline, remaining
from .pidfd import PidFd

# typing is not imported at run time (see pyclone3/__init__.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    import pyclone3

    from .clone_options import StrOrBytesPath

__all__ = [
    "ControllerNotEnabledError",
    "Scope",
    "ScopeEvents",
    "ScopeTimeout",
    "own_cgroup",
]

#: The file whose write of ``1`` kills every member (5.14+). Where it is
#: missing, :meth:`Scope.kill` freezes the scope and signals each member.
KILL_FILE = "cgroup.kill"
#: The freezer's file (5.2+); where it is missing, members are signalled
#: round by round until none is left that was not signalled.
FREEZE_FILE = "cgroup.freeze"
#: How long a freeze may take before the members are signalled anyway.
FREEZE_TIMEOUT_S = 5.0
#: Signalling rounds without a freezer (each round catches what forked meanwhile).
UNFROZEN_ROUNDS = 50


class ControllerNotEnabledError(OSError):
    """A limit was asked for whose cgroup controller the scope does not have.

    An ``OSError`` with ``errno`` ``ENOENT`` (the controller's file is not
    there), ``filename`` the file that would have been written, and
    ``controller`` the controller's name (``"pids"``, ``"memory"``,
    ``"cpu"``). The message says whether the parent offers the controller at
    all (its ``cgroup.controllers``) and how to enable it.
    """

    controller: str


class ScopeTimeout(TimeoutError):
    """:meth:`Scope.wait` gave up: the scope still had members. It is untouched."""

    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__(f"cgroup {path} still has members after {timeout} seconds")
        self.path = path
        self.timeout = timeout


def own_cgroup() -> str:
    """This process's cgroup v2 directory: the cgroup2 mount + ``/proc/self/cgroup``'s path.

    Read afresh on each call (a process may be moved). Raises ``OSError``
    (``ENOENT``) where no cgroup v2 hierarchy is mounted, or where this
    process's cgroup lies outside its cgroup namespace's view.
    """
    from ._features import features

    mount = features().cgroup2_mount
    if mount is None:
        raise OSError(errno.ENOENT, "no cgroup v2 hierarchy is mounted", "/proc/self/mountinfo")
    with open("/proc/self/cgroup", encoding="utf-8") as f:
        for line in f:
            if line.startswith("0::"):
                path = line[3:].rstrip("\n")
                break
        else:
            raise OSError(errno.ENOENT, "this process is in no cgroup v2", "/proc/self/cgroup")
    if not path.startswith("/") or path.startswith("/.."):
        raise OSError(
            errno.ENOENT,
            f"this process's cgroup ({path}) is outside its cgroup namespace: pass parent=",
            "/proc/self/cgroup",
        )
    return mount + path.rstrip("/") if path != "/" else mount


class Scope:
    """A fresh cgroup for a child and all it starts: kill it, wait for it, limit it.

    ``Scope()`` makes a new cgroup below this process's own
    (:func:`~pyclone3.scope.own_cgroup`); *parent* names another cgroup v2 directory.
    *name* is the new directory's (default: ``pyclone3-<pid>-<random>``).
    *pids_max*, *memory_max*, *cpu_max*: see :meth:`limit`. Bad arguments
    raise ``TypeError``/``ValueError`` before anything is created; a failure
    after the ``mkdir`` removes the directory again. Where the parent is not
    writable, ``PermissionError`` names it; see the module's documentation
    on delegation.

    The scope holds ``O_CLOEXEC`` fds on its directory and its parent's.
    :meth:`close` (also the end of a ``with`` block) kills what is left,
    waits until it is empty and removes the directory. Thread-safe.
    """

    #: The new cgroup's directory name.
    name: str
    #: The parent cgroup's path.
    parent: str
    #: True once :meth:`kill` has been called.
    killed: bool = False

    _dir_fd = -1
    _parent_fd = -1

    def __init__(
        self,
        parent: StrOrBytesPath | None = None,
        *,
        name: str | None = None,
        pids_max: int | str | None = None,
        memory_max: int | str | None = None,
        cpu_max: float | str | None = None,
    ) -> None:
        if parent is not None and not isinstance(parent, (str, bytes, os.PathLike)):
            raise TypeError(f"parent must be a path or None, not {type(parent).__name__}")
        if name is not None:
            name = check_name(name)
        limits = self._checked_limits(pids_max, memory_max, cpu_max)
        self._lock = threading.Lock()
        self.parent = os.fsdecode(parent) if parent is not None else own_cgroup()
        parent_fd = os.open(self.parent, O_DIR)
        try:
            if lib.pyclone3_is_cgroup2(parent_fd) != 1:
                raise ValueError(
                    f"parent {self.parent!r} is not a directory of a cgroup v2 hierarchy"
                )
            self.name = self._mkdir(parent_fd, name)
        except BaseException:
            os.close(parent_fd)
            raise
        self._parent_fd = parent_fd
        try:
            self._dir_fd = os.open(self.name, O_DIR, dir_fd=parent_fd)
            self._write_limits(limits)
        except BaseException:
            self._close_fds(remove=True)
            raise

    def _mkdir(self, parent_fd: int, name: str | None) -> str:
        for _ in range(8):  # a random name taken already: pick another
            chosen = name if name is not None else f"pyclone3-{os.getpid()}-{os.urandom(4).hex()}"
            try:
                os.mkdir(chosen, 0o755, dir_fd=parent_fd)
            except FileExistsError:
                if name is not None:
                    raise FileExistsError(
                        errno.EEXIST, os.strerror(errno.EEXIST), os.path.join(self.parent, name)
                    ) from None
                continue
            except PermissionError as exc:
                raise PermissionError(
                    exc.errno,
                    f"{exc.strerror}: cannot create a cgroup here (not delegated to this "
                    "user: chown it, or ask systemd for Delegate=yes)",
                    self.parent,
                ) from None
            return chosen
        raise FileExistsError(errno.EEXIST, "no free scope name", self.parent)

    # ---- what it is ----------------------------------------------------------------

    @property
    def path(self) -> str:
        """The cgroup's path (its directory's, below the cgroup2 mount)."""
        return os.path.join(self.parent, self.name)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` removed the cgroup (or gave up its fds)."""
        return self._dir_fd < 0

    def fileno(self) -> int:
        """The cgroup directory's fd (``cgroup=`` takes it); the scope keeps it."""
        fd = self._dir_fd
        if fd < 0:
            raise ValueError("I/O operation on a closed Scope")
        return fd

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<pyclone3.Scope {self.path!r} {state}>"

    def _open(self, name: str, flags: int) -> int:
        """openat(the cgroup, *name*) under the lock: the directory fd cannot close meanwhile."""
        with self._lock:
            return os.open(name, flags | os.O_CLOEXEC, dir_fd=self.fileno())

    def _read(self, name: str) -> bytes:
        fd = self._open(name, os.O_RDONLY)
        try:
            return os.read(fd, 1 << 20)
        finally:
            os.close(fd)

    def _write(self, name: str, data: bytes) -> None:
        fd = self._open(name, os.O_WRONLY)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def members(self) -> list[int]:
        """The PIDs of the processes in the scope now (``cgroup.procs``), sorted.

        PIDs, as the kernel lists them: one may be reaped and reused as soon
        as it is read. :meth:`pidfds` gives handles that cannot be.
        """
        return sorted({int(pid) for pid in self._read("cgroup.procs").split()})

    def pidfds(self) -> list[pyclone3.PidFd]:
        """A :class:`~pyclone3.PidFd` for each member; the caller closes them.

        Each pidfd is opened by PID, then the PID is found in the scope
        again: a PID reused in between would name a process born outside
        it, which is not listed, and its pidfd is dropped.
        """
        handles = []
        try:
            for pid in self.members():
                with contextlib.suppress(ProcessLookupError):
                    handles.append(PidFd.open(pid))
            still = set(self.members())
        except BaseException:
            for handle in handles:
                handle.close()
            raise
        kept = []
        for handle in handles:
            if handle.pid in still:
                kept.append(handle)
            else:
                handle.close()
        return kept

    @property
    def populated(self) -> bool:
        """Whether the scope (or a cgroup below it) has a live process now."""
        return is_populated(self._read("cgroup.events"))

    def events(self) -> ScopeEvents:
        """The scope's ``cgroup.events``, open, for a poll set; the caller closes it.

        Its fd turns ready for ``POLLPRI`` when the file changes (the scope
        turning empty, say);
        :attr:`ScopeEvents.populated <pyclone3.scope.ScopeEvents.populated>`
        reads it. How
        :func:`pyclone3.wait_all` and :func:`pyclone3.iter_exits` wait for a
        scope next to pidfds. ``ValueError`` once the scope is closed.
        """
        return ScopeEvents(self._open("cgroup.events", os.O_RDONLY))

    # ---- limits --------------------------------------------------------------------

    @staticmethod
    def _checked_limits(
        pids_max: object, memory_max: object, cpu_max: object
    ) -> list[tuple[str, str, bytes]]:
        limits = []
        if pids_max is not None:
            limits.append(("pids", "pids.max", check_pids_max(pids_max)))
        if memory_max is not None:
            limits.append(("memory", "memory.max", check_memory_max(memory_max)))
        if cpu_max is not None:
            limits.append(("cpu", "cpu.max", check_cpu_max(cpu_max)))
        return limits

    @classmethod
    def check_limits(
        cls,
        *,
        pids_max: int | str | None = None,
        memory_max: int | str | None = None,
        cpu_max: float | str | None = None,
    ) -> None:
        """Raise ``TypeError``/``ValueError`` for a limit :meth:`limit` refuses; no syscall."""
        cls._checked_limits(pids_max, memory_max, cpu_max)

    def limit(
        self,
        *,
        pids_max: int | str | None = None,
        memory_max: int | str | None = None,
        cpu_max: float | str | None = None,
    ) -> None:
        """Write the scope's limits; ``None`` leaves one as it is, ``'max'`` lifts it.

        *pids_max*: how many processes (and threads) the scope may hold.
        *memory_max*: bytes, or a str such as ``'512M'`` (K, M, G, T: powers
        of 1024). *cpu_max*: CPUs' worth of time per 100 ms (``0.5``: half a
        CPU). Every value is checked before any is written. A limit whose
        controller is not enabled raises :class:`ControllerNotEnabledError`.
        """
        self._write_limits(self._checked_limits(pids_max, memory_max, cpu_max))

    def _write_limits(self, limits: list[tuple[str, str, bytes]]) -> None:
        for controller, file, value in limits:
            try:
                self._write(file, value)
            except FileNotFoundError:
                raise self._not_enabled(controller, file) from None

    def _not_enabled(self, controller: str, file: str) -> ControllerNotEnabledError:
        try:
            offered = self._read_parent("cgroup.controllers").decode().split()
        except OSError:
            offered = []
        parent = self.parent
        if controller in offered:
            how = (
                f"it is not enabled in {parent}/cgroup.subtree_control "
                f"(write '+{controller}' there to enable it)"
            )
        else:
            shown = " ".join(offered) or "none"
            how = (
                f"{parent} does not offer it (its cgroup.controllers: {shown}); it may be "
                "bound to a cgroup v1 hierarchy, or not delegated"
            )
        exc = ControllerNotEnabledError(
            errno.ENOENT,
            f"the {controller} controller is not enabled for this scope: {how}",
            os.path.join(self.path, file),
        )
        exc.controller = controller
        return exc

    def _read_parent(self, name: str) -> bytes:
        with self._lock:
            if self._parent_fd < 0:
                raise ValueError("I/O operation on a closed Scope")
            fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=self._parent_fd)
        try:
            return os.read(fd, 1 << 16)
        finally:
            os.close(fd)

    # ---- kill and wait -----------------------------------------------------------

    def kill(self) -> None:
        """``SIGKILL`` every member, at once: ``cgroup.kill`` (5.14+).

        Where ``cgroup.kill`` is missing, the scope is frozen (so nothing
        forks or leaves meanwhile), each member is signalled through a
        pidfd, and the scope is thawed. Returns at once: :meth:`wait` for the
        members to be gone.
        """
        self.killed = True
        try:
            self._write(KILL_FILE, b"1")
        except FileNotFoundError:
            self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        """``SIGTERM`` to every member (:meth:`send_signal`)."""
        self.send_signal(signal.SIGTERM)

    def send_signal(self, sig: int) -> int:
        """Send *sig* to every member through a pidfd each; how many were signalled.

        The scope is frozen meanwhile (``cgroup.freeze``, 5.2+), unless it
        was frozen already: no member can fork a process this would miss.
        A stopped or frozen member gets the signal when it runs again.
        """
        if isinstance(sig, bool) or not isinstance(sig, int):
            raise TypeError(f"sig must be an int, not {type(sig).__name__}")
        if not 0 < sig <= 64:
            raise ValueError(f"sig must be a signal number in 1..64, got {sig}")
        froze = self._freeze()
        try:
            signalled: set[int] = set()
            for _ in range(1 if froze else UNFROZEN_ROUNDS):
                fresh = 0
                for member in self.pidfds():
                    with member:
                        if member.pid in signalled:
                            continue
                        with contextlib.suppress(ProcessLookupError):
                            # kill(2) where a sandbox refuses pidfd_send_signal
                            signal_or_kill(member, sig)
                            signalled.add(member.pid)
                            fresh += 1
                if not fresh:
                    break
        finally:
            if froze:
                with contextlib.suppress(FileNotFoundError):
                    self._write(FREEZE_FILE, b"0")
        return len(signalled)

    def _freeze(self) -> bool:
        """Freeze the scope and wait until it is; False if it was frozen already or cannot be."""
        try:
            if self._read(FREEZE_FILE).strip() == b"1":
                return False
            self._write(FREEZE_FILE, b"1")
        except FileNotFoundError:
            return False
        self._wait_events(is_frozen, deadline(FREEZE_TIMEOUT_S))
        return True

    def _wait_events(self, done: Callable[[bytes], bool], when: float | None) -> bool:
        """Sleep in poll(2) on cgroup.events until ``done(contents)``; False at *when*."""
        with self.events() as events:
            return events.wait_for(done, when)

    def wait(self, timeout: float | None = None) -> None:
        """Return once the scope has no live member; :class:`ScopeTimeout` after *timeout* s.

        Sleeps in ``poll(2)`` on ``cgroup.events``, which the kernel wakes
        when the last member exits: one wake-up, not a loop. A member that
        exited and was not reaped (a zombie) no longer counts.

        To wait for a child of yours in the scope as well, and reap it, in
        the same wait: ``pyclone3.wait_all([child, scope])`` (it sleeps on
        the scope given last, which empties only once the child has exited,
        then reaps the child at once). To wait for several scopes, or for
        whichever of some scopes and children ends first, see
        :func:`pyclone3.wait_all`, :func:`pyclone3.iter_exits` and
        :func:`pyclone3.wait_any`.
        """
        when = deadline(timeout)
        if not self._wait_events(lambda events: not is_populated(events), when):
            raise ScopeTimeout(self.path, timeout)

    # ---- the end -------------------------------------------------------------------

    def release(self, timeout: float | None = 5.0) -> None:
        """Move every member to the parent cgroup and remove the scope, killing nothing.

        For a scope that should not outlive its child while what the child
        left behind should (as ``timeout(1)`` leaves a command's daemons).
        The scope is frozen first, so no member forks a process this would
        miss; a member moved out is thawed as it leaves. Needs write access
        to the parent's ``cgroup.procs``.
        """
        froze = self._freeze()
        try:
            for pid in self.members():
                with contextlib.suppress(ProcessLookupError):
                    self._write_parent("cgroup.procs", str(pid).encode())
        finally:
            if froze:
                with contextlib.suppress(FileNotFoundError):
                    self._write(FREEZE_FILE, b"0")
        self.close(kill=False, timeout=timeout)

    def _write_parent(self, name: str, data: bytes) -> None:
        with self._lock:
            if self._parent_fd < 0:
                raise ValueError("I/O operation on a closed Scope")
            fd = os.open(name, os.O_WRONLY | os.O_CLOEXEC, dir_fd=self._parent_fd)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def discard(self, timeout: float | None = 0.0) -> bool:
        """Remove the cgroup if it is empty (or becomes so within *timeout*); whether it was.

        Kills nothing. Once removed, the scope is closed; else it stays open.
        """
        if self.closed:
            return True
        try:
            self.wait(timeout)
        except ScopeTimeout:
            return False
        return self._close_fds(remove=True)

    def close(self, *, kill: bool = True, timeout: float | None = 5.0) -> None:
        """End the scope: kill what is left (unless *kill* is false), wait, remove the cgroup.

        Raises :class:`ScopeTimeout` if members are still there after
        *timeout* seconds (the scope then stays open). A no-op once closed.
        """
        if self.closed:
            return
        when = deadline(timeout)
        if kill and self.populated:
            self.kill()
        try:
            self.wait(remaining(when))
        except ScopeTimeout:
            raise ScopeTimeout(self.path, timeout) from None
        if not self._close_fds(remove=True):
            raise OSError(errno.EBUSY, "cgroup still in use", self.path)

    def _close_fds(self, *, remove: bool) -> bool:
        """Remove the directory (with any cgroups members made below it) and close the fds.

        Returns False, closing nothing, if the kernel still finds it in use.
        """
        with self._lock:
            if self._parent_fd < 0:
                return True
            if remove:
                try:
                    if self._dir_fd >= 0:
                        remove_below(self._dir_fd)
                    os.rmdir(self.name, dir_fd=self._parent_fd)
                except FileNotFoundError:
                    pass  # removed by someone else
                except OSError as exc:
                    if exc.errno != errno.EBUSY:
                        raise
                    return False
            for attr in ("_dir_fd", "_parent_fd"):
                fd = getattr(self, attr)
                if fd >= 0:
                    setattr(self, attr, -1)
                    os.close(fd)
            return True

    def __enter__(self) -> Scope:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_parent_fd", -1) < 0:
            return
        with contextlib.suppress(Exception):
            if not self.discard(0.0):
                self._close_fds(remove=False)  # still populated: the directory stays
