"""What ``waitid(2)`` reports about a child: :class:`WaitStatus`."""

from __future__ import annotations

import operator
import os
import signal

from .flags import ChildCode

# typing is not imported at run time (see pyclone3/__init__.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import resource
    from typing import Any

__all__ = ["WaitStatus"]

# Plain ints for the hot comparisons (an IntEnum attribute costs a lookup).
_EXITED = int(ChildCode.CLD_EXITED)
_KILLED = int(ChildCode.CLD_KILLED)
_DUMPED = int(ChildCode.CLD_DUMPED)
_TRAPPED = int(ChildCode.CLD_TRAPPED)
_STOPPED = int(ChildCode.CLD_STOPPED)
_CONTINUED = int(ChildCode.CLD_CONTINUED)


class WaitStatus:
    """A process state change as ``waitid(2)`` reports it (immutable).

    ``code`` is the ``si_code`` (:class:`~pyclone3.flags.ChildCode`) and
    ``status`` the ``si_status``: the exit code for ``CLD_EXITED``, the
    signal number otherwise. The properties answer the usual questions
    without decoding by hand; :attr:`returncode` follows
    :attr:`subprocess.Popen.returncode`'s convention (``-N`` for signal N).
    ``rusage`` is the child's resource usage when it was reaped by pyclone3,
    else ``None``.
    """

    __slots__ = ("_code", "_pid", "_raw_rusage", "_returncode", "_rusage", "_status", "_uid")

    def __init__(
        self,
        pid: int,
        code: int,
        status: int,
        *,
        uid: int | None = None,
        rusage: resource.struct_rusage | None = None,
    ) -> None:
        self._pid = pid
        self._code = ChildCode(code)
        self._status = status
        self._returncode = _returncode_of(code, status)
        self._uid = uid
        self._rusage = rusage
        self._raw_rusage: Any = None

    @classmethod
    def from_returncode(cls, pid: int, returncode: int) -> WaitStatus:
        """Build one from a :attr:`subprocess.Popen.returncode` (``-N`` for signal N).

        For an exit learnt without a status, e.g. from another reaper.
        """
        if returncode >= 0:
            return cls(pid, ChildCode.CLD_EXITED, returncode)
        return cls(pid, ChildCode.CLD_KILLED, -returncode)

    @classmethod
    def from_wait_status(
        cls, pid: int, wstatus: int, *, rusage: resource.struct_rusage | None = None
    ) -> WaitStatus:
        """Build one from a ``wait(2)``-style status word (as ``os.waitpid`` returns)."""
        if os.WIFEXITED(wstatus):
            return cls(pid, ChildCode.CLD_EXITED, os.WEXITSTATUS(wstatus), rusage=rusage)
        if os.WIFSIGNALED(wstatus):
            code = ChildCode.CLD_DUMPED if os.WCOREDUMP(wstatus) else ChildCode.CLD_KILLED
            return cls(pid, code, os.WTERMSIG(wstatus), rusage=rusage)
        if os.WIFSTOPPED(wstatus):
            return cls(pid, ChildCode.CLD_STOPPED, os.WSTOPSIG(wstatus), rusage=rusage)
        if os.WIFCONTINUED(wstatus):
            return cls(pid, ChildCode.CLD_CONTINUED, signal.SIGCONT, rusage=rusage)
        raise ValueError(f"not a valid wait status: {wstatus:#x}")

    @property
    def pid(self) -> int:
        """The process's PID, as seen from this process's PID namespace."""
        return self._pid

    @property
    def code(self) -> ChildCode:
        """How the state changed (``si_code``)."""
        code = self._code
        if type(code) is not ChildCode:
            code = self._code = ChildCode(code)
        return code

    @property
    def status(self) -> int:
        """The exit code, or the signal number (``si_status``)."""
        return self._status

    @property
    def uid(self) -> int | None:
        """The real UID of the child, when the kernel reported it (``si_uid``)."""
        return self._uid

    @property
    def rusage(self) -> resource.struct_rusage | None:
        """Resource usage of the reaped child (as :func:`os.wait4` gives), or ``None``."""
        raw = self._raw_rusage
        if self._rusage is None and raw is not None:
            # (array, index): one of a wait_all sweep's; else one waitid's
            # buffer. `raw` keeps the owner alive while the view is read: a
            # field view does not, and another thread may drop _raw_rusage.
            view = raw[0][raw[1]] if type(raw) is tuple else raw.rusage
            self._rusage = _rusage_from_c(view)
            self._raw_rusage = None
        return self._rusage

    @property
    def exited(self) -> bool:
        """The process called ``exit`` (``CLD_EXITED``)."""
        return self._code == _EXITED

    @property
    def signaled(self) -> bool:
        """The process was killed by a signal (``CLD_KILLED`` or ``CLD_DUMPED``)."""
        return self._code in (_KILLED, _DUMPED)

    @property
    def core_dumped(self) -> bool:
        """The process was killed by a signal and dumped core (``CLD_DUMPED``)."""
        return self._code == _DUMPED

    @property
    def stopped(self) -> bool:
        """The process was stopped (``CLD_STOPPED`` or ``CLD_TRAPPED``)."""
        return self._code in (_STOPPED, _TRAPPED)

    @property
    def continued(self) -> bool:
        """The process was resumed by ``SIGCONT`` (``CLD_CONTINUED``)."""
        return self._code == _CONTINUED

    @property
    def exit_code(self) -> int | None:
        """The exit code if the process exited, else ``None``."""
        return self._status if self.exited else None

    @property
    def signal(self) -> signal.Signals | int | None:
        """The signal that killed or stopped the process, else ``None``.

        A :class:`signal.Signals` member, or the bare number for a signal
        that has no name in Python (32 and 33, which glibc keeps for itself,
        can still be sent and kill).
        """
        if self.exited or self.continued:
            return None
        try:
            return signal.Signals(self._status)
        except ValueError:
            return self._status

    if TYPE_CHECKING:

        @property
        def returncode(self) -> int | None: ...

    else:
        # A C-level getter, worked out as the status is made: the child's
        # owner reads it as it records an exit, and with no Python call
        # there no signal handler can run between that read and the store.
        returncode = property(
            operator.attrgetter("_returncode"),
            doc="""The exit code, or ``-signal``, as :attr:`subprocess.Popen.returncode` has it.

        ``None`` for a stop or continue report, which is not a termination.
        """,
        )

    def _key(self) -> tuple[int, int, int]:
        return (self._pid, int(self._code), self._status)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, WaitStatus):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        if self.exited:
            what = f"exit_code={self._status}"
        elif self.continued:
            what = "continued"
        else:
            sig = self.signal
            name = sig.name if isinstance(sig, signal.Signals) else str(self._status)
            what = f"{self.code.name.lower()[4:]} signal={name}"
        return f"<WaitStatus pid={self._pid} {what}>"


#: si_code -> the sign of a returncode; a stop or continue has none.
_RETURNCODE_SIGN = {_EXITED: 1, _KILLED: -1, _DUMPED: -1}


def _returncode_of(code: int, status: int) -> int | None:
    sign = _RETURNCODE_SIGN.get(code)
    return status * sign if sign is not None else None


def status_from_kernel(pid: int, code: int, status: int, uid: int, raw_rusage: Any) -> WaitStatus:
    """A :class:`WaitStatus` straight from a reap's ``siginfo``, for pyclone3's own reap paths.

    It does as little work as possible: right after a wake-up the CPU is
    cold, and every instruction there adds to the exit-detection latency.
    The rusage, in the cffi buffer of the ``waitid`` call (or, from a
    :func:`pyclone3.wait_all` sweep, an ``(array, index)`` pair naming one in
    a shared array), is converted on first access to :attr:`WaitStatus.rusage`.
    """
    self = WaitStatus.__new__(WaitStatus)
    self._pid = pid
    self._code = code  # type: ignore[assignment]  # made a ChildCode on access
    self._status = status
    sign = _RETURNCODE_SIGN.get(code)  # _returncode_of(), inline: this runs right after a wake-up
    self._returncode = status * sign if sign is not None else None
    self._uid = uid
    self._rusage = None
    self._raw_rusage = raw_rusage
    return self


def _rusage_from_c(ru: Any) -> resource.struct_rusage:
    """Convert the kernel's ``struct rusage`` (a cffi object) as :func:`os.wait4` would."""
    import resource  # here, not at the top: few programs ask for a child's rusage

    return resource.struct_rusage(
        (
            ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6,
            ru.ru_stime.tv_sec + ru.ru_stime.tv_usec * 1e-6,
            ru.ru_maxrss,
            ru.ru_ixrss,
            ru.ru_idrss,
            ru.ru_isrss,
            ru.ru_minflt,
            ru.ru_majflt,
            ru.ru_nswap,
            ru.ru_inblock,
            ru.ru_oublock,
            ru.ru_msgsnd,
            ru.ru_msgrcv,
            ru.ru_nsignals,
            ru.ru_nvcsw,
            ru.ru_nivcsw,
        )
    )
