"""``pyclone3 wait``: wait for any processes, named by PID or util-linux's ``PID:inode``."""

from __future__ import annotations

import math
import select
import signal
import sys
import time

from ..pidfd import PidFd
from ..status import WaitStatus
from .common import EXIT_FAILURE, EXIT_TIMEDOUT, exit_status, output

TYPE_CHECKING = False  # typing itself is not imported: the command starts faster
if TYPE_CHECKING:
    from .common import Args


def process_name(handle: PidFd) -> str:
    """How -v names a process: ``PID:inode`` where pidfs gives the inode, else ``PID``."""
    inode = handle.inode
    return f"{handle.pid}:{inode}" if inode is not None else str(handle.pid)


def cmd_wait(args: Args) -> int:
    handles: list[PidFd] = []
    try:
        for pid, inode in args.pids:
            given = f"{pid}:{inode}" if inode is not None else str(pid)
            try:
                handles.append(PidFd.open(pid, inode=inode))
            except ProcessLookupError:
                print(f"pyclone3 wait: no process {given}", file=sys.stderr)
                return EXIT_FAILURE
            except OSError as exc:
                print(f"pyclone3 wait: cannot watch {given}: {exc.strerror}", file=sys.stderr)
                return EXIT_FAILURE
        names = {h: process_name(h) for h in handles} if args.verbose else {}
        deadline = None if args.timeout is None else time.monotonic() + args.timeout
        poller = select.poll()
        by_fd = {h.fileno(): h for h in handles}
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        while by_fd:
            ready = poller.poll(_ms_left(deadline))
            if not ready:
                left = " ".join(str(h.pid) for h in by_fd.values())
                print(
                    f"pyclone3 wait: still running after {args.timeout}s: {left}", file=sys.stderr
                )
                return EXIT_TIMEDOUT
            for fd, _ in ready:
                handle = by_fd.pop(fd)
                poller.unregister(fd)
                if args.verbose:
                    if args.exit_status:
                        # The status is asked for: wait until the kernel has it
                        # (the parent's reap), so that -v can say it too.
                        failed = _await_status(handle, deadline, args.timeout)
                        if failed is not None:
                            return failed
                    output(f"{names[handle]} {_how_it_ended(handle)}")
        if not args.exit_status:
            return 0
        return _last_status(handles[-1], deadline, args.timeout)
    finally:
        for handle in handles:
            handle.close()


def _ms_left(deadline: float | None) -> int | None:
    if deadline is None:
        return None
    return max(math.ceil(min((deadline - time.monotonic()) * 1000, 2**31 - 1)), 0)


def _known_status(handle: PidFd) -> WaitStatus | None:
    """How an exited process ended, if the kernel keeps it now (PIDFD_INFO_EXIT, 6.15+)."""
    try:
        return handle.try_wait()
    except ChildProcessError:  # an older kernel: it exited, nobody can say how
        return None


def _how_it_ended(handle: PidFd) -> str:
    status = _known_status(handle)
    if status is None:
        return "exited"
    return _describe(status)


def _describe(status: WaitStatus) -> str:
    sig = status.signal
    if isinstance(sig, signal.Signals):
        return f"was killed by {sig.name}"
    if sig is not None:
        return f"was killed by signal {sig}"
    return f"exited with status {status.exit_code}"


def _last_status(handle: PidFd, deadline: float | None, timeout: float | None) -> int:
    """--exit-status: the last process's status, as the shell's ``wait`` gives it."""
    failed = _await_status(handle, deadline, timeout)
    if failed is not None:
        return failed
    status = handle.status
    assert status is not None
    code = status.returncode
    assert code is not None  # wait() returns an end, not a stop
    return exit_status(code)


def _await_status(handle: PidFd, deadline: float | None, timeout: float | None) -> int | None:
    """Wait until the kernel keeps *handle*'s status; ``None``, or the exit status of a failure.

    The kernel records it when the process's parent reaps it, so a zombie is
    waited for until then, within the same time limit.
    """
    try:
        left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        handle.wait(left)
    except TimeoutError:
        print(
            f"pyclone3 wait: {handle.pid} has exited but its parent has not reaped it "
            f"after {timeout}s: no status yet",
            file=sys.stderr,
        )
        return EXIT_TIMEDOUT
    except ChildProcessError:
        print(
            f"pyclone3 wait: cannot tell how {handle.pid} ended: this kernel does not keep "
            "the status of a process that is not our child (PIDFD_INFO_EXIT, Linux 6.15+)",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    return None
