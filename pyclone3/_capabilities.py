"""The capabilities by name and number, as ``<linux/capability.h>`` has them."""

from __future__ import annotations

__all__ = ["CAPABILITIES", "cap_last_cap", "capability_number"]

#: The capabilities by number, named as ``<linux/capability.h>`` names them.
CAPABILITIES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)


def cap_last_cap() -> int:
    """The highest capability number this kernel knows."""
    try:
        with open("/proc/sys/kernel/cap_last_cap", "rb") as f:
            return int(f.read())
    except (OSError, ValueError):
        return len(CAPABILITIES) - 1


def capability_number(cap: int | str) -> int:
    """A capability's number, from the number or the name (``"CAP_KILL"``, ``"kill"``)."""
    last = cap_last_cap()
    if isinstance(cap, str):
        name = cap.upper()
        name = name if name.startswith("CAP_") else "CAP_" + name
        if name not in CAPABILITIES:
            raise ValueError(f"unknown capability {cap!r}")
        number = CAPABILITIES.index(name)
    else:
        if isinstance(cap, bool) or not isinstance(cap, int):
            raise TypeError(f"a capability must be an int or a name, not {type(cap).__name__}")
        number = int(cap)
    if not 0 <= number <= last:
        raise ValueError(f"capability {cap!r} is not one this kernel knows (0..{last})")
    return number
