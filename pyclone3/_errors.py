"""Exceptions shared by the layers: errno to ``OSError``, and numbers out of C's range."""

from __future__ import annotations

import os

# typing is not imported at run time (see pyclone3/__init__.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
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


class OutOfRangeError(OverflowError, ValueError):
    """A number that does not fit the C type it goes to (a uid, a umask, a process group).

    Both an ``OverflowError``, which ``subprocess`` raises for such a value
    (so ``except OverflowError`` keeps working with ``pyclone3.Popen``), and
    a ``ValueError``, as every other bad argument to pyclone3 is.
    """
