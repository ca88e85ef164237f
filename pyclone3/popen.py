"""``subprocess`` on pidfds: :class:`Popen`, and ``run`` and the other helpers built on it.

:class:`Popen` is :class:`subprocess.Popen` with the :class:`CommandExt` and
:class:`ChildExt` mixins (:mod:`pyclone3.mixins`) composed onto it. It is
typed as typeshed types ``subprocess.Popen`` (``Popen[str]`` with ``text``,
``encoding``, ``errors`` or ``universal_newlines``, else ``Popen[bytes]``),
with pyclone3's own keywords added. :func:`run`, :func:`call`,
:func:`check_call`, :func:`check_output`, :func:`getoutput` and
:func:`getstatusoutput` are the standard library's functions creating a
pyclone3 :class:`Popen`, and are typed as the standard library's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types

from .mixins import ChildExt, CommandExt, PidfdUnavailableError

# typing is not imported at run time (see pyclone3/__init__.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
    from typing import IO, Any, AnyStr, Literal, TypedDict, Union, overload

    from typing_extensions import Unpack

    from .clone_options import IdMap
    from .landlock import Landlock
    from .pidfd import PidFd
    from .scope import Scope
    from .seccomp import SeccompFilter

    _Path = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]
    _CMD = Union[_Path, Sequence[_Path]]
    _FILE = Union[None, int, IO[Any]]
    _ENV = Union[Mapping[bytes, _Path], Mapping[str, _Path]]

    if sys.version_info >= (3, 11):

        class _StdOptions(TypedDict, total=False):
            user: str | int | None
            group: str | int | None
            extra_groups: Iterable[str | int] | None
            umask: int
            pipesize: int
            process_group: int | None

    elif sys.version_info >= (3, 10):

        class _StdOptions(TypedDict, total=False):
            user: str | int | None
            group: str | int | None
            extra_groups: Iterable[str | int] | None
            umask: int
            pipesize: int

    else:

        class _StdOptions(TypedDict, total=False):
            user: str | int | None
            group: str | int | None
            extra_groups: Iterable[str | int] | None
            umask: int

    class _Options(_StdOptions, total=False):
        """Keyword-only options past text/encoding/errors: the stdlib's, then ours."""

        create_pidfd: bool
        spawn_path: str | None
        pdeathsig: int | None
        clone_flags: int
        exit_signal: int | None
        set_tid: Sequence[int] | None
        cgroup: _Path | int | None
        uid_map: IdMap | None
        gid_map: IdMap | None
        setgroups: bool | None
        setns: tuple[PidFd | int, int] | None
        kill_tree: bool
        rlimits: Mapping[int | str, int | tuple[int, int]] | None
        nice: int | None
        oom_score_adj: int | None
        cpu_affinity: Iterable[int] | None
        capabilities: Iterable[int | str] | None
        no_new_privs: bool
        seccomp: bytes | SeccompFilter | None
        landlock: Landlock | None
        ambient_capabilities: Iterable[int | str] | None
        scope: Scope | bool | None

else:
    # Popen is generic for type checkers (Popen[bytes], Popen[str]); at run
    # time subprocess.Popen[...] takes any parameter, so typing's AnyStr is
    # not needed: only named.
    AnyStr = "AnyStr"


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


class Popen(CommandExt, ChildExt, subprocess.Popen[AnyStr]):
    """:class:`subprocess.Popen`, with the child's pidfd taken at creation.

    A drop-in: same arguments, same behaviour and exceptions, plus the
    keywords of :class:`CommandExt` (*create_pidfd*, *spawn_path*,
    *pdeathsig*, *kill_tree*, *scope*, the Linux options of
    :mod:`pyclone3.clone_options` and the sandbox of :mod:`pyclone3.sandbox`)
    and :attr:`~ChildExt.pidfd` / :meth:`~ChildExt.take_pidfd`
    (:class:`ChildExt`); waiting and
    signalling go through the pidfd.
    """

    if TYPE_CHECKING:
        # The overloads typeshed gives subprocess.Popen, which decide
        # Popen[str] or Popen[bytes], with pyclone3's keywords in _Options.
        @overload
        def __init__(
            self: Popen[str],
            args: _CMD,
            bufsize: int = -1,
            executable: _Path | None = None,
            stdin: _FILE = None,
            stdout: _FILE = None,
            stderr: _FILE = None,
            preexec_fn: Callable[[], Any] | None = None,
            close_fds: bool = True,
            shell: bool = False,
            cwd: _Path | None = None,
            env: _ENV | None = None,
            universal_newlines: bool | None = None,
            startupinfo: Any = None,
            creationflags: int = 0,
            restore_signals: bool = True,
            start_new_session: bool = False,
            pass_fds: Collection[int] = (),
            *,
            text: bool | None = None,
            encoding: str,
            errors: str | None = None,
            **kwargs: Unpack[_Options],
        ) -> None: ...
        @overload
        def __init__(
            self: Popen[str],
            args: _CMD,
            bufsize: int = -1,
            executable: _Path | None = None,
            stdin: _FILE = None,
            stdout: _FILE = None,
            stderr: _FILE = None,
            preexec_fn: Callable[[], Any] | None = None,
            close_fds: bool = True,
            shell: bool = False,
            cwd: _Path | None = None,
            env: _ENV | None = None,
            universal_newlines: bool | None = None,
            startupinfo: Any = None,
            creationflags: int = 0,
            restore_signals: bool = True,
            start_new_session: bool = False,
            pass_fds: Collection[int] = (),
            *,
            text: bool | None = None,
            encoding: str | None = None,
            errors: str,
            **kwargs: Unpack[_Options],
        ) -> None: ...
        @overload
        def __init__(
            self: Popen[str],
            args: _CMD,
            bufsize: int = -1,
            executable: _Path | None = None,
            stdin: _FILE = None,
            stdout: _FILE = None,
            stderr: _FILE = None,
            preexec_fn: Callable[[], Any] | None = None,
            close_fds: bool = True,
            shell: bool = False,
            cwd: _Path | None = None,
            env: _ENV | None = None,
            *,
            universal_newlines: Literal[True],
            startupinfo: Any = None,
            creationflags: int = 0,
            restore_signals: bool = True,
            start_new_session: bool = False,
            pass_fds: Collection[int] = (),
            text: bool | None = None,
            encoding: str | None = None,
            errors: str | None = None,
            **kwargs: Unpack[_Options],
        ) -> None: ...
        @overload
        def __init__(
            self: Popen[str],
            args: _CMD,
            bufsize: int = -1,
            executable: _Path | None = None,
            stdin: _FILE = None,
            stdout: _FILE = None,
            stderr: _FILE = None,
            preexec_fn: Callable[[], Any] | None = None,
            close_fds: bool = True,
            shell: bool = False,
            cwd: _Path | None = None,
            env: _ENV | None = None,
            universal_newlines: bool | None = None,
            startupinfo: Any = None,
            creationflags: int = 0,
            restore_signals: bool = True,
            start_new_session: bool = False,
            pass_fds: Collection[int] = (),
            *,
            text: Literal[True],
            encoding: str | None = None,
            errors: str | None = None,
            **kwargs: Unpack[_Options],
        ) -> None: ...
        @overload
        def __init__(
            self: Popen[bytes],
            args: _CMD,
            bufsize: int = -1,
            executable: _Path | None = None,
            stdin: _FILE = None,
            stdout: _FILE = None,
            stderr: _FILE = None,
            preexec_fn: Callable[[], Any] | None = None,
            close_fds: bool = True,
            shell: bool = False,
            cwd: _Path | None = None,
            env: _ENV | None = None,
            universal_newlines: Literal[False] | None = None,
            startupinfo: Any = None,
            creationflags: int = 0,
            restore_signals: bool = True,
            start_new_session: bool = False,
            pass_fds: Collection[int] = (),
            *,
            text: Literal[False] | None = None,
            encoding: None = None,
            errors: None = None,
            **kwargs: Unpack[_Options],
        ) -> None: ...
        @overload
        def __init__(
            self: Popen[Any],
            args: _CMD,
            bufsize: int = -1,
            executable: _Path | None = None,
            stdin: _FILE = None,
            stdout: _FILE = None,
            stderr: _FILE = None,
            preexec_fn: Callable[[], Any] | None = None,
            close_fds: bool = True,
            shell: bool = False,
            cwd: _Path | None = None,
            env: _ENV | None = None,
            universal_newlines: bool | None = None,
            startupinfo: Any = None,
            creationflags: int = 0,
            restore_signals: bool = True,
            start_new_session: bool = False,
            pass_fds: Collection[int] = (),
            *,
            text: bool | None = None,
            encoding: str | None = None,
            errors: str | None = None,
            **kwargs: Unpack[_Options],
        ) -> None: ...
        def __init__(self, *args: Any, **kwargs: Any) -> None: ...


if TYPE_CHECKING:
    # The same functions as the standard library's (see below), typed by typeshed.
    from subprocess import call, check_call, check_output, getoutput, getstatusoutput, run
else:
    # run, call, check_call, check_output, getoutput and getstatusoutput are
    # the standard library's own functions, re-bound so that the Popen they
    # create is pyclone3's: same signatures and behaviour on every version.
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
