"""Make the kernel look older or stricter: a seccomp filter that fails chosen syscalls.

Apply it only in a disposable process (a filter can never be removed).
Used as ``python tests/seccomp.py NAME=ERRNO ... -- CMD ARGS``: installs the
filter, then execs CMD under it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
import sys

# Syscall numbers: the generic table (newer calls) is shared; waitid differs.
_NUMBERS = {
    "x86_64": {
        "clone3": 435,
        "pidfd_open": 434,
        "pidfd_send_signal": 424,
        "pidfd_getfd": 438,
        "waitid": 247,
        "clone": 56,
        "close_range": 436,
        "unshare": 272,
    },
    "aarch64": {
        "clone3": 435,
        "pidfd_open": 434,
        "pidfd_send_signal": 424,
        "pidfd_getfd": 438,
        "waitid": 95,
        "clone": 220,
        "close_range": 436,
        "unshare": 97,
    },
}
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}

_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JSET_K = 0x45
_CLONE_PIDFD = 0x1000
_CLONE_ARGS_SIZE_VER2 = 88
_P_PIDFD = 3
_RET_K = 0x06
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2


# Pseudo-names that match a syscall's arguments, not only its number.
_ARGUMENT_RULES = ("clone_pidfd", "clone3_cgroup", "waitid_pidfd")


def supported() -> bool:
    return platform.machine() in _NUMBERS


def deny(rules: dict[str, int]) -> None:
    """Install a filter making each named syscall fail with its errno.

    The pseudo-name ``clone_pidfd`` fails only those clone(2) calls whose
    flags include CLONE_PIDFD, as qemu-user does; plain fork() still works.
    ``clone3_cgroup`` fails only clone3 calls whose struct is the 88-byte
    one that carries a cgroup, as a kernel before 5.7 does (``E2BIG``).
    ``waitid_pidfd`` fails only waitid(P_PIDFD, ...), as Linux 5.3 does
    (``EINVAL``: pidfds, but no P_PIDFD); waitid(P_PID/P_ALL) still works.
    """
    machine = platform.machine()
    numbers = _NUMBERS[machine]
    insns = [
        (_LD_W_ABS, 0, 0, 4),  # seccomp_data.arch
        (_JEQ_K, 1, 0, _AUDIT_ARCH[machine]),
        (_RET_K, 0, 0, _RET_ALLOW),  # another ABI: leave it alone
        (_LD_W_ABS, 0, 0, 0),  # seccomp_data.nr
    ]
    for name, err in rules.items():
        if name in _ARGUMENT_RULES:
            continue
        insns.append((_JEQ_K, 0, 1, numbers[name]))
        insns.append((_RET_K, 0, 0, _RET_ERRNO | err))
    # The argument rules load an argument over the syscall number: each
    # reloads the number first.
    if "clone_pidfd" in rules:
        insns.append((_LD_W_ABS, 0, 0, 0))
        insns.append((_JEQ_K, 0, 3, numbers["clone"]))
        insns.append((_LD_W_ABS, 0, 0, 16))  # low word of seccomp_data.args[0]
        insns.append((_JSET_K, 0, 1, _CLONE_PIDFD))
        insns.append((_RET_K, 0, 0, _RET_ERRNO | rules["clone_pidfd"]))
    if "clone3_cgroup" in rules:
        insns.append((_LD_W_ABS, 0, 0, 0))
        insns.append((_JEQ_K, 0, 3, numbers["clone3"]))
        insns.append((_LD_W_ABS, 0, 0, 24))  # low word of seccomp_data.args[1], the size
        insns.append((_JEQ_K, 0, 1, _CLONE_ARGS_SIZE_VER2))
        insns.append((_RET_K, 0, 0, _RET_ERRNO | rules["clone3_cgroup"]))
    if "waitid_pidfd" in rules:
        insns.append((_LD_W_ABS, 0, 0, 0))
        insns.append((_JEQ_K, 0, 3, numbers["waitid"]))
        insns.append((_LD_W_ABS, 0, 0, 16))  # low word of seccomp_data.args[0], the idtype
        insns.append((_JEQ_K, 0, 1, _P_PIDFD))
        insns.append((_RET_K, 0, 0, _RET_ERRNO | rules["waitid_pidfd"]))
    insns.append((_RET_K, 0, 0, _RET_ALLOW))
    code = b"".join(struct.pack("HBBI", *insn) for insn in insns)
    buf = ctypes.create_string_buffer(code)

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    prog = SockFprog(len(insns), ctypes.cast(buf, ctypes.c_void_p))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
    if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_SECCOMP")


def main(argv: list[str]) -> None:
    split = argv.index("--")
    rules = {}
    for rule in argv[:split]:
        name, _, err = rule.partition("=")
        rules[name] = getattr(errno, err)
    deny(rules)
    os.execv(argv[split + 1], argv[split + 1 :])


if __name__ == "__main__":
    main(sys.argv[1:])
