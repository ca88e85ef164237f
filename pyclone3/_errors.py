"""errno to exception mapping shared by the syscall layer."""

from __future__ import annotations

import os
from typing import NoReturn


def raise_errno(err: int, filename: str | None = None) -> NoReturn:
    """Raise the ``OSError`` subclass Python picks for *err*.

    ``OSError(errno, strerror)`` returns ``ProcessLookupError`` for ``ESRCH``,
    ``ChildProcessError`` for ``ECHILD``, ``PermissionError`` for ``EPERM``
    and so on, exactly as ``os`` functions do.
    """
    if filename is None:
        raise OSError(err, os.strerror(err))
    raise OSError(err, os.strerror(err), filename)
