"""One spawn as asked: the options ``Popen`` and :func:`pyclone3.spawn` hand to the spawn core.

A :class:`SpawnRequest` carries every option of one spawn from the caller
down to the C call (``_plan.Plan`` turns it into the struct the child
reads). Its defaults are class attributes, so a request costs only the
options its caller sets.

The converters below check the numeric options the way ``subprocess``
does, so that ``pyclone3.Popen`` raises what ``subprocess.Popen`` raises:
``OverflowError`` for a value C cannot hold (:class:`OutOfRangeError`, a
``ValueError`` too), ``ValueError`` for one it refuses, and a negative
``umask`` or ``process_group`` meaning "leave it".
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Mapping, Sequence

from ._errors import OutOfRangeError
from .clone_options import CloneOptions

# typing is not imported at run time (see pyclone3/__init__.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .clone_options import StrOrBytesPath
    from .sandbox import SandboxOptions

#: No fds given: (p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite).
NO_FDS = (-1, -1, -1, -1, -1, -1)

_INT_MIN = -(2**31)
_INT_MAX = 2**31 - 1
_ID_UNCHANGED = 2**32 - 1  # (uid_t)-1: setreuid and setregid leave the id alone
_NGROUPS_MAX = 65536  # the kernel's limit on supplementary groups


class SpawnRequest:
    """Every option of one spawn. Set what differs from the defaults below."""

    #: The program's argv (non-empty).
    args: Sequence[StrOrBytesPath] = ()
    #: What to run: a path, or a name to look up in the PATH.
    executable: StrOrBytesPath = b""
    #: The filename an exec failure names (``subprocess``: the executable as given).
    display_executable: Any = None
    cwd: StrOrBytesPath | None = None
    env: Mapping[Any, Any] | None = None
    #: The six pipe fds of ``subprocess``'s ``_execute_child``; -1: none.
    stdio: tuple[int, int, int, int, int, int] = NO_FDS
    pass_fds: Iterable[int] = ()
    close_fds: bool = True
    restore_signals: bool = True
    start_new_session: bool = False
    process_group: int = -1
    uid: int | None = None
    gid: int | None = None
    extra_groups: Iterable[int] | None = None
    umask: int = -1
    preexec_fn: Callable[[], Any] | None = None
    create_pidfd: bool = True
    #: A forced spawn path for this spawn only (else the global choice).
    spawn_path: str | None = None
    #: A signal number for PR_SET_PDEATHSIG, 0 for none (see check_pdeathsig).
    pdeathsig: int = 0
    #: Linux clone options, or None.
    options: CloneOptions | None = None
    #: The filename a refused move into the cgroup names, when *options*
    #: give the cgroup as an fd (a :class:`~pyclone3.Scope`'s path); else
    #: ``options.cgroup`` is named if it is a path.
    display_cgroup: str | None = None
    #: What the child sets on itself before exec (rlimits, seccomp, ...), or None.
    sandbox: SandboxOptions | None = None
    #: False while every option the plan checks one by one (those of
    #: :meth:`set_process_options`, *pdeathsig*, *options*) is at its
    #: default: the plan skips them all then.
    customized: bool = False

    def __init__(self, args: Sequence[StrOrBytesPath] = (), **options: Any) -> None:
        """A request to run *args* (the executable: ``args[0]``), with *options* set by name."""
        if args:
            self.args = args
            self.executable = self.display_executable = args[0]
        for name, value in options.items():
            if name.startswith("_") or not hasattr(SpawnRequest, name):
                raise TypeError(f"SpawnRequest has no option {name!r}")
            setattr(self, name, value)
        if options:
            self.customized = True

    def cgroup_filename(self) -> Any:
        """What an error about the child's cgroup names: :attr:`display_cgroup`,
        else ``cgroup=`` if it was given as a path, else ``None``."""
        if self.display_cgroup is not None:
            return self.display_cgroup
        cgroup = self.options.cgroup if self.options is not None else None
        return None if isinstance(cgroup, int) else cgroup

    def set_process_options(
        self,
        pass_fds: Iterable[int],
        close_fds: bool,
        restore_signals: bool,
        start_new_session: bool,
        process_group: int,
        uid: int | None,
        gid: int | None,
        extra_groups: Iterable[int] | None,
        umask: int,
    ) -> None:
        """``subprocess``'s options for the new process, as ``Popen`` and :func:`spawn` take them.

        Only those that differ from the defaults are stored: this runs on
        every spawn, and most set none.
        """
        if not (
            pass_fds
            or not close_fds
            or not restore_signals
            or start_new_session
            or process_group != -1
            or uid is not None
            or gid is not None
            or extra_groups is not None
            or umask != -1
        ):
            return
        self.customized = True
        if pass_fds:
            self.pass_fds = pass_fds
        if not close_fds:
            self.close_fds = False
        if not restore_signals:
            self.restore_signals = False
        if start_new_session:
            self.start_new_session = True
        if process_group != -1:
            self.process_group = process_group
        if uid is not None:
            self.uid = uid
        if gid is not None:
            self.gid = gid
        if extra_groups is not None:
            self.extra_groups = extra_groups
        if umask != -1:
            self.umask = umask


def c_int(value: Any, what: str) -> int:
    """*value* as a C ``int``, as ``subprocess``'s C layer takes it."""
    number: int = operator.index(value)
    if number > _INT_MAX:
        raise OutOfRangeError(f"{what}: signed integer is greater than maximum")
    if number < _INT_MIN:
        raise OutOfRangeError(f"{what}: signed integer is less than minimum")
    return number


def unless_negative(value: Any, what: str) -> int:
    """An ``int`` option where a negative value means "leave it" (``umask``, ``process_group``)."""
    value = c_int(value, what)
    return value if value >= 0 else -1


def user_or_group_id(value: Any, what: str) -> int | None:
    """A uid or gid for ``setreuid``/``setregid``; ``None`` for "leave it".

    As ``subprocess`` has it: ``2**32 - 1`` is ``(uid_t)-1``, which the
    kernel takes as "unchanged"; anything larger does not fit and raises
    :class:`OutOfRangeError`; a negative id is refused with ``ValueError``.
    """
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{what} should be integer, not {type(value).__name__}") from None
    if value < 0:
        raise ValueError(f"{what} cannot be negative, got {value}")
    if value > _ID_UNCHANGED:
        raise OutOfRangeError(f"{what} is greater than maximum")
    return None if value == _ID_UNCHANGED else value


def group_list(values: Iterable[Any]) -> list[int]:
    """Supplementary groups for ``setgroups``, checked as ``subprocess`` checks them.

    ``2**32 - 1`` is passed on, and the kernel refuses it in the child
    (``EINVAL``), as with ``subprocess``.
    """
    groups = []
    for value in values:
        try:
            gid = operator.index(value)
        except TypeError:
            raise TypeError(
                f"extra_groups entries should be integers, not {type(value).__name__}"
            ) from None
        if gid < 0:
            raise ValueError(f"Group ID cannot be negative, got {gid}")
        if gid > _ID_UNCHANGED:
            raise ValueError("invalid group id")
        groups.append(gid)
    if len(groups) > _NGROUPS_MAX:
        raise ValueError("too many groups")
    return groups


def fd_number(value: Any, what: str) -> int:
    """A file descriptor to keep or install in the child: 0..INT_MAX, else ValueError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if not 0 <= value <= _INT_MAX:
        raise ValueError(f"{what} must be in 0..{_INT_MAX}, got {value}")
    return int(value)


def check_pdeathsig(sig: int | None) -> int:
    """Check a *pdeathsig* argument: ``None`` or 0 for none, else a signal number.

    With it, the child gets that signal when the thread that spawned it exits
    (``PR_SET_PDEATHSIG``, set as the child's last step before exec, after
    any change of user or group, which would clear it). If the parent died
    before that, the child sends it to itself at once. Note that it is the
    spawning *thread*'s exit that counts, as the kernel defines it.
    """
    if sig is None:
        return 0
    if isinstance(sig, bool) or not isinstance(sig, int):
        raise TypeError(f"pdeathsig must be a signal number, not {type(sig).__name__}")
    if not 0 <= sig <= 64:
        raise ValueError(f"pdeathsig must be a signal number in 1..64, got {sig}")
    return int(sig)
