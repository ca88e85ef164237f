"""Signalling through a pidfd, with ``kill(2)`` where ``pidfd_send_signal`` cannot be used."""

from __future__ import annotations

import errno
import os

from .pidfd import PidFd

__all__ = ["signal_or_kill"]

#: pidfd_send_signal missing (before Linux 5.1) or refused by a seccomp
#: filter that does not know it (a default-deny sandbox answers EPERM).
_FALLBACK_ERRNOS = frozenset({errno.ENOSYS, errno.EPERM})


def signal_or_kill(pidfd: PidFd, sig: int) -> None:
    """Send *sig* through *pidfd*; where that syscall is missing or refused, use ``kill(2)``.

    The fallback acts only while the pidfd shows the process still running:
    a running process is unreaped, so its PID cannot name anyone else (short
    of an exit and a reap in between, the window ``subprocess`` always has).
    A genuine lack of permission still raises ``PermissionError``, from
    ``kill(2)`` then. Raises ``ProcessLookupError`` once the process has
    exited, ``ValueError`` if the ``PidFd`` is closed. For callers that mirror
    ``subprocess`` (``Popen``, ``kill_tree``); :meth:`PidFd.send_signal`
    itself never falls back.
    """
    try:
        pidfd.send_signal(sig)
    except OSError as exc:
        if exc.errno not in _FALLBACK_ERRNOS or pidfd.pid <= 0:
            raise
        if not pidfd.is_alive():
            raise ProcessLookupError(errno.ESRCH, f"process {pidfd.pid} has exited") from None
        os.kill(pidfd.pid, sig)
