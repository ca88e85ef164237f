"""Landlock's TCP port rules, proven by a child's own bind and connect on the loopback."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import socket
import subprocess
from collections.abc import Iterator

import pytest
from conftest import PYTHON, require, zombies

import pyclone3
from pyclone3.landlock import Landlock, abi_version

pytestmark = [
    require("waitid_pidfd"),
    pytest.mark.skipif(abi_version() < 4, reason="Landlock ABI 4 (TCP ports) is needed"),
]

# Each port is tried in turn; the outcome is "ok" or the errno's name.
TRY = """
import errno, json, socket, sys
out = {}
for what, port in ((w, int(p)) for w, p in (a.split(":") for a in sys.argv[1:])):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        (s.connect if what == "connect" else s.bind)(("127.0.0.1", port))
        out[f"{what}:{port}"] = "ok"
    except OSError as exc:
        out[f"{what}:{port}"] = errno.errorcode[exc.errno]
    finally:
        s.close()
print(json.dumps(out))
"""


@contextlib.contextmanager
def listeners(n: int) -> Iterator[list[int]]:
    """*n* listening sockets on the loopback: their ports."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(n):
            s = stack.enter_context(socket.socket())
            s.bind(("127.0.0.1", 0))
            s.listen()
            ports.append(s.getsockname()[1])
        yield ports


def free_ports(n: int) -> list[int]:
    """*n* ports nothing listens on now (the kernel's choice: not in use a moment ago)."""
    with listeners(n) as ports:
        return ports


def try_ports(attempts: list[str], **options: object) -> dict[str, str]:
    out = pyclone3.run(
        [PYTHON, "-I", "-S", "-c", TRY, *attempts],
        stdout=subprocess.PIPE,
        check=True,
        text=True,
        cwd="/",
        no_new_privs=True,
        **options,  # type: ignore[arg-type]
    )
    result: dict[str, str] = json.loads(out.stdout)
    return result


def test_connect_only_to_the_allowed_port(spawn_path: str) -> None:
    with listeners(2) as (allowed, other):
        ruleset = Landlock(ro=None, rw=None, connect_tcp=[allowed])
        out = try_ports([f"connect:{allowed}", f"connect:{other}"], landlock=ruleset)
        assert out == {f"connect:{allowed}": "ok", f"connect:{other}": "EACCES"}
        with socket.create_connection(("127.0.0.1", other)):  # we are not restricted
            pass
    assert not zombies()


def test_bind_only_to_the_allowed_port(spawn_path: str) -> None:
    allowed, other = free_ports(2)
    ruleset = Landlock(ro=None, rw=None, bind_tcp=[allowed])
    out = try_ports([f"bind:{allowed}", f"bind:{other}"], landlock=ruleset)
    assert out == {f"bind:{allowed}": "ok", f"bind:{other}": "EACCES"}


def test_ports_left_alone_are_unrestricted() -> None:
    """bind_tcp alone handles binding only: any connect still goes through."""
    with listeners(1) as (port,):
        (free,) = free_ports(1)
        out = try_ports(
            [f"connect:{port}", f"bind:{free}"], landlock=Landlock(ro=None, rw=None, bind_tcp=[])
        )
        assert out == {f"connect:{port}": "ok", f"bind:{free}": "EACCES"}


def test_a_ports_only_ruleset_leaves_the_filesystem_alone(tmp_path: object) -> None:
    path = f"{tmp_path}/written"
    ruleset = Landlock(ro=None, rw=None, connect_tcp=[])
    pyclone3.run(["/bin/sh", "-c", f"echo x > {path}"], check=True, landlock=ruleset,
                 no_new_privs=True)  # fmt: skip
    assert os.path.exists(path)


def test_ports_and_paths_together(tmp_path: pathlib.Path) -> None:
    (tmp_path / "in").mkdir()
    with listeners(2) as (allowed, other):
        ruleset = Landlock(ro=None, rw=[tmp_path / "in"], connect_tcp=[allowed])
        out = try_ports([f"connect:{allowed}", f"connect:{other}"], landlock=ruleset)
        assert out == {f"connect:{allowed}": "ok", f"connect:{other}": "EACCES"}
        script = f"echo x > {tmp_path}/in/x; echo x > {tmp_path}/out 2>/dev/null"
        r = pyclone3.run(["/bin/sh", "-c", script], landlock=ruleset, no_new_privs=True)
        assert r.returncode != 0  # writing outside rw is refused as well
    assert (tmp_path / "in/x").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"ro": ["/"], "rw": None}, ValueError, "needs ro=None"),
        ({"ro": None, "rw": None}, ValueError, "restricts nothing"),
        ({"connect_tcp": [65536]}, ValueError, "0..65535"),
        ({"bind_tcp": ["80"]}, TypeError, "ints"),
        ({"bind_tcp": [True]}, TypeError, "ints"),
    ],
)
def test_bad_port_rules_are_refused_at_once(kwargs: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        Landlock(**kwargs)


def test_strict_ports_without_abi_4_refuse(monkeypatch: pytest.MonkeyPatch) -> None:
    from pyclone3 import landlock

    monkeypatch.setattr(landlock, "abi_version", lambda: 3)
    ports_only = Landlock(ro=None, rw=None, connect_tcp=[1], strict=True)
    with pytest.raises(OSError, match="ABI 4"):
        pyclone3.spawn(["/bin/true"], landlock=ports_only, no_new_privs=True)
    best_effort = Landlock(ro=None, rw=None, connect_tcp=[1])
    assert best_effort.ruleset_fd() == -1  # nothing left to restrict: no ruleset
