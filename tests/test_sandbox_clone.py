"""Sandbox options with clone options on the clone3 path: new user, PID and mount namespaces.

The child is born in its namespaces with its ID maps written, then takes
the sandbox steps: they compose. What the kernel checks against the
initial user namespace (raising a hard limit, lowering oom_score_adj or
nice) is still refused there, whatever the child may do in its own.
"""

from __future__ import annotations

import errno
import os
import subprocess

import pytest
from conftest import require, requires_root, requires_userns, zombies

import pyclone3
from pyclone3 import seccomp
from pyclone3.flags import CloneFlag
from pyclone3.landlock import Landlock, abi_version
from pyclone3.sandbox import CAPABILITIES

pytestmark = [require("clone3"), require("waitid_pidfd"), requires_userns]

NEWUSER = CloneFlag.CLONE_NEWUSER
ME = [(0, os.getuid(), 1)]
MY_GROUP = [(0, os.getgid(), 1)]


def run_in(script: str, **options: object) -> str:
    """Run *script* in sh on the clone3 path with *options*; return its output."""
    with pyclone3.Popen(
        ["/bin/sh", "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        cwd="/",
        **options,  # type: ignore[arg-type]
    ) as p:
        out, _ = p.communicate(timeout=30)
    assert p.spawn_path == "clone3"
    assert p.returncode == 0, out
    return out


def status_field(out: str, key: str) -> str:
    return next(line.split(":\t", 1)[1] for line in out.splitlines() if line.startswith(key + ":"))


def test_rlimits_and_capabilities_in_a_new_user_namespace() -> None:
    out = run_in(
        "id -u; grep 'open files' /proc/self/limits; grep -E '^Cap' /proc/self/status",
        clone_flags=NEWUSER,
        uid_map=ME,
        gid_map=MY_GROUP,
        rlimits={"NOFILE": (40, 80)},
        capabilities=["CAP_KILL", "CAP_SETPCAP"],
    )
    lines = out.splitlines()
    assert lines[0] == "0"  # root in its namespace, through the uid_map
    assert lines[1].split()[3:5] == ["40", "80"]
    kept = 1 << CAPABILITIES.index("CAP_KILL") | 1 << CAPABILITIES.index("CAP_SETPCAP")
    # Its namespace's bounding set is full at birth: what it keeps is what it named.
    assert int(status_field(out, "CapBnd"), 16) == kept
    assert int(status_field(out, "CapEff"), 16) == kept
    assert not zombies()


def test_seccomp_in_new_user_and_pid_namespaces() -> None:
    out = run_in(
        "echo $$; grep Seccomp: /proc/self/status; mkdir /proc/x 2>&1; true",
        clone_flags=NEWUSER | CloneFlag.CLONE_NEWPID,
        uid_map=ME,
        gid_map=MY_GROUP,
        seccomp=seccomp.deny({"mkdir": errno.EROFS, "mkdirat": errno.EROFS}),
        no_new_privs=True,
    )
    lines = out.splitlines()
    assert lines[0] == "1"  # PID 1 of its namespace
    assert lines[1] == "Seccomp:\t2"
    assert "Read-only file system" in lines[2]


@requires_root
def test_seccomp_without_no_new_privs_in_a_new_pid_namespace() -> None:
    """Root's CAP_SYS_ADMIN stands in for no_new_privs, as the kernel allows."""
    out = run_in(
        "echo $$; grep -E 'Seccomp:|NoNewPrivs' /proc/self/status",
        clone_flags=CloneFlag.CLONE_NEWPID,
        seccomp=seccomp.deny(["acct"]),
    )
    assert out == "1\nNoNewPrivs:\t0\nSeccomp:\t2\n"


@pytest.mark.skipif(abi_version() < 1, reason="no Landlock on this kernel")
def test_landlock_in_new_user_mount_and_pid_namespaces(tmp_path: object) -> None:
    """Root of its own namespaces, the child still cannot write outside its rules."""
    inside = f"{tmp_path}/in"
    os.mkdir(inside)
    out = run_in(
        f"echo x > {inside}/f && echo in; echo x > {tmp_path}/out 2>/dev/null || echo refused",
        clone_flags=NEWUSER | CloneFlag.CLONE_NEWNS | CloneFlag.CLONE_NEWPID,
        uid_map=ME,
        gid_map=MY_GROUP,
        landlock=Landlock(ro=None, rw=[inside]),
    )
    assert out == "in\nrefused\n"
    assert not os.path.exists(f"{tmp_path}/out")


@requires_root
def test_ambient_capabilities_for_a_non_root_uid_of_a_new_user_namespace() -> None:
    kill = 1 << CAPABILITIES.index("CAP_KILL")
    out = run_in(
        "id -u; grep -E '^Cap' /proc/self/status",
        clone_flags=NEWUSER,
        uid_map=[(0, 0, 1), (1000, 1000, 1)],
        gid_map=[(0, 0, 1)],
        user=1000,
        ambient_capabilities=["CAP_KILL"],
    )
    assert out.splitlines()[0] == "1000"
    for field in ("CapAmb", "CapPrm", "CapEff"):
        assert int(status_field(out, field), 16) == kill, field


@pytest.mark.parametrize(
    "options, match",
    [
        ({"oom_score_adj": -100}, "CAP_SYS_RESOURCE"),
        ({"nice": -5}, "CAP_SYS_NICE"),
    ],
)
def test_what_needs_the_initial_namespace_is_refused_in_a_new_one(
    options: dict, match: str
) -> None:
    """The child holds every capability of its own user namespace, and these are not of it."""
    with pytest.raises(PermissionError, match=match):
        pyclone3.Popen(["/bin/true"], clone_flags=NEWUSER, uid_map=ME, gid_map=MY_GROUP, **options)
    assert not zombies()
