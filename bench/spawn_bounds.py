"""Lower bounds for a spawn + wait made from Python: ``bench_spawn.py --bounds``.

Two reference contenders that use pyclone3's internal C core directly (not
an API; they skip every check and every path but clone3), to show how much
of ``spawn()``'s cost any Python design must pay:

* ``no owner``: the spawn struct prepared once, then per round only the C
  spawn, one ``waitid`` into a wait buffer and ``close``: the least Python
  a spawn + wait can run.
* ``bare owner``: per round what the least spawn that owns its child does:
  a fresh struct from the defaults, argv encoded and packed, the C spawn,
  the child's :class:`~pyclone3._child.ChildState`, its blocking reap and
  the pidfd's close. No request, plan, path choice, ``PidFd`` or ``with``.
* ``C owner``: what the owner could cost written against the CPython C API
  (``bench/c/owner_bound.c``, built here with gcc for this interpreter): one
  call encodes and packs argv and spawns, and returns an object whose
  ``with``, ``wait`` (one ``waitid``, the status made by pyclone3's Python
  ``status_from_kernel``) and close are C. It skips all the owner's rarer
  duties (foreign processes, users across threads, callbacks, reaping a
  child dropped unwaited), so it is a bound, not a design.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sysconfig
from collections.abc import Callable

from pyclone3 import syscalls
from pyclone3._child import ChildState
from pyclone3._clone3 import ffi, lib
from pyclone3._executors import _STACK_SIZE, buffers
from pyclone3._plan import _TEMPLATE, Plan, _room
from pyclone3._request import SpawnRequest
from pyclone3.status import status_from_kernel

_P_PIDFD = lib.P_PIDFD
_WEXITED_WALL = 4 | 0x40000000  # WEXITED | __WALL
_prepared: dict[tuple[str, ...], tuple[Plan, object]] = {}
_c_owner_keep: list[object] = []  # what the C owner's module points into


def _plan_for(argv: list[str]) -> object:
    found = _prepared.get(tuple(argv))
    if found is None:
        request = object.__new__(SpawnRequest)
        request.args = list(argv)
        request.executable = request.display_executable = argv[0]
        plan = Plan(request)
        plan.s.share_files = 1
        _prepared[tuple(argv)] = found = (plan, plan.s)  # the plan keeps the arrays alive
    return found[1]


def no_owner(argv: list[str]) -> None:
    s = _plan_for(argv)
    cell = buffers.pidfd
    cell[0] = -1
    pid = lib.pyclone3_spawn(s, lib.SPAWN_CLONE3, 1, buffers.stack, _STACK_SIZE, cell)
    if pid < 0:
        raise OSError(ffi.errno, os.strerror(ffi.errno))
    syscalls.waitid_with(_P_PIDFD, cell[0], _WEXITED_WALL, syscalls.new_wait_buffer())
    os.close(cell[0])


def bare_owner(argv: list[str]) -> None:
    s = ffi.new("struct pyclone3_spawn *", _TEMPLATE)
    encoded = [a.encode() for a in argv]
    blob = b"\0".join([*encoded, encoded[0]]) + b"\0"
    arrays = _room(len(encoded) + 1, blob)
    if lib.pyclone3_set_argv(s, arrays, blob, len(blob), len(encoded), 1) < 0:
        raise ValueError("embedded null byte")
    s.share_files = 1
    cell = buffers.pidfd
    cell[0] = -1
    pid = lib.pyclone3_spawn(s, lib.SPAWN_CLONE3, 1, buffers.stack, _STACK_SIZE, cell)
    if pid < 0:
        raise OSError(ffi.errno, os.strerror(ffi.errno))
    state = ChildState(cell[0], pid)
    cell[0] = -1
    state.reap_blocking()
    state.close()


def _c_owner(tmp: str) -> Callable[[list[str]], None]:
    here = os.path.dirname(os.path.abspath(__file__))
    ext = os.path.join(tmp, "owner_bound" + sysconfig.get_config_var("EXT_SUFFIX"))
    subprocess.run(
        [
            "gcc",
            "-O2",
            "-shared",
            "-fPIC",
            "-I" + sysconfig.get_paths()["include"],
            "-o",
            ext,
            os.path.join(here, "c", "owner_bound.c"),
        ],
        check=True,
    )
    spec = importlib.util.spec_from_file_location("owner_bound", ext)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    template = ffi.new("struct pyclone3_spawn *", _TEMPLATE)
    template.share_files = 1
    # A child stack of its own: pyclone3's per-thread stack may be in use by
    # a spawn of this thread's (the GIL released) and is freed with it.
    stack = ffi.new("char[]", _STACK_SIZE)
    _c_owner_keep.extend((template, stack))

    def address(obj: object) -> int:
        return int(ffi.cast("uintptr_t", obj))

    def status(buf_address: int) -> object:
        buf = ffi.cast("struct pyclone3_waitbuf *", buf_address)
        return status_from_kernel(buf.pid, buf.code, buf.status, buf.uid, None)

    module.init(
        address(ffi.addressof(lib, "pyclone3_spawn")),
        address(ffi.addressof(lib, "pyclone3_set_argv")),
        address(ffi.addressof(lib, "sys_waitid_into")),
        address(template),
        ffi.sizeof("struct pyclone3_spawn"),
        address(stack),
        _STACK_SIZE,
        lib.SPAWN_CLONE3,
        status,
    )
    spawn = module.spawn

    def c_owner(argv: list[str]) -> None:
        with spawn(argv) as child:
            child.wait()

    return c_owner


def load(tmp: str) -> dict[str, Callable[[list[str]], None]]:
    """The bounds by name; *tmp* is a directory to build the C owner in."""
    return {"no owner": no_owner, "bare owner": bare_owner, "C owner": _c_owner(tmp)}
