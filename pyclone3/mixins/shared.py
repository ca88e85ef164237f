"""What the two mixins share: the state a composed ``Popen`` keeps, and the order check.

:class:`PopenState` declares, with their defaults, the attributes that
:class:`~pyclone3.CommandExt` sets as it spawns and :class:`~pyclone3.ChildExt`
reads as it waits and signals; both mixins derive from it, so the state has
one declaration and the defaults cost a plain spawn nothing to store.
"""

from __future__ import annotations

import subprocess

# typing is not imported at run time (see pyclone3/__init__.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from .._child import ChildState
    from .._request import SpawnRequest
    from ..pidfd import PidFd
    from ..scope import Scope

__all__ = ["STDLIB_POPEN", "PidfdUnavailableError", "PopenState", "check_mixin_order"]


class PidfdUnavailableError(RuntimeError):
    """The child has no pidfd: spawned with ``create_pidfd=False`` or on the ``vfork`` path."""


class PopenState:
    """The child's side of a composed ``Popen``: set by CommandExt, read by ChildExt."""

    pid: int
    #: The spawn path that made the child (``None`` until one did).
    spawn_path: str | None = None
    #: The child's pidfd, while the Popen holds one.
    _pidfd: PidFd | None = None
    #: The owner of the child's state, once a pidfd was taken.
    _pyclone3_state: ChildState | None = None
    # The pidfd's owner writes the returncode here as it records the exit
    # (ChildState.returncode_sink), with no call between that write and the
    # status's: whoever finds the exit recorded (or the pidfd closed by its
    # owner) finds the returncode written. Reading it is a C-level lookup,
    # as subprocess's plain attribute is, on every spawn.
    _pyclone3_returncode: int | None = None
    #: kill_tree=True: kill() and terminate() reach the child's whole tree.
    _pyclone3_kill_tree = False
    #: The scope the child was born into (scope=), and whether it was made for it.
    _pyclone3_scope: Scope | None = None
    _pyclone3_owns_scope = False
    #: The spawn request CommandExt.__init__ begins and _execute_child completes.
    _pyclone3_request: SpawnRequest


#: The standard library's Popen, as it was when we were imported: a program
#: may later set ``subprocess.Popen = pyclone3.Popen``, and subclass that.
STDLIB_POPEN = subprocess.Popen


def check_mixin_order(cls: type, mixin: type) -> None:
    """Refuse a class whose MRO puts subprocess.Popen before *mixin*: its methods would be dead."""
    mro = cls.__mro__
    if STDLIB_POPEN in mro and mro.index(STDLIB_POPEN) < mro.index(mixin):
        raise TypeError(
            f"{cls.__qualname__}: {mixin.__name__} must come before subprocess.Popen in the "
            f"bases, as in class {cls.__name__}(CommandExt, ChildExt, subprocess.Popen); "
            f"after it, subprocess's own methods win and {mixin.__name__} does nothing"
        )


def reap_orphans(session: int) -> None:
    """Reap what a kill_tree child's session left behind (reparented to us, the subreaper)."""
    from .. import tree  # here, not at the top: only kill_tree=True needs it

    tree.reap_orphans(session)
