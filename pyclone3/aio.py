"""asyncio on pidfds: :func:`wait_exit` and the ``create_subprocess_*`` functions.

The exit of a child is watched with ``loop.add_reader`` on its pidfd, on the
running loop itself: no child watcher, no ``SIGCHLD`` handler, no helper
thread, whatever watcher or policy the loop has (Python 3.9-3.13). The
``create_subprocess_*`` functions return the standard
:class:`asyncio.subprocess.Process` (streams, ``communicate``, ``wait``,
signals), with its child spawned by pyclone3 and reaped through its pidfd.
Cancelling any await leaves no reader registered and no fd open.
"""

from __future__ import annotations

import asyncio
import asyncio.base_subprocess as base_subprocess
import asyncio.subprocess as aio_subprocess
import select
import sys
import warnings
from typing import Any, Callable

from ._child import ChildState
from ._waiting import poll_fd
from .multi import Child, closed_status, state_of_child
from .pidfd import state_of
from .popen import Popen
from .status import WaitStatus

__all__ = ["create_subprocess_exec", "create_subprocess_shell", "wait_exit"]

_STREAM_LIMIT = 2**16  # asyncio's own default
_RECHECK_MAX_S = 0.05


class _ExitWatch:
    """Call *on_exit(status)* once the process behind *state* has ended.

    Holds the pidfd (it cannot be closed under the reader) until stopped.
    Readiness with nothing to reap yet (a traced child; a non-child whose
    parent has not reaped it) is re-checked with a growing pause, never spun on.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        state: ChildState,
        on_exit: Callable[[WaitStatus], None],
        on_error: Callable[[BaseException], None],
    ) -> None:
        self._loop = loop
        self._state = state
        self._on_exit = on_exit
        self._on_error = on_error
        self._reading = False
        self._timer: asyncio.TimerHandle | None = None
        self._pause = 0.0005
        self._fd = state.hold(self)
        if self._fd < 0:
            raise ValueError("I/O operation on closed PidFd")
        self._stopped = False
        self._check()

    def _ready(self) -> bool:
        return poll_fd(self._fd, select.POLLIN, 0.0) != 0

    def _check(self) -> None:
        self._timer = None
        try:
            status = self._state.try_reap()
        except ValueError:  # closed by its owner meanwhile: with the exit recorded?
            status = self._state.status
            if status is None:
                self.stop()
                self._on_error(ValueError("the PidFd was closed while waiting"))
                return
        except BaseException as exc:  # e.g. ChildProcessError on an old kernel
            self.stop()
            self._on_error(exc)
            return
        if status is not None:
            self.stop()
            self._on_exit(status)
            return
        if self._reading and self._ready():
            # readable, nothing to reap yet: stop reading, re-check later
            self._loop.remove_reader(self._fd)
            self._reading = False
        if self._reading:
            return
        if self._ready():
            self._pause = min(self._pause * 2, _RECHECK_MAX_S)
            self._timer = self._loop.call_later(self._pause, self._check)
        else:
            self._loop.add_reader(self._fd, self._check)
            self._reading = True

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._reading:
            self._loop.remove_reader(self._fd)
            self._reading = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._state.release(self)


async def wait_exit(child: Child) -> WaitStatus:
    """Await the exit of *child* (a :class:`~pyclone3.PidFd` or a pyclone3 ``Popen``).

    Returns its :class:`~pyclone3.WaitStatus` (and sets a ``Popen``'s
    ``returncode``). For a child of this process it is reaped; for another
    process, see :meth:`pyclone3.PidFd.wait`. Cancel it, or wrap it in
    :func:`asyncio.wait_for` / ``asyncio.timeout``, to give up: nothing is
    left registered on the loop.
    """
    state = state_of_child(child)
    status = state.status
    if status is not None:
        return status
    loop = asyncio.get_running_loop()
    future: asyncio.Future[WaitStatus] = loop.create_future()

    def done(result: WaitStatus) -> None:
        if not future.done():
            future.set_result(result)

    def failed(exc: BaseException) -> None:
        if not future.done():
            future.set_exception(exc)

    try:
        watch = _ExitWatch(loop, state, done, failed)
    except ValueError:  # closed since (by its owner, once another thread reaped it?)
        return closed_status(child, state)
    try:
        return await future
    finally:
        watch.stop()


class _PidfdSubprocessTransport(base_subprocess.BaseSubprocessTransport):
    """asyncio's subprocess transport, with the child spawned and reaped by pyclone3."""

    _watch: _ExitWatch | None = None

    def _start(
        self,
        args: Any,
        shell: bool,
        stdin: Any,
        stdout: Any,
        stderr: Any,
        bufsize: int,
        **kwargs: Any,
    ) -> None:
        self._proc = Popen(
            args,
            shell=shell,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            universal_newlines=False,
            bufsize=bufsize,
            **kwargs,
        )
        self._watch = _ExitWatch(
            self._loop, state_of(self._proc.pidfd), self._exited, self._exit_error
        )

    def _exited(self, status: WaitStatus) -> None:
        # Recorded by the pidfd's owner, which closed the Popen's pidfd.
        returncode = status.returncode
        self._process_exited(returncode if returncode is not None else 0)

    def _exit_error(self, exc: BaseException) -> None:
        # Reaped elsewhere on a kernel that keeps no status: as the stdlib does.
        self._process_exited(0)


def _check_options(kwds: dict[str, Any]) -> int:
    """What loop.subprocess_exec/shell refuse, refused the same way."""
    if kwds.pop("universal_newlines", False):
        raise ValueError("universal_newlines must be False")
    if kwds.pop("text", None):
        raise ValueError("text must be False")
    if kwds.pop("encoding", None) is not None:
        raise ValueError("encoding must be None")
    if kwds.pop("errors", None) is not None:
        raise ValueError("errors must be None")
    bufsize = kwds.pop("bufsize", 0)
    if bufsize != 0:
        raise ValueError("bufsize must be 0")
    return int(bufsize)


def _given_loop(kwds: dict[str, Any]) -> asyncio.AbstractEventLoop:
    """The loop to run on: 3.9's asyncio still takes ``loop=``, with a DeprecationWarning."""
    if sys.version_info >= (3, 10) and "loop" in kwds:
        # asyncio refuses it too (a TypeError), but only once its transport is half made.
        raise TypeError("got an unexpected keyword argument 'loop'")
    if "loop" in kwds:
        loop = kwds.pop("loop")
        if loop is not None:
            warnings.warn(
                "The loop argument is deprecated since Python 3.8 "
                "and scheduled for removal in Python 3.10.",
                DeprecationWarning,
                stacklevel=4,
            )
            return loop  # type: ignore[no-any-return]
    return asyncio.get_running_loop()


async def _create(
    args: Any, shell: bool, stdin: Any, stdout: Any, stderr: Any, limit: int, kwds: dict[str, Any]
) -> aio_subprocess.Process:
    loop = _given_loop(kwds)
    bufsize = _check_options(kwds)
    protocol = aio_subprocess.SubprocessStreamProtocol(limit=limit, loop=loop)
    waiter = loop.create_future()
    transport = _PidfdSubprocessTransport(
        loop, protocol, args, shell, stdin, stdout, stderr, bufsize, waiter=waiter, **kwds
    )
    try:
        await waiter
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException:
        transport.close()
        await transport._wait()
        raise
    return aio_subprocess.Process(transport, protocol, loop)


async def create_subprocess_exec(
    program: Any,
    *args: Any,
    stdin: Any = None,
    stdout: Any = None,
    stderr: Any = None,
    limit: int = _STREAM_LIMIT,
    **kwds: Any,
) -> aio_subprocess.Process:
    """:func:`asyncio.create_subprocess_exec`, spawned and reaped by pyclone3 through a pidfd.

    Same arguments and result (an :class:`asyncio.subprocess.Process`);
    ``kwds`` may also carry :class:`pyclone3.Popen`'s ``spawn_path``.
    """
    return await _create([program, *args], False, stdin, stdout, stderr, limit, kwds)


async def create_subprocess_shell(
    cmd: str | bytes,
    stdin: Any = None,
    stdout: Any = None,
    stderr: Any = None,
    limit: int = _STREAM_LIMIT,
    **kwds: Any,
) -> aio_subprocess.Process:
    """:func:`asyncio.create_subprocess_shell`, spawned and reaped by pyclone3 through a pidfd."""
    if not isinstance(cmd, (bytes, str)):
        raise ValueError("cmd must be a string")
    return await _create(cmd, True, stdin, stdout, stderr, limit, kwds)
