"""Wait for a pyclone3 child's exit from trio (shown in docs/api.rst).

A pidfd turns readable when its process exits, so trio's own readiness
wait is all it takes: no thread, no ``SIGCHLD`` handler.
"""

from __future__ import annotations

import trio

import pyclone3


async def wait_exit(popen: pyclone3.Popen) -> int:
    """The child's return code, once it has exited (reaped here)."""
    await trio.lowlevel.wait_readable(popen.pidfd.fileno())
    return popen.wait()  # reaps at once: the child has exited
