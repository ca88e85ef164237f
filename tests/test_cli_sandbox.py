"""``pyclone3 run``'s Landlock port options (--landlock-bind, --landlock-connect)."""

from __future__ import annotations

import json
import pathlib

import pytest
from conftest import PYTHON
from test_cli import run_cli
from test_sandbox_network import TRY, free_ports, listeners

from pyclone3.landlock import abi_version

needs_ports = pytest.mark.skipif(abi_version() < 4, reason="Landlock ABI 4 (TCP ports) is needed")


@needs_ports
def test_landlock_connect_and_bind_reach_the_command() -> None:
    (free, other_free) = free_ports(2)
    with listeners(2) as (allowed, other):
        r = run_cli(
            "run", "--landlock-connect", str(allowed), "--landlock-bind", str(free),
            "--", PYTHON, "-I", "-S", "-c", TRY,
            f"connect:{allowed}", f"connect:{other}", f"bind:{free}", f"bind:{other_free}",
        )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {
        f"connect:{allowed}": "ok",
        f"connect:{other}": "EACCES",
        f"bind:{free}": "ok",
        f"bind:{other_free}": "EACCES",
    }


@needs_ports
def test_landlock_ports_alone_leave_the_filesystem_writable(tmp_path: pathlib.Path) -> None:
    with listeners(1) as (port,):
        r = run_cli(
            "run", "--landlock-connect", str(port), "--",
            "/bin/sh", "-c", f"echo x > {tmp_path}/f && grep NoNewPrivs /proc/self/status",
        )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout == "NoNewPrivs:\t1\n"  # implied, as for the other --landlock-* options
    assert (tmp_path / "f").exists()


@needs_ports
def test_landlock_ports_with_a_path_restrict_writing_too(tmp_path: pathlib.Path) -> None:
    (tmp_path / "in").mkdir()
    script = f"echo x > {tmp_path}/in/f; echo x > {tmp_path}/out 2>/dev/null || echo refused"
    r = run_cli(
        "run", "--landlock-rw", str(tmp_path / "in"), "--landlock-connect", "1",
        "--", "/bin/sh", "-c", script,
    )  # fmt: skip
    assert (r.returncode, r.stdout) == (0, "refused\n"), r.stderr
    assert (tmp_path / "in/f").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("option", ["--landlock-bind", "--landlock-connect"])
@pytest.mark.parametrize("value", ["x", "-1", "65536", "", "80,443"])
def test_a_bad_port_is_one_line_and_exit_125(option: str, value: str) -> None:
    r = run_cli("run", option, value, "--", "true")
    assert r.returncode == 125, r.stderr
    assert len(r.stderr.splitlines()) == 1 and "not a TCP port" in r.stderr, r.stderr
    assert r.stdout == ""
