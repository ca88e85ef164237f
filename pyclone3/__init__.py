"""pyclone3: race-free process spawning and supervision for Linux.

Processes are named by pidfds, taken at creation with ``clone3(CLONE_PIDFD)``
where the kernel allows, so that no signal or wait can ever reach a process
that merely reused a PID.

Layers, from the bottom:

* ``pyclone3._clone3``: the private cffi module (raw syscalls, no checks);
* :mod:`pyclone3.flags`: the kernel's constants as :mod:`enum` types;
* :mod:`pyclone3.syscalls`: one checked, typed function per syscall;
* :class:`PidFd`, :class:`WaitStatus`, :func:`features`: the objects other
  libraries build on;
* :func:`spawn`, :func:`set_spawn_path` and the C spawn core behind them,
  with the spawn-time Linux options of :mod:`pyclone3.clone_options`
  (namespaces, cgroup, ``set_tid``, ID maps, ``setns``);
* :class:`Popen`, :func:`run` & co. (:mod:`pyclone3.popen`), built from the
  :class:`CommandExt` and :class:`ChildExt` mixins (:mod:`pyclone3.mixins`):
  ``subprocess`` on pidfds;
* :func:`iter_exits`, :func:`wait_all`, :func:`wait_any`: many children on
  one ``epoll`` (:mod:`pyclone3.multi`);
* :mod:`pyclone3.tree`: a child's whole tree, found, killed and reaped;
* :class:`Scope` (:mod:`pyclone3.scope`): a child and all it starts in a
  cgroup of their own, killed and waited for as a whole.
"""

from __future__ import annotations

import sys

# typing is not imported at run time: it alone costs a tenth of the import.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from . import clone_options, flags, landlock, sandbox, scope, seccomp, syscalls, tree
    from ._errors import OutOfRangeError
    from ._executors import SpawnedChild
    from ._features import Features, features
    from ._paths import SPAWN_PATHS, get_spawn_path, set_spawn_path
    from ._request import check_pdeathsig
    from ._spawn import spawn
    from .flags import (
        ChildCode,
        CloneFlag,
        IdType,
        PidfdFlag,
        PidfdInfoFlag,
        PidfdSignalFlag,
        WaitFlag,
    )
    from .mixins import ChildExt, CommandExt, PidfdUnavailableError
    from .multi import WaitAllTimeout, iter_exits, wait_all, wait_any
    from .pidfd import PidFd, WaitTimeout
    from .popen import (
        Popen,
        call,
        check_call,
        check_output,
        getoutput,
        getstatusoutput,
        run,
    )
    from .scope import ControllerNotEnabledError, Scope, ScopeTimeout
    from .status import WaitStatus
    from .syscalls import PidfdInfo

__version__ = "0.1.0.dev0"

__all__ = [
    "SPAWN_PATHS",
    "ChildCode",
    "ChildExt",
    "CloneFlag",
    "CommandExt",
    "ControllerNotEnabledError",
    "Features",
    "IdType",
    "OutOfRangeError",
    "PidFd",
    "PidfdFlag",
    "PidfdInfo",
    "PidfdInfoFlag",
    "PidfdSignalFlag",
    "PidfdUnavailableError",
    "Popen",
    "Scope",
    "ScopeTimeout",
    "SpawnedChild",
    "WaitAllTimeout",
    "WaitFlag",
    "WaitStatus",
    "WaitTimeout",
    "__version__",
    "call",
    "check_call",
    "check_output",
    "check_pdeathsig",
    "clone_options",
    "features",
    "flags",
    "get_spawn_path",
    "getoutput",
    "getstatusoutput",
    "iter_exits",
    "landlock",
    "run",
    "sandbox",
    "scope",
    "seccomp",
    "set_spawn_path",
    "spawn",
    "syscalls",
    "tree",
    "wait_all",
    "wait_any",
]

# Each public name, by the module that defines it: a module is imported when
# one of its names is first used, so that ``import pyclone3`` costs about what
# ``import subprocess`` does and a program pays only for what it uses.
_WHERE = {
    "ChildCode": "flags",
    "CloneFlag": "flags",
    "IdType": "flags",
    "PidfdFlag": "flags",
    "PidfdInfoFlag": "flags",
    "PidfdSignalFlag": "flags",
    "WaitFlag": "flags",
    "OutOfRangeError": "_errors",
    "SpawnedChild": "_executors",
    "Features": "_features",
    "features": "_features",
    "SPAWN_PATHS": "_paths",
    "get_spawn_path": "_paths",
    "set_spawn_path": "_paths",
    "check_pdeathsig": "_request",
    "spawn": "_spawn",
    "WaitAllTimeout": "multi",
    "iter_exits": "multi",
    "wait_all": "multi",
    "wait_any": "multi",
    "PidFd": "pidfd",
    "WaitTimeout": "pidfd",
    "ChildExt": "mixins",
    "CommandExt": "mixins",
    "PidfdUnavailableError": "mixins",
    "Popen": "popen",
    "call": "popen",
    "check_call": "popen",
    "check_output": "popen",
    "getoutput": "popen",
    "getstatusoutput": "popen",
    "run": "popen",
    "ControllerNotEnabledError": "scope",
    "Scope": "scope",
    "ScopeTimeout": "scope",
    "WaitStatus": "status",
    "PidfdInfo": "syscalls",
}
_SUBMODULES = frozenset(
    {
        "aio",
        "cli",
        "clone_options",
        "flags",
        "landlock",
        "mixins",
        "multi",
        "popen",
        "sandbox",
        "scope",
        "seccomp",
        "syscalls",
        "tree",
    }
)


if not TYPE_CHECKING:  # hidden from type checkers: a misspelt name must stay an error there

    def __getattr__(name: str) -> Any:
        module = _WHERE.get(name)
        # __import__, not importlib: importlib is not loaded at start-up on 3.9.
        if module is not None:
            __import__(f"{__name__}.{module}")
            value = getattr(sys.modules[f"{__name__}.{module}"], name)
        elif name in _SUBMODULES:
            __import__(f"{__name__}.{name}")
            value = sys.modules[f"{__name__}.{name}"]
        else:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        globals()[name] = value  # found once: later uses are plain lookups
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *__all__})
