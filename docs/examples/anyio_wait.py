"""Wait for a pyclone3 child's exit from anyio (shown in docs/api.rst).

``anyio.wait_readable`` (anyio 4.7 or later) takes a file descriptor on
either of anyio's backends, asyncio or trio.
"""

from __future__ import annotations

import anyio

import pyclone3


async def wait_exit(popen: pyclone3.Popen) -> int:
    """The child's return code, once it has exited (reaped here)."""
    await anyio.wait_readable(popen.pidfd.fileno())
    return popen.wait()  # reaps at once: the child has exited
