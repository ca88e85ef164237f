"""Seccomp filters for a child: :func:`deny` and :func:`allow_only` build them.

A filter is classic BPF (``struct sock_filter`` instructions), built here
once, in Python, and handed to :func:`pyclone3.spawn` or
:class:`pyclone3.Popen` as ``seccomp=``; the child installs it with
``seccomp(SECCOMP_SET_MODE_FILTER)`` as its last step before ``execve``
(see :mod:`pyclone3.sandbox`). Any filter of your own, as bytes, is taken
too. The kernel takes a filter only from a process with no_new_privs
(``no_new_privs=True``) or ``CAP_SYS_ADMIN``.

Each generated filter starts by checking the architecture the call was made
with (``seccomp_data.arch``), and kills the process for any other: a 32-bit
call on a 64-bit kernel has other numbers and would slip past the rules.
On x86_64 the x32 ABI's calls (numbers from ``0x40000000``) are killed too.

Syscalls are named as the kernel names them (``"socket"``, ``"ptrace"``),
looked up in a table made from the kernel headers for x86_64 and aarch64;
elsewhere, give numbers and *arch* (an ``AUDIT_ARCH_*`` value).
"""

from __future__ import annotations

import errno as errno_module
import platform
import struct
from collections.abc import Iterable, Mapping

from ._frozen import Frozen

__all__ = ["AUDIT_ARCH", "KILL", "SeccompFilter", "allow_only", "deny", "syscall_number"]

#: The action that kills the whole process, in place of an errno.
KILL = "kill"
#: The ``AUDIT_ARCH_*`` value of each machine the name table covers.
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}

# struct sock_filter opcodes (<linux/bpf_common.h>, <linux/filter.h>)
_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JGE_K = 0x35  # BPF_JMP | BPF_JGE | BPF_K
_RET_K = 0x06  # BPF_RET | BPF_K
# seccomp return values (<linux/seccomp.h>)
_RET_KILL_PROCESS = 0x80000000
_RET_ERRNO = 0x00050000
_RET_ALLOW = 0x7FFF0000
# offsets in struct seccomp_data
_NR = 0
_ARCH = 4
_X32_SYSCALL_BIT = 0x40000000
_ERRNO_MAX = 4095
_BPF_MAXINSNS = 4096
#: What allow_only always allows: the child's own exec, and its failure report.
_ALWAYS_ALLOWED = ("execve", "exit_group", "write")


class SeccompFilter(Frozen):
    """A built filter: *program*, the bytes of its ``struct sock_filter`` instructions.

    *arch* is the ``AUDIT_ARCH_*`` value it checks for. Immutable.
    """

    __match_args__ = ("program", "arch")

    program: bytes
    arch: int

    def __init__(self, program: bytes, arch: int) -> None:
        object.__setattr__(self, "program", program)
        object.__setattr__(self, "arch", arch)

    def __len__(self) -> int:
        """The number of instructions."""
        return len(self.program) // 8


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def _machine_arch() -> tuple[str, int]:
    machine = platform.machine()
    if machine not in AUDIT_ARCH:
        raise ValueError(
            f"no syscall table for {machine!r}: give syscall numbers and arch= (AUDIT_ARCH_*)"
        )
    return machine, AUDIT_ARCH[machine]


def syscall_number(name: str | int, machine: str | None = None) -> int:
    """The number of syscall *name* on *machine* (default: this one); an int is taken as is."""
    if isinstance(name, bool):
        raise TypeError("a syscall is a name or a number, not a bool")
    if isinstance(name, int):
        if not 0 <= name < 2**32:
            raise ValueError(f"syscall number {name} out of range")
        return name
    if not isinstance(name, str):
        raise TypeError(f"a syscall is a name or a number, not {type(name).__name__}")
    from . import _syscall_table

    machine = machine or _machine_arch()[0]
    table = _syscall_table.X86_64 if machine == "x86_64" else _syscall_table.AARCH64
    number = table.get(name)
    if number is None:
        raise ValueError(f"unknown syscall {name!r} on {machine}")
    return number


def _action(action: int | str, what: str) -> int:
    if action == KILL:
        return _RET_KILL_PROCESS
    if isinstance(action, bool) or not isinstance(action, int):
        raise TypeError(f"{what} must be an errno number or {KILL!r}, not {action!r}")
    if not 1 <= action <= _ERRNO_MAX:
        raise ValueError(f"{what}: an errno is 1..{_ERRNO_MAX}, got {action}")
    return _RET_ERRNO | action


def _head(arch: int, machine: str | None) -> list[bytes]:
    """Kill a call of another architecture (and x86_64's x32 calls); load its number."""
    head = [
        _insn(_LD_W_ABS, _ARCH),
        _insn(_JEQ_K, arch, jt=1),
        _insn(_RET_K, _RET_KILL_PROCESS),
        _insn(_LD_W_ABS, _NR),
    ]
    if machine == "x86_64":
        head += [_insn(_JGE_K, _X32_SYSCALL_BIT, jf=1), _insn(_RET_K, _RET_KILL_PROCESS)]
    return head


def _resolve_arch(arch: int | None) -> tuple[str | None, int]:
    if arch is None:
        return _machine_arch()
    if isinstance(arch, bool) or not isinstance(arch, int):
        raise TypeError(f"arch must be an AUDIT_ARCH_* int, not {type(arch).__name__}")
    machine = next((m for m, a in AUDIT_ARCH.items() if a == arch), None)
    return machine, arch


def _finish(program: list[bytes], arch: int) -> SeccompFilter:
    if len(program) > _BPF_MAXINSNS:
        raise ValueError(f"the filter has {len(program)} instructions; at most {_BPF_MAXINSNS}")
    return SeccompFilter(b"".join(program), arch)


def deny(
    syscalls: Iterable[str | int] | Mapping[str | int, int | str],
    *,
    errno: int | str = errno_module.EPERM,
    arch: int | None = None,
) -> SeccompFilter:
    """A filter that fails the named *syscalls* and allows every other call.

    *syscalls* is an iterable of names (or numbers), each failing with
    *errno*, or a mapping from each to its own errno, or to :data:`KILL` to
    kill the process instead. Raises ``ValueError`` for an unknown name or
    an errno outside 1..4095.
    """
    machine, audit_arch = _resolve_arch(arch)
    if isinstance(syscalls, (str, bytes)):
        raise TypeError("syscalls must be an iterable of names, not a single string")
    if isinstance(syscalls, Mapping):
        rules = [(syscall_number(n, machine), _action(a, f"{n!r}")) for n, a in syscalls.items()]
    else:
        action = _action(errno, "errno")
        rules = [(syscall_number(n, machine), action) for n in syscalls]
    program = _head(audit_arch, machine)
    for number, ret in rules:
        program += [_insn(_JEQ_K, number, jf=1), _insn(_RET_K, ret)]
    program.append(_insn(_RET_K, _RET_ALLOW))
    return _finish(program, audit_arch)


def allow_only(
    syscalls: Iterable[str | int],
    *,
    errno: int | str = errno_module.EPERM,
    arch: int | None = None,
) -> SeccompFilter:
    """A filter that allows the named *syscalls* only; every other call fails with *errno*.

    Or kills the process, with ``errno=KILL``. ``execve``, ``exit_group``
    and ``write`` are always allowed, as the child needs them to exec and to
    report a failed exec; the program needs many more (the dynamic loader
    alone calls ``mmap``, ``openat``, ``read``, ``close``...).
    """
    machine, audit_arch = _resolve_arch(arch)
    if isinstance(syscalls, (str, bytes)):
        raise TypeError("syscalls must be an iterable of names, not a single string")
    default = _action(errno, "errno")
    numbers = {syscall_number(n, machine) for n in syscalls}
    if machine is not None:
        numbers |= {syscall_number(n, machine) for n in _ALWAYS_ALLOWED}
    program = _head(audit_arch, machine)
    for number in sorted(numbers):
        program += [_insn(_JEQ_K, number, jf=1), _insn(_RET_K, _RET_ALLOW)]
    program.append(_insn(_RET_K, default))
    return _finish(program, audit_arch)
