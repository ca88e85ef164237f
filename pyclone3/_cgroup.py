"""The cgroup v2 files a :class:`~pyclone3.Scope` reads and writes, and the checks of its limits.

:class:`ScopeEvents` holds a cgroup's ``cgroup.events`` open: the kernel
flags a change of that file with ``POLLPRI`` (and ``POLLERR``) until it is
read again through the same open file, so one open fd can sit in a poll set
and be re-read on each wake-up. :meth:`pyclone3.Scope.wait` sleeps on one;
:func:`pyclone3.wait_all` and :func:`pyclone3.iter_exits` put one per scope
next to the pidfds they watch.
"""

from __future__ import annotations

import errno
import os
import re
import select
from collections.abc import Callable

from ._waiting import poll_fd, remaining

__all__ = [
    "O_DIR",
    "ScopeEvents",
    "check_cpu_max",
    "check_memory_max",
    "check_name",
    "check_pids_max",
    "is_frozen",
    "is_populated",
    "remove_below",
]

O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_MEMORY = re.compile(r"(\d+)([KMGT]?)", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_CPU_PERIOD_US = 100_000
_LIMIT_MAX = 2**63 - 1
#: What cgroup.events of a removed cgroup reads as: a cgroup can only be
#: removed once empty, and the kernel refuses reads of it then (ENODEV).
_REMOVED = b"populated 0\nfrozen 0\n"


def check_name(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, not {type(name).__name__}")
    if not name or name in (".", "..") or "/" in name or "\0" in name or "\n" in name:
        raise ValueError(f"name must be one path component (no '/', NUL or newline), not {name!r}")
    return name


def check_pids_max(value: object) -> bytes:
    if value == "max":
        return b"max"
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"pids_max must be an int or 'max', not {type(value).__name__}")
    if not 0 <= value <= _LIMIT_MAX:
        raise ValueError(f"pids_max must be 0..{_LIMIT_MAX} or 'max', got {value}")
    return str(value).encode()


def check_memory_max(value: object) -> bytes:
    """Bytes as an int, or a str: ``'max'``, or digits with an optional K, M, G, T (1024s)."""
    if value == "max":
        return b"max"
    if isinstance(value, str):
        match = _MEMORY.fullmatch(value.strip())
        if match is None:
            raise ValueError(
                f"memory_max must be bytes, 'max' or a size like '512M' (K, M, G, T), "
                f"not {value!r}"
            )
        value = int(match[1]) * _UNITS[match[2].upper()]
    elif isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"memory_max must be an int, a size str or 'max', not {type(value).__name__}"
        )
    if not 0 <= value <= _LIMIT_MAX:
        raise ValueError(f"memory_max must be 0..{_LIMIT_MAX} bytes or 'max', got {value}")
    return str(value).encode()


def check_cpu_max(value: object) -> bytes:
    """CPUs as a number (``0.5``: half of one CPU, in 100 ms periods), or ``'max'``."""
    if value == "max":
        return b"max"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"cpu_max must be a number of CPUs or 'max', not {type(value).__name__}")
    quota = value * _CPU_PERIOD_US
    # The kernel takes a quota of at least 1 ms (and refuses NaN's comparison here too).
    if not 1000 <= quota <= _LIMIT_MAX:
        raise ValueError(f"cpu_max must be at least 0.01 CPUs, or 'max', got {value!r}")
    return f"{round(quota)} {_CPU_PERIOD_US}".encode()


def is_populated(events: bytes) -> bool:
    """Whether cgroup.events' contents say ``populated 1``."""
    for line in events.splitlines():
        if line.startswith(b"populated "):
            return line != b"populated 0"
    return True  # no such line: never seen, so never say "empty" on it


def is_frozen(events: bytes) -> bool:
    """Whether cgroup.events' contents say ``frozen 1``."""
    return b"\nfrozen 1" in b"\n" + events


def remove_below(dir_fd: int) -> None:
    """rmdir every cgroup below *dir_fd*, deepest first (a member may have made some)."""
    with os.scandir(dir_fd) as entries:
        below = [entry.name for entry in entries if entry.is_dir(follow_symlinks=False)]
    for name in below:
        sub = os.open(name, O_DIR, dir_fd=dir_fd)
        try:
            remove_below(sub)
        finally:
            os.close(sub)
        os.rmdir(name, dir_fd=dir_fd)


class ScopeEvents:
    """A scope's ``cgroup.events``, held open: poll it for ``POLLPRI``, read it through it.

    What :meth:`pyclone3.Scope.events` returns. The kernel flags the fd
    (:meth:`fileno`) with ``POLLPRI`` (and ``POLLERR``; ``EPOLLPRI`` for
    ``epoll``) once the file changes after it was last read through this
    fd, and until it is read again: put it in a poll set, and on each
    wake-up check :attr:`populated`, which reads it (so the next change
    flags it anew). It is read once on opening, so a change after that
    (the scope turning empty, say) is never missed. Once the cgroup is
    removed (which it can only be when empty) it reads as empty. Owns its
    fd: :meth:`close` it (or use ``with``); it does not keep the scope open.
    """

    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self.read()

    def fileno(self) -> int:
        """The open ``cgroup.events``; ``ValueError`` once closed."""
        if self._fd < 0:
            raise ValueError("I/O operation on closed ScopeEvents")
        return self._fd

    def read(self) -> bytes:
        """The file's contents now; reading clears the ``POLLPRI`` flag."""
        try:
            return os.pread(self.fileno(), 4096, 0)
        except OSError as exc:
            if exc.errno != errno.ENODEV:
                raise
            return _REMOVED  # the cgroup was removed: it was empty

    @property
    def populated(self) -> bool:
        """Whether the scope (or a cgroup below it) has a live process now; reads the file."""
        return is_populated(self.read())

    def wait_for(self, done: Callable[[bytes], bool], when: float | None) -> bool:
        """Sleep in ``poll(2)`` until ``done(contents)``; False at the deadline *when*."""
        while True:
            if done(self.read()):
                return True
            if not poll_fd(self.fileno(), select.POLLPRI, when) and remaining(when) == 0:
                return False

    def close(self) -> None:
        """Close the fd; closing twice does nothing."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> ScopeEvents:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()
