"""Capabilities: the bounding set a child keeps; ambient ones a non-root child keeps over exec."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
from conftest import NOBODY, NOBODY_REASON, PYTHON, require, requires_root, zombies
from test_sandbox_network import TRY

import pyclone3
from pyclone3.sandbox import CAPABILITIES

pytestmark = require("waitid_pidfd")

KILL, NET_BIND_SERVICE, SETPCAP = (
    CAPABILITIES.index(f"CAP_{n}") for n in ("KILL", "NET_BIND_SERVICE", "SETPCAP")
)
SHOW = "id -u; grep -E '^Cap' /proc/self/status"


def our_caps(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1], 16)
    raise AssertionError(field)


def caps_of(how: str, **options: object) -> dict[str, int]:
    """The child's uid and its capability sets, as its /proc/self/status shows them."""
    extra = {"preexec_fn": lambda: None} if how == "preexec_fn" else {}
    out = pyclone3.run(
        ["/bin/sh", "-c", SHOW],
        stdout=subprocess.PIPE,
        check=True,
        text=True,
        cwd="/",
        **extra,  # type: ignore[arg-type]
        **options,  # type: ignore[arg-type]
    ).stdout.splitlines()
    shown = {"uid": int(out[0])}
    shown.update((line.split(":")[0], int(line.split()[1], 16)) for line in out[1:])
    return shown


@pytest.fixture(params=["plain", "preexec_fn"])
def how(request: pytest.FixtureRequest, spawn_path: str) -> str:
    """Each spawn path, then each again with a preexec_fn (the fork() path)."""
    return str(request.param)


def bit(*caps: int) -> int:
    return sum(1 << cap for cap in caps)


@requires_root
def test_ambient_capabilities_survive_the_uid_change_and_exec(how: str) -> None:
    shown = caps_of(
        how,
        user=NOBODY,
        capabilities=["CAP_KILL", "net_bind_service"],
        ambient_capabilities=["NET_BIND_SERVICE"],
    )
    assert shown["uid"] == NOBODY
    assert shown["CapAmb"] == shown["CapPrm"] == shown["CapEff"] == bit(NET_BIND_SERVICE)
    assert shown["CapBnd"] == bit(KILL, NET_BIND_SERVICE) & our_caps("CapBnd")
    assert our_caps("CapAmb") == 0 and os.geteuid() == 0  # ours untouched


@requires_root
def test_without_ambient_a_non_root_child_holds_nothing(how: str) -> None:
    shown = caps_of(how, user=NOBODY, capabilities=["CAP_KILL", "NET_BIND_SERVICE"])
    assert shown["uid"] == NOBODY
    assert shown["CapAmb"] == shown["CapPrm"] == shown["CapEff"] == 0
    assert shown["CapBnd"] == bit(KILL, NET_BIND_SERVICE) & our_caps("CapBnd")


@requires_root
def test_a_root_child_holds_its_bounding_set_and_the_ambient_ones() -> None:
    shown = caps_of("plain", capabilities=["KILL", "SETPCAP"], ambient_capabilities=["KILL"])
    kept = bit(KILL, SETPCAP) & our_caps("CapBnd")
    assert (shown["uid"], shown["CapBnd"], shown["CapPrm"], shown["CapEff"]) == (
        0,
        kept,
        kept,
        kept,
    )
    assert shown["CapAmb"] == bit(KILL)


@requires_root
def test_ambient_alone_leaves_the_bounding_set() -> None:
    shown = caps_of("plain", user=NOBODY, ambient_capabilities=[KILL])
    assert shown["CapBnd"] == our_caps("CapBnd")
    assert shown["CapAmb"] == shown["CapEff"] == bit(KILL)


def privileged_port() -> int | None:
    """A port below ip_unprivileged_port_start that nothing listens on, or None."""
    with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
        start = int(f.read())
    for port in range(start - 1, max(start - 200, 0), -1):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    return None


def python_for_nobody() -> str | None:
    """A Python that nobody may run (ours may live in root's home), or None."""
    for python in (PYTHON, "/usr/bin/python3"):
        try:
            pyclone3.run([python, "-I", "-S", "-c", ""], check=True, cwd="/", user=NOBODY)
        except (OSError, subprocess.CalledProcessError):
            continue
        return python
    return None


@requires_root
def test_an_ambient_capability_works_in_the_program() -> None:
    """nobody binds a privileged port with CAP_NET_BIND_SERVICE, and not without it."""
    port = privileged_port()
    if port is None:
        pytest.skip("no privileged port is free, or all ports are unprivileged here")
    python = python_for_nobody()
    if python is None:
        pytest.skip("no Python here that nobody may run")

    def bind(**options: object) -> str:
        out = pyclone3.run(
            [python, "-I", "-S", "-c", TRY, f"bind:{port}"],
            stdout=subprocess.PIPE,
            check=True,
            text=True,
            cwd="/",
            user=NOBODY,
            capabilities=["NET_BIND_SERVICE"],
            **options,  # type: ignore[arg-type]
        )
        result: str = json.loads(out.stdout)[f"bind:{port}"]
        return result

    assert bind(ambient_capabilities=["NET_BIND_SERVICE"]) == "ok"
    assert bind() == "EACCES"
    assert not zombies()


@pytest.mark.parametrize(
    "options, exc, match",
    [
        ({"capabilities": ["KILL"], "ambient_capabilities": ["CHOWN"]}, ValueError, "among"),
        ({"capabilities": [], "ambient_capabilities": [KILL]}, ValueError, "CAP_KILL"),
        ({"ambient_capabilities": "CAP_KILL"}, TypeError, "iterable"),
        ({"ambient_capabilities": [1.0]}, TypeError, "capability"),
        ({"ambient_capabilities": ["CAP_NOPE"]}, ValueError, "unknown"),
    ],
)
def test_bad_ambient_capabilities_are_refused_before_any_child(
    options: dict, exc: type, match: str
) -> None:
    with pytest.raises(exc, match=match):
        pyclone3.spawn(["/bin/true"], **options)
    with pytest.raises(exc, match=match):
        pyclone3.Popen(["/bin/true"], **options)


UNPRIVILEGED = textwrap.dedent(
    """
    import sys
    sys.path[:0] = {path!r}
    from conftest import become_nobody
    become_nobody()
    import pyclone3
    try:
        pyclone3.spawn(["/bin/true"], ambient_capabilities=["CAP_NET_BIND_SERVICE"]).pidfd.wait()
        print("ok")
    except PermissionError as exc:
        print(exc)
    """
)


@pytest.mark.skipif(NOBODY_REASON is not None, reason=NOBODY_REASON or "")
@requires_root
def test_an_ambient_capability_we_do_not_hold_is_a_permission_error() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run(
        [PYTHON, "-c", UNPRIVILEGED.format(path=[here, *sys.path])],
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
    ).stdout
    assert "ambient capability must be one we hold" in out, out
