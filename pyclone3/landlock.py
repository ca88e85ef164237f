"""Landlock for a child: the paths it may read and write, and the TCP ports it may use.

A :class:`Landlock` is given to :func:`pyclone3.spawn` or
:class:`pyclone3.Popen` as ``landlock=``. For each spawn the parent builds
the ruleset (``landlock_create_ruleset``, one ``landlock_add_rule`` per path
opened ``O_PATH | O_CLOEXEC`` here, so that a missing path fails before the
spawn) and the child enforces it on itself with ``landlock_restrict_self``
(see :mod:`pyclone3.sandbox` for when). The restriction holds for the
program and everything it starts; the kernel takes it only from a process
with no_new_privs (``no_new_privs=True``) or ``CAP_SYS_ADMIN``.

*ro* paths (and everything beneath them) may be read and executed; *rw*
paths may also be written, created in and removed from; any other path may
not be opened at all. With ``ro=None`` reading is not restricted: only the
writing rights are handled; with ``rw=None`` too, the filesystem is not
restricted at all (a ruleset of ports only). *bind_tcp* and *connect_tcp*
(Landlock ABI 4, Linux 6.7) list the TCP ports the child may ``bind`` and
``connect`` to: any other port fails with ``EACCES``; ``None`` leaves that
unrestricted. Only TCP is covered: UDP and other sockets are not.

Landlock grew in ABI versions (:func:`abi_version`, also
``features().landlock_abi``): each handles more rights. A ruleset handles
every right this kernel's ABI knows. In the default best-effort mode, what
the kernel lacks is left out: without Landlock at all (ABI 0) the child is
not restricted, and without ABI 4 its ports are not. With ``strict=True``
the spawn raises ``OSError(ENOTSUP)`` instead, before any child is made.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from collections.abc import Iterable

from ._clone3 import ffi, lib
from ._frozen import Frozen

# typing is not imported at run time (see pyclone3/__init__.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from .clone_options import StrOrBytesPath

__all__ = ["Landlock", "abi_version"]

_CREATE_RULESET_VERSION = 1 << 0
_RULE_PATH_BENEATH = 1
_RULE_NET_PORT = 2

# LANDLOCK_ACCESS_FS_*, and the ABI that brought each.
_EXECUTE = 1 << 0
_WRITE_FILE = 1 << 1
_READ_FILE = 1 << 2
_READ_DIR = 1 << 3
_REMOVE_DIR = 1 << 4
_REMOVE_FILE = 1 << 5
_MAKE_ALL = sum(1 << bit for bit in range(6, 13))  # CHAR DIR REG SOCK FIFO BLOCK SYM
_REFER = 1 << 13  # ABI 2
_TRUNCATE = 1 << 14  # ABI 3
_IOCTL_DEV = 1 << 15  # ABI 5
_FS_BY_ABI = {
    1: _EXECUTE | _WRITE_FILE | _READ_FILE | _READ_DIR | _REMOVE_DIR | _REMOVE_FILE | _MAKE_ALL,
    2: _REFER,
    3: _TRUNCATE,
    5: _IOCTL_DEV,
}
_READ = _EXECUTE | _READ_FILE | _READ_DIR
#: The rights that make sense on a file, not a directory (the kernel refuses others).
_FILE_RIGHTS = _EXECUTE | _WRITE_FILE | _READ_FILE | _TRUNCATE | _IOCTL_DEV
_BIND_TCP = 1 << 0  # LANDLOCK_ACCESS_NET_*, ABI 4
_CONNECT_TCP = 1 << 1
_NET_ABI = 4
_RULESET_ATTR_V1 = 8  # handled_access_fs only
_RULESET_ATTR_V4 = 16  # + handled_access_net


def abi_version() -> int:
    """This kernel's Landlock ABI version; 0 if it has none, or it is disabled or filtered."""
    version = lib.sys_landlock_create_ruleset(ffi.NULL, 0, _CREATE_RULESET_VERSION)
    return max(int(version), 0)


def _fs_rights(abi: int) -> int:
    return sum(bits for since, bits in _FS_BY_ABI.items() if since <= abi)


def _paths(value: Iterable[StrOrBytesPath] | None, what: str) -> tuple[bytes, ...] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes, os.PathLike)):
        raise TypeError(f"{what} must be an iterable of paths, not a single path")
    out = tuple(os.fsencode(p) for p in value)
    for path in out:
        if not path or b"\0" in path:
            raise ValueError(f"{what}: bad path {path!r}")
    return out


def _ports(value: Iterable[int] | None, what: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    ports = []
    for port in value:
        if isinstance(port, bool) or not isinstance(port, int):
            raise TypeError(f"{what} entries must be ints, not {type(port).__name__}")
        if not 0 <= port <= 65535:
            raise ValueError(f"{what}: port {port} is not in 0..65535")
        ports.append(int(port))
    return tuple(sorted(set(ports)))


class Landlock(Frozen):
    """A Landlock ruleset to give a child: checked here, built anew for each spawn. Immutable."""

    __match_args__ = ("ro", "rw", "bind_tcp", "connect_tcp", "strict")

    ro: tuple[bytes, ...] | None
    rw: tuple[bytes, ...] | None
    bind_tcp: tuple[int, ...] | None
    connect_tcp: tuple[int, ...] | None
    strict: bool

    def __init__(
        self,
        ro: Iterable[StrOrBytesPath] | None = (),
        rw: Iterable[StrOrBytesPath] | None = (),
        *,
        bind_tcp: Iterable[int] | None = None,
        connect_tcp: Iterable[int] | None = None,
        strict: bool = False,
    ) -> None:
        if not isinstance(strict, bool):
            raise TypeError(f"strict must be a bool, not {type(strict).__name__}")
        if rw is None and ro is not None:
            raise ValueError("rw=None (writing unrestricted) needs ro=None: ro restricts all")
        bind, connect = _ports(bind_tcp, "bind_tcp"), _ports(connect_tcp, "connect_tcp")
        if rw is None and bind is None and connect is None:
            raise ValueError("this Landlock restricts nothing: give rw, ro or TCP ports")
        set_ = object.__setattr__
        set_(self, "ro", _paths(ro, "ro"))
        set_(self, "rw", _paths(rw, "rw"))
        set_(self, "bind_tcp", bind)
        set_(self, "connect_tcp", connect)
        set_(self, "strict", strict)

    def ruleset_fd(self) -> int:
        """Build the ruleset: a new ``O_CLOEXEC`` fd the caller closes, or -1 (no Landlock here).

        Raises ``FileNotFoundError`` & co. for a path that cannot be opened,
        and ``OSError(ENOTSUP)`` in strict mode where the kernel lacks what
        this ruleset asks for.
        """
        abi = abi_version()
        wants_net = self.bind_tcp is not None or self.connect_tcp is not None
        if abi < 1 or (wants_net and abi < _NET_ABI):
            if self.strict:
                need = _NET_ABI if abi >= 1 else 1
                raise OSError(
                    errno.ENOTSUP,
                    f"Landlock ABI {need} is needed; this kernel has {abi or 'none'} (strict)",
                )
            if abi < 1:
                return -1
        every = _fs_rights(abi)
        handled = every if self.ro is not None else every & ~_READ
        if self.rw is None:  # ports only
            handled = 0
        net = 0
        if abi >= _NET_ABI:
            net = (_BIND_TCP if self.bind_tcp is not None else 0) | (
                _CONNECT_TCP if self.connect_tcp is not None else 0
            )
        if not handled and not net:  # ports only, and no ABI 4: nothing to restrict
            return -1
        # The attribute's size tells the kernel which fields there are.
        attr = struct.pack("=QQ", handled, net) if net else struct.pack("=Q", handled)
        fd = lib.sys_landlock_create_ruleset(attr, len(attr), 0)
        if fd < 0:
            err = ffi.errno
            raise OSError(err, f"landlock_create_ruleset: {os.strerror(err)}")
        try:
            for paths, rights in ((self.ro or (), _READ), (self.rw or (), every)):
                for path in paths:
                    self._add_path(fd, path, rights & handled)
            if net:
                for ports, right in ((self.bind_tcp, _BIND_TCP), (self.connect_tcp, _CONNECT_TCP)):
                    for port in ports or ():
                        _add_rule(fd, _RULE_NET_PORT, struct.pack("=QQ", right, port), None)
        except BaseException:
            os.close(fd)
            raise
        return int(fd)

    @staticmethod
    def _add_path(fd: int, path: bytes, rights: int) -> None:
        if not rights:
            return
        target = os.open(os.fsdecode(path), os.O_PATH | os.O_CLOEXEC)
        try:
            if not stat.S_ISDIR(os.fstat(target).st_mode):
                rights &= _FILE_RIGHTS
            # struct landlock_path_beneath_attr is packed: u64 access, s32 fd.
            _add_rule(fd, _RULE_PATH_BENEATH, struct.pack("=Qi", rights, target), path)
        finally:
            os.close(target)


def _add_rule(fd: int, rule_type: int, attr: bytes, path: bytes | None) -> None:
    if lib.sys_landlock_add_rule(fd, rule_type, attr, 0) < 0:
        err = ffi.errno
        raise OSError(err, f"landlock_add_rule: {os.strerror(err)}", path)
