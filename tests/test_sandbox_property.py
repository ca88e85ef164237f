"""Hypothesis over capabilities, seccomp deny lists, Landlock and the uid: the parent's verdict
(a ValueError, a PermissionError from the child, or a spawn) is what the child then shows."""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from typing import Any

import pytest
from conftest import NOBODY, require, zombies
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_sandbox_caps import our_caps, python_for_nobody

import pyclone3
from pyclone3 import seccomp
from pyclone3.landlock import Landlock, abi_version
from pyclone3.sandbox import CAPABILITIES, check_sandbox_options

pytestmark = [
    require("waitid_pidfd"),
    pytest.mark.skipif(abi_version() < 4, reason="Landlock ABI 4 (TCP ports) is needed"),
    pytest.mark.skipif(os.uname().machine not in seccomp.AUDIT_ARCH, reason="no syscall names"),
]

# What the child tries; each outcome is "ok" or the errno's name.
PROBE = """
import errno, json, os, socket, sys
inside, outside, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
out = {"uid": os.getuid()}
with open("/proc/self/status") as f:
    for line in f:
        key, _, value = line.partition(":")
        if key in ("CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp"):
            out[key] = int(value.strip(), 16 if key.startswith("Cap") else 10)
def attempt(name, call):
    try:
        call()
        out[name] = "ok"
    except OSError as exc:
        out[name] = errno.errorcode[exc.errno]
attempt("mkdir", lambda: os.mkdir(inside + "/d"))
attempt("write_in", lambda: open(inside + "/f", "w").close())
attempt("write_out", lambda: open(outside + "/f", "w").close())
attempt("list_out", lambda: os.listdir(outside))
attempt("connect", lambda: socket.create_connection(("127.0.0.1", port)).close())
print(json.dumps(out))
"""


@functools.cache
def child_python() -> str | None:
    """The Python the child runs: one nobody may run too, when we are root."""
    return python_for_nobody() if os.geteuid() == 0 else sys.executable


SOME_CAPS = ["CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_CHOWN", "CAP_SETPCAP", "CAP_SYS_RESOURCE"]
caps = st.none() | st.frozensets(st.sampled_from(SOME_CAPS))
deny_errno = st.sampled_from([errno.EROFS, errno.EPERM, errno.ENOSPC, 0, 4096])
fs_rules = st.sampled_from(["none", "no-rw", "rw-inside", "ro-and-rw", "ro-only"])
ports = st.sampled_from(["none", "listener", "other", "empty"])


def readable_roots() -> list[str]:
    roots = ["/bin", "/usr", "/lib", "/lib64", "/etc", "/proc", "/dev"]
    python = os.path.realpath(child_python() or sys.executable)
    roots += [sys.base_prefix, sys.prefix, os.path.dirname(python)]
    return [p for p in dict.fromkeys(roots) if os.path.exists(p)]


def landlock_for(fs: str, net: str, inside: str, port: int) -> Landlock:
    """A ruleset, or the ValueError Landlock raises for it."""
    connect = {"none": None, "listener": [port], "other": [port ^ 1], "empty": []}[net]
    ro = readable_roots() if fs.startswith("ro") else None
    rw = {"none": None, "no-rw": (), "rw-inside": [inside], "ro-and-rw": [inside], "ro-only": ()}
    return Landlock(ro=ro, rw=rw[fs], connect_tcp=connect)


def expected(
    opts: Any, ruleset: Landlock | None, uid: int | None, inside: str, port: int, deny: int | None
) -> dict[str, Any] | type[BaseException]:
    """What the child shows for these checked options, or the exception the spawn raises."""
    bounding, permitted = our_caps("CapBnd"), our_caps("CapPrm")
    kept = bounding
    if opts.capabilities is not None:
        kept = bounding & sum(1 << cap for cap in opts.capabilities)
        if bounding & ~kept and not permitted >> CAPABILITIES.index("CAP_SETPCAP") & 1:
            return PermissionError
    ambient = sum(1 << cap for cap in opts.ambient_capabilities)
    if ambient & ~(bounding & permitted):
        return PermissionError
    root_child = uid is None and os.geteuid() == 0
    if (opts.seccomp or ruleset) and not opts.no_new_privs and not root_child:
        return PermissionError
    writes_limited = ruleset is not None and ruleset.rw is not None
    may_write_inside = not writes_limited or inside.encode() in (ruleset.rw or ())  # type: ignore[union-attr]
    net = ruleset.connect_tcp if ruleset is not None else None
    denied = "ok" if may_write_inside else "EACCES"
    return {
        "uid": NOBODY if uid is not None else os.getuid(),
        "CapBnd": kept,
        "CapAmb": ambient,
        "CapPrm": kept | ambient if root_child else ambient,
        "CapEff": kept | ambient if root_child else ambient,
        "NoNewPrivs": int(opts.no_new_privs),
        "Seccomp": 2 if opts.seccomp else 0,
        "mkdir": errno.errorcode[deny] if deny is not None else denied,
        "write_in": denied,
        "write_out": "EACCES" if writes_limited else "ok",
        "list_out": "EACCES" if ruleset is not None and ruleset.ro is not None else "ok",
        "connect": "ok" if net is None or port in net else "EACCES",
    }


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    capabilities=caps,
    ambient=caps,
    deny=st.none() | deny_errno,
    extra_denied=st.lists(st.sampled_from(["acct", "swapon", "chroot"]), max_size=2),
    fs=st.none() | fs_rules,
    net=ports,
    nnp=st.booleans(),
    as_nobody=st.booleans(),
)
def test_parent_verdict_matches_the_child(
    capabilities: frozenset[str] | None,
    ambient: frozenset[str] | None,
    deny: int | None,
    extra_denied: list[str],
    fs: str | None,
    net: str,
    nnp: bool,
    as_nobody: bool,
) -> None:
    python = child_python()
    if python is None:
        pytest.skip("no Python here that nobody may run")
    uid = NOBODY if as_nobody and os.geteuid() == 0 else None
    fds = set(os.listdir("/proc/self/fd"))
    # In /tmp itself, not $TMPDIR: nox points that into the virtual
    # environment, which readable_roots() lets the child read.
    top = tempfile.mkdtemp(dir="/tmp")
    assert not any((top + "/").startswith(root.rstrip("/") + "/") for root in readable_roots()), (
        f"{top} is under a path the ruleset makes readable"
    )
    inside, outside = f"{top}/in", f"{top}/out"
    for path in (top, inside, outside):
        os.makedirs(path, exist_ok=True)
        os.chmod(path, 0o777)
    try:
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            port = listener.getsockname()[1]
            verdict: Any
            try:
                filt = None
                if deny is not None:
                    rules: dict[str, int | str] = {name: deny for name in ("mkdir", "mkdirat")}
                    rules.update((name, errno.EPERM) for name in extra_denied)
                    filt = seccomp.deny(rules)
                ruleset = landlock_for(fs, net, inside, port) if fs is not None else None
                options = dict(
                    capabilities=capabilities,
                    ambient_capabilities=ambient,
                    seccomp=filt,
                    landlock=ruleset,
                    no_new_privs=nnp,
                )
                opts = check_sandbox_options(**options)  # type: ignore[arg-type]
                verdict = expected(opts, ruleset, uid, inside, port, deny)
            except ValueError:
                verdict = ValueError
            event(verdict.__name__ if isinstance(verdict, type) else "spawned")
            if verdict is ValueError:
                return  # each constructor's own tests prove spawn refuses the same
            extra = {"user": uid} if uid is not None else {}
            run = pyclone3.run
            argv = [python, "-I", "-S", "-c", PROBE, inside, outside, str(port)]
            if isinstance(verdict, type):
                with pytest.raises(verdict):
                    run(argv, cwd="/", **extra, **options)  # type: ignore[arg-type]
            else:
                out = run(argv, cwd="/", stdout=subprocess.PIPE, check=True, **extra, **options)  # type: ignore[arg-type,call-overload]
                assert json.loads(out.stdout) == verdict
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(top)
    assert set(os.listdir("/proc/self/fd")) == fds and not zombies()
