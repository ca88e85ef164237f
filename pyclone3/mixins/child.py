"""The :class:`ChildExt` mixin: a ``subprocess.Popen`` that waits and signals through the pidfd.

``wait``, ``poll``, ``send_signal``, ``terminate`` and ``kill`` act on the
child's pidfd, whose owner (``ChildState``) records the exit once; without a
pidfd every method is the standard library's.
"""

from __future__ import annotations

import contextlib
import errno
import operator
import signal
import subprocess

from .._signals import signal_or_kill
from .._waiting import WaitTimeout, deadline
from ..pidfd import PidFd, state_of
from ..status import WaitStatus
from .shared import PidfdUnavailableError, PopenState, check_mixin_order, reap_orphans

# typing is not imported at run time (see pyclone3/__init__.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .._child import ChildState
    from ..scope import Scope

__all__ = ["ChildExt"]

#: Set once waitid(P_PIDFD) was found missing: Popen then reaps as subprocess does.
_no_waitid_pidfd = False
#: What waitid(P_PIDFD) answers where it is missing: ENOSYS before Linux 5.3
#: (or a filter), EINVAL on 5.3, which has pidfds but not P_PIDFD.
_NO_WAITID_ERRNOS = frozenset({errno.ENOSYS, errno.EINVAL})


def _fall_back_to_waitpid() -> None:
    global _no_waitid_pidfd
    _no_waitid_pidfd = True


class ChildExt(PopenState):
    """Waiting and signalling through the child's pidfd, for a :class:`subprocess.Popen` subclass.

    ``wait(timeout)`` sleeps in ``poll(2)`` on the pidfd (no 50 ms polling
    loop); ``poll()`` is one ``waitid(P_PIDFD, WNOHANG)``; ``send_signal``,
    ``terminate`` and ``kill`` use ``pidfd_send_signal``, so they can never
    reach a process that reused the child's PID. The pidfd owns the child's
    exit: :attr:`~subprocess.Popen.returncode` reads the status it recorded, whoever observed
    the exit (this ``Popen``, ``wait_all``, the asyncio reader, another
    thread), and the pidfd is closed as soon as it is recorded (unless taken
    with :meth:`take_pidfd`). A ``returncode`` set from outside (asyncio's
    child watcher does this) is recorded the same way, closing the pidfd.
    Without a pidfd (``create_pidfd=False``, the ``vfork`` path, or a
    ``Popen`` not spawned by :class:`CommandExt`), or where
    ``waitid(P_PIDFD)`` is missing, every method falls back to the standard
    library's.

    If something else reaps the child behind the ``Popen``'s back (a
    ``SIGCHLD`` handler, ``os.waitpid(-1)``), the status still comes back
    right on Linux 6.15+ (``PIDFD_INFO_EXIT``); before, ``returncode`` is 0,
    as the standard library sets it.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        check_mixin_order(cls, ChildExt)

    args: Any

    def _set_returncode(self, value: int | None) -> None:
        # Not through self.__dict__: subprocess sets returncode first thing
        # in __init__, and asking for __dict__ then would make the object
        # keep a dict for everything it stores after.
        state: ChildState | None = self._pyclone3_state
        if state is not None:
            if value is not None:
                # Learnt elsewhere (subprocess's own waitpid, a child watcher):
                # recorded by the pidfd's owner, which closes an owned pidfd and
                # writes the returncode of the status it keeps (the first).
                state.settle(WaitStatus.from_returncode(self.pid, value))
                if self._pyclone3_returncode is not None:
                    return
            elif state.status is not None:
                return  # a recorded exit is not forgotten
        self._pyclone3_returncode = value

    if TYPE_CHECKING:

        @property
        def returncode(self) -> int | None: ...

        @returncode.setter
        def returncode(self, value: int | None) -> None: ...

    else:
        returncode = property(
            operator.attrgetter("_pyclone3_returncode"),
            _set_returncode,
            doc="The child's exit code (``-N`` for signal N) once known, else ``None``.",
        )

    @property
    def pidfd(self) -> PidFd:
        """The child's pidfd, borrowed (the ``Popen`` closes it once the child is reaped).

        Raises :class:`PidfdUnavailableError` if the child has none.
        """
        pidfd: PidFd | None = self.__dict__.get("_pidfd")
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
        state_of(pidfd).close_on_exit = False
        return pidfd

    def _pidfd_for_reap(self) -> ChildState | None:
        """The pidfd's state, unless there is none, it is closed, or waitid(P_PIDFD) is missing."""
        state: ChildState | None = self._pyclone3_state
        if state is None or state.closed or _no_waitid_pidfd:
            return None
        return state

    def _reap_tree(self) -> None:
        if self.__dict__.get("_pyclone3_kill_tree"):
            reap_orphans(self.pid)

    def kill_tree(self, sig: int = signal.SIGKILL, *, timeout: float = 5.0) -> int:
        """Signal the child and its whole tree: :func:`pyclone3.tree.kill_tree`.

        Returns how many processes were signalled (0 once the child is
        reaped). Needs the child's pidfd.
        """
        self._internal_poll()
        if self.returncode is not None:
            self._reap_tree()
            return 0
        from .. import tree

        try:
            return tree.kill_tree(self.pidfd, sig, timeout=timeout)
        except ValueError:  # the pidfd was closed meanwhile: reaped
            return 0

    @property
    def scope(self) -> Scope | None:
        """The :class:`pyclone3.Scope` the child was born into (``scope=``), else ``None``."""
        return self.__dict__.get("_pyclone3_scope")

    def _signal_scope(self, sig: int) -> bool:
        """*sig* to every member of the child's scope; False if it has none (or it is gone)."""
        made = self.scope
        if made is None or made.closed:
            return False
        try:
            if sig == signal.SIGKILL:
                made.kill()
            else:
                made.send_signal(sig)
        except ValueError:  # closed meanwhile: removed, so nothing was left in it
            pass
        return True

    def kill(self) -> None:
        """``SIGKILL`` to the child, or to its whole tree with ``kill_tree=True``, or to
        its whole scope (``cgroup.kill``) with ``scope=``."""
        if self._signal_scope(signal.SIGKILL):
            # The child too, by its pidfd: it may have been moved out by root.
            self.send_signal(signal.SIGKILL)
        elif self.__dict__.get("_pyclone3_kill_tree") and self._pidfd_for_reap() is not None:
            self.kill_tree(signal.SIGKILL)
        else:
            self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        """``SIGTERM`` to the child, or to its whole tree with ``kill_tree=True``, or to
        every member of its scope with ``scope=``."""
        if self._signal_scope(signal.SIGTERM):
            pass
        elif self.__dict__.get("_pyclone3_kill_tree") and self._pidfd_for_reap() is not None:
            self.kill_tree(signal.SIGTERM)
        else:
            self.send_signal(signal.SIGTERM)

    def _internal_poll(
        self, _deadstate: int | None = None, *args: Any, **kwargs: Any
    ) -> int | None:
        code = self.returncode
        if code is not None:  # every Popen's __del__ comes here once
            owner: ChildState | None = self._pyclone3_state
            if owner is not None and not owner.closed and owner.close_on_exit:
                owner.close()  # a close after the exit that was cut short
            return code
        state = self._pidfd_for_reap()
        if state is None:
            return super()._internal_poll(_deadstate, *args, **kwargs)  # type: ignore[misc, no-any-return]
        try:
            state.try_reap()
        except ChildProcessError:  # reaped elsewhere, and no PIDFD_INFO_EXIT to tell how
            self.returncode = _deadstate if _deadstate is not None else 0
        except ValueError:  # closed meanwhile: by the owner, with the exit recorded?
            if self.returncode is None:
                return super()._internal_poll(_deadstate, *args, **kwargs)  # type: ignore[misc, no-any-return]
        except OSError as exc:
            if exc.errno not in _NO_WAITID_ERRNOS:
                raise
            _fall_back_to_waitpid()
            return super()._internal_poll(_deadstate, *args, **kwargs)  # type: ignore[misc, no-any-return]
        return self.returncode

    def _wait(self, timeout: float | None) -> int | None:
        code = self.returncode
        if code is not None:
            return code
        state: ChildState | None = self._pyclone3_state
        if state is None or state.closed or _no_waitid_pidfd:
            return super()._wait(timeout)  # type: ignore[misc, no-any-return]
        when = None if timeout is None else deadline(timeout)  # a bad timeout raises here
        try:
            if when is None:  # the common wait(): one blocking waitid, the lean way
                status = state.reap_blocking()
                if status is not None:
                    code = self._pyclone3_returncode  # written as the status was recorded
                    return code if code is not None else status.returncode
            state.wait(timeout, when)
        except WaitTimeout:
            raise subprocess.TimeoutExpired(self.args, timeout or 0.0) from None
        except ChildProcessError:  # reaped elsewhere, and no PIDFD_INFO_EXIT to tell how
            self.returncode = 0
        except ValueError:  # closed meanwhile: by the owner, with the exit recorded?
            if self.returncode is None:
                return super()._wait(timeout)  # type: ignore[misc, no-any-return]
        except OSError as exc:
            if exc.errno not in _NO_WAITID_ERRNOS:
                raise
            _fall_back_to_waitpid()
            return super()._wait(timeout)  # type: ignore[misc, no-any-return]
        return self.returncode

    def send_signal(self, sig: int) -> None:
        """Signal the child through its pidfd; nothing happens once it has been reaped.

        Where ``pidfd_send_signal`` is missing (before Linux 5.1) or refused
        (a seccomp filter), ``kill(2)`` is used while the pidfd shows the
        child still running.
        """
        pidfd: PidFd | None = self.__dict__.get("_pidfd")
        if pidfd is None or pidfd.closed:
            super().send_signal(sig)  # type: ignore[misc]
            return
        self._internal_poll()
        if self.returncode is not None:
            return
        # ProcessLookupError: exited, not yet reaped; ValueError: closed meanwhile.
        with contextlib.suppress(ProcessLookupError, ValueError):
            signal_or_kill(pidfd, sig)
