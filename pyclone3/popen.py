"""``subprocess.Popen`` on pidfds: the :class:`CommandExt` and :class:`ChildExt` mixins.

Compose the mixins onto any :class:`subprocess.Popen` subclass, in this
order, before the base::

    class MyPopen(pyclone3.CommandExt, pyclone3.ChildExt, subprocess.Popen): ...

:class:`CommandExt` routes the spawn through pyclone3's core (every child
gets its pidfd at creation) and adds spawn-time keywords; :class:`ChildExt`
makes ``wait``, ``poll``, ``send_signal``, ``terminate`` and ``kill`` act on
the pidfd: no polling loop, no PID race. Everything else is the standard
library's own ``Popen``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import types
from collections.abc import Sequence
from typing import Any

from . import tree
from ._spawn import SPAWN_PATHS, check_pdeathsig, spawn_for_popen
from .clone_options import CloneOptions, IdMap, options_if_any
from .pidfd import PidFd, WaitTimeout
from .status import WaitStatus

__all__ = [
    "ChildExt",
    "CommandExt",
    "PidfdUnavailableError",
    "Popen",
    "call",
    "check_call",
    "check_output",
    "getoutput",
    "getstatusoutput",
    "run",
]


#: Set once waitid(P_PIDFD) answered ENOSYS: Popen then reaps as subprocess does.
_no_waitid_pidfd = False


class PidfdUnavailableError(RuntimeError):
    """The child has no pidfd: spawned with ``create_pidfd=False`` or on the ``vfork`` path."""


class CommandExt:
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

    _pidfd: PidFd | None
    _pidfd_owned: bool
    pid: int
    returncode: int | None
    _child_created: bool

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
        **kwargs: Any,
    ) -> None:
        if spawn_path is not None and spawn_path not in SPAWN_PATHS:
            raise ValueError(f"unknown spawn path {spawn_path!r}; choose from {SPAWN_PATHS}")
        # Every step here runs on each spawn: the common case goes straight through.
        self._pyclone3_pdeathsig = 0 if pdeathsig is None else check_pdeathsig(pdeathsig)
        self._pyclone3_options: CloneOptions | None = options_if_any(
            clone_flags, exit_signal, set_tid, cgroup, uid_map, gid_map, setgroups, setns
        )
        self._pyclone3_kill_tree = bool(kill_tree)
        if kwargs:
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
        self._pyclone3_create_pidfd = bool(create_pidfd)
        self._pyclone3_spawn_path = spawn_path
        self._pidfd = None
        self._pidfd_owned = True
        self.spawn_path: str | None = None
        super().__init__(*args, **kwargs)

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
        if self._pyclone3_kill_tree and not tree.is_child_subreaper():
            tree.set_child_subreaper(True)

        def failed(pid: int, returncode: int | None) -> None:
            self.pid = pid
            self.returncode = returncode if returncode is not None else sys.maxsize
            self._close_pipe_fds(p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite)

        child = spawn_for_popen(  # positional: cheaper than 20 keywords, on every spawn
            args,
            executable,
            executable,
            cwd,
            env,
            (p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite),
            pass_fds,
            close_fds,
            restore_signals,
            start_new_session,
            process_group,
            gid,
            gids,
            uid,
            umask,
            preexec_fn,
            self._pyclone3_create_pidfd,
            self._pyclone3_spawn_path,
            failed,
            self._pyclone3_pdeathsig,
            self._pyclone3_options,
        )
        self.pid = child.pid
        self._pidfd = child.pidfd
        self.spawn_path = child.path
        self._child_created = True
        self._close_pipe_fds(p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite)

    def _close_pipe_fds(
        self, p2cread: int, p2cwrite: int, c2pread: int, c2pwrite: int, errread: int, errwrite: int
    ) -> None:
        """Close the child's ends of the pipes, as subprocess does, without its ExitStack.

        The same fds in the same order (last first), the same flag set after,
        the last error raised with the earlier ones chained; the ExitStack
        was a measurable share of a spawn.
        """
        devnull_fd = self.__dict__.get("_devnull")
        fds = []
        if p2cread != -1 and p2cwrite != -1 and p2cread != devnull_fd:
            fds.append(p2cread)
        if c2pwrite != -1 and c2pread != -1 and c2pwrite != devnull_fd:
            fds.append(c2pwrite)
        if errwrite != -1 and errread != -1 and errwrite != devnull_fd:
            fds.append(errwrite)
        if devnull_fd is not None:
            fds.append(devnull_fd)
        error: OSError | None = None
        for fd in reversed(fds):
            try:
                os.close(fd)
            except OSError as exc:
                if error is not None:
                    exc.__context__ = error
                error = exc
        if error is not None:
            raise error
        self._closed_child_pipe_fds = True

    def _on_error_fd_closer(self) -> _FdCloserOnError:
        """subprocess's guard around ``_get_handles`` (3.11+), as a plain class.

        The same behaviour as its generator-based context manager (on an
        error, close the fds opened so far and ``/dev/null``, then re-raise),
        at a fraction of the cost, on every spawn.
        """
        return _FdCloserOnError(self)


class _FdCloserOnError:
    __slots__ = ("fds", "popen")

    def __init__(self, popen: Any) -> None:
        self.popen = popen
        self.fds: list[int] = []

    def __enter__(self) -> list[int]:
        return self.fds

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            return
        popen = self.popen
        if hasattr(popen, "_devnull"):
            self.fds.append(popen._devnull)
            del popen._devnull
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        # returning None: the exception goes on


class ChildExt:
    """Waiting and signalling through the child's pidfd, for a :class:`subprocess.Popen` subclass.

    ``wait(timeout)`` sleeps in ``poll(2)`` on the pidfd (no 50 ms polling
    loop); ``poll()`` is one ``waitid(P_PIDFD, WNOHANG)``; ``send_signal``,
    ``terminate`` and ``kill`` use ``pidfd_send_signal``, so they can never
    reach a process that reused the child's PID. The ``Popen`` owns the
    reaping: :attr:`returncode` is set once, from the one ``waitid``, and the
    pidfd is closed as soon as the child is reaped (unless taken with
    :meth:`take_pidfd`). Without a pidfd (``create_pidfd=False``, the
    ``vfork`` path, or a ``Popen`` not spawned by :class:`CommandExt`) every
    method falls back to the standard library's.

    If something else reaps the child behind the ``Popen``'s back (a
    ``SIGCHLD`` handler, ``os.waitpid(-1)``), the status still comes back
    right on Linux 6.15+ (``PIDFD_INFO_EXIT``); before, ``returncode`` is 0,
    as the standard library sets it.
    """

    returncode: int | None
    pid: int
    args: Any
    _waitpid_lock: Any
    _pidfd: PidFd | None
    _pidfd_owned: bool
    _pyclone3_kill_tree: bool = False  # CommandExt sets it per child

    @property
    def pidfd(self) -> PidFd:
        """The child's pidfd, borrowed: the ``Popen`` closes it once the child is reaped.

        Raises :class:`PidfdUnavailableError` if the child has none.
        """
        pidfd: PidFd | None = getattr(self, "_pidfd", None)
        if pidfd is None:
            raise PidfdUnavailableError(
                "this child has no pidfd (create_pidfd=False, or spawned on the 'vfork' path)"
            )
        return pidfd

    def take_pidfd(self) -> PidFd:
        """Take ownership of the pidfd (like Rust's ``into_pidfd``); the ``Popen`` won't close it.

        The ``Popen`` goes on reaping through it while it is open; both see
        the same :class:`~pyclone3.WaitStatus`.
        """
        pidfd = self.pidfd
        self._pidfd_owned = False
        return pidfd

    def _pidfd_for_wait(self) -> PidFd | None:
        pidfd: PidFd | None = getattr(self, "_pidfd", None)
        if pidfd is None or pidfd.closed:
            return None
        return pidfd

    def _done_without_waitid(self) -> None:
        """The standard library reaped (no waitid(P_PIDFD) here): close our pidfd."""
        pidfd: PidFd | None = getattr(self, "_pidfd", None)
        if self.returncode is not None and pidfd is not None and self._pidfd_owned:
            pidfd.close()
            self._reap_tree()

    def _pidfd_for_reap(self) -> PidFd | None:
        """The pidfd, unless waitid(P_PIDFD) was found missing (before 5.4, or filtered)."""
        if _no_waitid_pidfd:
            return None
        return self._pidfd_for_wait()

    def _reaped_through_pidfd(self) -> bool:
        """Whether the child was reaped through its pidfd, now closed; if so, record it.

        Another thread may have reaped it and closed the pidfd a moment
        before recording the returncode: the status is in the PidFd by then,
        while the standard library's ``waitpid`` would only find ``ECHILD``.
        """
        pidfd: PidFd | None = getattr(self, "_pidfd", None)
        status = None if pidfd is None else pidfd._status
        if status is None:
            return False
        if self.returncode is None:
            self.returncode = status.returncode
        return True

    def _fall_back_to_waitpid(self) -> None:
        """waitid(P_PIDFD) said ENOSYS: remember it; the standard library reaps from now."""
        global _no_waitid_pidfd
        _no_waitid_pidfd = True

    def _reaped(self, status: WaitStatus | None) -> None:
        """Record the child's end: returncode, the owned pidfd closed, the tree reaped.

        Each step is idempotent, so it may also be called without
        ``_waitpid_lock`` by one who reaped the child elsewhere (through the
        PidFd, say): a ``poll()`` records nothing while another thread holds
        that lock.
        """
        if self.returncode is None:
            self.returncode = status.returncode if status is not None else 0
        pidfd = self._pidfd  # only called on a Popen that has one
        if pidfd is not None and self._pidfd_owned:
            pidfd.close()
        self._reap_tree()

    def _reap_tree(self) -> None:
        if self._pyclone3_kill_tree:
            tree.reap_orphans(self.pid)

    def kill_tree(self, sig: int = signal.SIGKILL, *, timeout: float = 5.0) -> int:
        """Signal the child and its whole tree: :func:`pyclone3.tree.kill_tree`.

        Returns how many processes were signalled (0 once the child is
        reaped). Needs the child's pidfd.
        """
        self._internal_poll()
        if self.returncode is not None:
            self._reap_tree()
            return 0
        try:
            return tree.kill_tree(self.pidfd, sig, timeout=timeout)
        except ValueError:  # the pidfd was closed meanwhile: reaped
            return 0

    def kill(self) -> None:
        """``SIGKILL`` to the child, or to its whole tree with ``kill_tree=True``."""
        if self._pyclone3_kill_tree and self._pidfd_for_wait() is not None:
            self.kill_tree(signal.SIGKILL)
        else:
            self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        """``SIGTERM`` to the child, or to its whole tree with ``kill_tree=True``."""
        if self._pyclone3_kill_tree and self._pidfd_for_wait() is not None:
            self.kill_tree(signal.SIGTERM)
        else:
            self.send_signal(signal.SIGTERM)

    def _internal_poll(
        self, _deadstate: int | None = None, *args: Any, **kwargs: Any
    ) -> int | None:
        code = self.returncode
        if code is not None:
            # Reaped, and the pidfd closed with it: nothing to do. Every
            # Popen's __del__ comes here once.
            done: PidFd | None = self.__dict__.get("_pidfd")
            if done is None or done._closing:
                return code
        pidfd = self._pidfd_for_reap()
        if pidfd is None:
            if self._reaped_through_pidfd():
                return self.returncode
            code = super()._internal_poll(_deadstate, *args, **kwargs)  # type: ignore[misc]
            self._done_without_waitid()
            return code  # type: ignore[no-any-return]
        if self.returncode is None:
            if not self._waitpid_lock.acquire(False):
                return None  # another thread is waiting: we know nothing yet
            try:
                if self.returncode is None:
                    try:
                        status = pidfd.try_wait()
                    except ChildProcessError:  # reaped elsewhere, no PIDFD_INFO_EXIT
                        if _deadstate is not None:
                            self.returncode = _deadstate
                        self._reaped(None)
                    except ValueError:  # the pidfd was closed under us: fall back
                        if self._reaped_through_pidfd():
                            return self.returncode
                        return super()._internal_poll(_deadstate, *args, **kwargs)  # type: ignore[misc, no-any-return]
                    except OSError as exc:
                        if exc.errno != errno.ENOSYS:
                            raise
                        self._fall_back_to_waitpid()
                        return super()._internal_poll(_deadstate, *args, **kwargs)  # type: ignore[misc, no-any-return]
                    else:
                        if status is not None:
                            self._reaped(status)
            finally:
                self._waitpid_lock.release()
        return self.returncode

    def _wait(self, timeout: float | None) -> int | None:
        if timeout is None and self._pidfd_owned and not _no_waitid_pidfd:
            # The common wait(): one blocking waitid, then the pidfd is closed.
            pidfd = self._pidfd
            if pidfd is not None and self.returncode is None:
                reaped = pidfd._reap_and_close()
                if reaped is not None:
                    if self.returncode is None:
                        self.returncode = reaped.returncode
                        if self._pyclone3_kill_tree:
                            self._reap_tree()
                    return self.returncode
        pidfd = self._pidfd_for_reap()
        if pidfd is None:
            if self._reaped_through_pidfd():
                return self.returncode
            code = super()._wait(timeout)  # type: ignore[misc]
            self._done_without_waitid()
            return code  # type: ignore[no-any-return]
        if self.returncode is not None:
            return self.returncode
        closed = False
        try:
            if self._pidfd_owned:  # reap and close in one go
                status: WaitStatus | None = pidfd._wait_and_close(timeout)
                closed = True
            else:
                status = pidfd.wait(timeout)
        except WaitTimeout:
            raise subprocess.TimeoutExpired(self.args, timeout or 0.0) from None
        except ChildProcessError:
            status = None
        except ValueError:
            if not pidfd.closed:
                raise  # a bad timeout
            # Another thread reaped the child and closed the pidfd meanwhile.
            return self._wait(timeout)  # finishes without the pidfd
        except OSError as exc:
            if exc.errno != errno.ENOSYS:
                raise
            self._fall_back_to_waitpid()
            return self._wait(timeout)
        with self._waitpid_lock:
            if not closed:
                self._reaped(status)
            elif self.returncode is None:
                self.returncode = status.returncode if status is not None else 0
                self._reap_tree()
        return self.returncode

    def send_signal(self, sig: int) -> None:
        """Signal the child through its pidfd; nothing happens once it has been reaped.

        Where ``pidfd_send_signal`` is missing (before Linux 5.1, or filtered),
        ``kill(2)`` is used once the pidfd shows the child still runs.
        """
        pidfd = self._pidfd_for_wait()
        if pidfd is None:
            super().send_signal(sig)  # type: ignore[misc]
            return
        self._internal_poll()
        if self.returncode is not None:
            return
        # ProcessLookupError: exited, not yet reaped; ValueError: closed meanwhile.
        with contextlib.suppress(ProcessLookupError, ValueError):
            pidfd._send_signal_or_kill(sig)


class Popen(CommandExt, ChildExt, subprocess.Popen):  # type: ignore[type-arg]
    """:class:`subprocess.Popen`, with the child's pidfd taken at creation.

    A drop-in: same arguments, same behaviour and exceptions, plus
    *create_pidfd* and *spawn_path* (:class:`CommandExt`) and
    :attr:`~ChildExt.pidfd` / :meth:`~ChildExt.take_pidfd`
    (:class:`ChildExt`); waiting and signalling go through the pidfd.
    """


# run, call, check_call, check_output, getoutput and getstatusoutput are the
# standard library's own functions, re-bound so that the Popen they create is
# pyclone3's: same signatures and behaviour on every Python version.
_namespace = dict(vars(subprocess))
_namespace["Popen"] = Popen


def _rebind(func: Any) -> Any:
    clone = types.FunctionType(
        func.__code__, _namespace, func.__name__, func.__defaults__, func.__closure__
    )
    clone.__kwdefaults__ = func.__kwdefaults__
    clone.__doc__ = func.__doc__
    clone.__module__ = __name__
    clone.__qualname__ = func.__qualname__
    _namespace[func.__name__] = clone
    return clone


call = _rebind(subprocess.call)
check_call = _rebind(subprocess.check_call)
check_output = _rebind(subprocess.check_output)
run = _rebind(subprocess.run)
getstatusoutput = _rebind(subprocess.getstatusoutput)
getoutput = _rebind(subprocess.getoutput)
