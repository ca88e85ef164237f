"""The sweep of ``wait_all`` and ``iter_exits``: reap every exited child in one call into C.

Each child's pidfd is held (:meth:`ChildState.hold`) while it is watched, so
that no ``close()`` can free the number under the C code; a reaped child's
status goes to its ``ChildState`` (``_child.py``) through
``ChildState.settle_held``, the same transition every
other observer uses, which also lets go of the fd.

An entry may be ``None`` (a :class:`~pyclone3.Scope` the caller watches by
itself): it is never held, polled or reaped here.
"""

from __future__ import annotations

import os

from ._child import ChildState, sweeps
from ._clone3 import ffi, lib
from .status import WaitStatus, status_from_kernel

__all__ = ["Sweep"]


class Sweep:
    """Children *states* (``None``: not a child), indexed as given: held, watched, ended."""

    __slots__ = ("fds", "held", "info", "pfds", "reaped", "rusage", "states", "statuses", "where")

    def __init__(self, states: list[ChildState | None]) -> None:
        n = len(states)
        self.states = states
        #: The fd held for each child (-1: none, or let go of once it was settled).
        self.held = [-1] * n
        self.statuses: list[WaitStatus | None] = [None] * n
        #: What the C side polls, -1 for none; it sets a reaped child's entry to -1.
        self.fds = ffi.new("int[]", [-1] * n)
        self.pfds = ffi.new("struct pollfd[]", n)  # the C side's scratch space
        self.where = ffi.new("int[]", n)  # and more of it
        self.reaped = ffi.new("int[]", n)
        self.info = ffi.new("struct pyclone3_waitinfo[]", n)
        # Each WaitStatus refers to its entry here until its rusage is read.
        self.rusage = ffi.new("struct pyclone3_rusage[]", n)

    def hold(self, i: int) -> int:
        """Hold child *i*'s pidfd; -1 if it is closed already."""
        self.held[i] = self.state(i).hold((self, i))
        return self.held[i]

    def state(self, i: int) -> ChildState:
        """Child *i*'s state (an entry that is not ``None``)."""
        state = self.states[i]
        assert state is not None
        return state

    def watch(self, i: int, on: bool = True) -> None:
        """Have the next sweeps poll child *i* (held), or stop that."""
        self.fds[i] = self.held[i] if on else -1

    def watching(self, i: int) -> bool:
        return bool(self.fds[i] >= 0)

    def __call__(self) -> list[int]:
        """Reap every watched child that has exited; settle each; return their indices."""
        token = 0
        try:
            with sweeps.lock:
                sweeps.last += 1
                token = sweeps.last  # recorded before it is added: the finally sees it
                sweeps.running.add(token)
            count = lib.pyclone3_reap_exited(
                self.fds,
                len(self.states),
                self.pfds,
                self.where,
                self.reaped,
                self.info,
                self.rusage,
            )
            if count < 0:
                err = ffi.errno
                raise OSError(err, os.strerror(err))
            info, rusage, took = self.info, self.rusage, self.took
            reaped: list[int] = ffi.unpack(self.reaped, count)
            for i in reaped:
                one = info[i]
                took(i, status_from_kernel(one.pid, one.code, one.status, one.uid, (rusage, i)))
            return reaped
        finally:
            if token:
                with sweeps.lock:
                    sweeps.running.discard(token)

    def took(self, i: int, status: WaitStatus) -> None:
        """Child *i* ended with *status* (seen by a sweep, or by the caller): settle it."""
        if self.held[i] >= 0:
            self.held[i] = -1
            self.statuses[i] = self.state(i).settle_held(status, (self, i))
        else:
            self.statuses[i] = self.state(i).settle(status)

    def release_all(self) -> None:
        """Let go of every fd still held."""
        # Every child's token, held or not: a hold whose result never reached
        # self.held (a signal handler raised as it returned) is let go of too.
        for i, state in enumerate(self.states):
            self.held[i] = -1
            if state is not None:
                state.release((self, i))
