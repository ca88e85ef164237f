"""The sandbox options, each proven from inside the child, on every path and with preexec_fn."""

from __future__ import annotations

import errno
import os
import resource
import subprocess
import sys
import textwrap

import pytest
from conftest import NOBODY_REASON, PYTHON, malloc_churn, needs_threads, require, zombies
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pyclone3
from pyclone3 import seccomp
from pyclone3.landlock import Landlock, abi_version
from pyclone3.sandbox import CAPABILITIES, RLIM_INFINITY, check_sandbox_options

pytestmark = require("waitid_pidfd")

SHOW = "cat /proc/self/limits /proc/self/status /proc/self/oom_score_adj /proc/self/stat"


def _status_of(fd_or_pid: str | int) -> dict[str, str]:
    with open(f"/proc/{fd_or_pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def _cap_eff(cap: int) -> bool:
    return bool(int(_status_of("self")["CapEff"], 16) >> cap & 1)


def _has_cap(name: str) -> bool:
    return _cap_eff(CAPABILITIES.index(name))


@pytest.fixture(params=["plain", "preexec_fn"])
def how(request: pytest.FixtureRequest, spawn_path: str) -> str:
    """Each spawn path, then each again with a preexec_fn (the fork() path)."""
    return str(request.param)


def run_child(how: str, command: str = SHOW, **options: object) -> str:
    """Run *command* in sh with the sandbox *options*; return its output."""
    extra = {"preexec_fn": lambda: None} if how == "preexec_fn" else {}
    out = pyclone3.run(
        ["/bin/sh", "-c", command],
        stdout=subprocess.PIPE,
        check=True,
        text=True,
        **extra,  # type: ignore[arg-type]
        **options,  # type: ignore[arg-type]
    )
    return out.stdout


def parse(out: str) -> tuple[dict[str, tuple[str, str]], dict[str, str], int, int]:
    """(limits by name, status fields, oom_score_adj, nice) from SHOW's output."""
    limits: dict[str, tuple[str, str]] = {}
    status: dict[str, str] = {}
    lines = out.splitlines()
    for line in lines[1:]:
        if line.startswith("Max "):
            name, soft, hard = line[:26].strip(), line[26:47].strip(), line[47:68].strip()
            limits[name] = (soft, hard)
        elif ":\t" in line:
            key, value = line.split(":\t", 1)
            status[key] = value
    oom = int(lines[-2])
    stat = lines[-1]
    nice = int(stat[stat.rindex(")") + 2 :].split()[16])
    return limits, status, oom, nice


# ---- rlimits -------------------------------------------------------------------


def test_rlimits_are_set_in_the_child(how: str) -> None:
    out = run_child(
        how,
        rlimits={
            resource.RLIMIT_NOFILE: (64, 128),
            "CORE": 0,
            "rlimit_fsize": (1 << 20, resource.RLIM_INFINITY),
        },
    )
    limits, _, _, _ = parse(out)
    assert limits["Max open files"] == ("64", "128")
    assert limits["Max core file size"] == ("0", "0")
    assert limits["Max file size"] == (str(1 << 20), "unlimited")
    assert resource.getrlimit(resource.RLIMIT_NOFILE) != (64, 128)  # ours untouched


def test_a_limit_over_fs_nr_open_is_a_permission_error_naming_it(how: str) -> None:
    with open("/proc/sys/fs/nr_open") as f:
        nr_open = int(f.read())
    with pytest.raises(PermissionError, match=r"RLIMIT_NOFILE.*CAP_SYS_RESOURCE"):
        run_child(how, rlimits={"NOFILE": nr_open + 1})
    assert not zombies()


@pytest.mark.parametrize(
    "rlimits, exc, match",
    [
        ({"NOFILE": (10, 5)}, ValueError, "above the hard limit"),
        ({"BOGUS": 1}, ValueError, "unknown resource"),
        ({999: 1}, ValueError, "unknown resource number"),
        ({"NOFILE": -2}, ValueError, "RLIM_INFINITY"),
        ({"NOFILE": 2**64}, ValueError, "RLIM_INFINITY"),
        ({"NOFILE": (1, 2, 3)}, ValueError, "soft, hard"),
        ({"NOFILE": 1, resource.RLIMIT_NOFILE: 2}, ValueError, "twice"),
        ({"NOFILE": 1.5}, TypeError, "int"),
        ({"NOFILE": True}, TypeError, "int"),
        ([("NOFILE", 1)], TypeError, "mapping"),
    ],
)
def test_bad_rlimits_are_refused_before_any_child(rlimits: object, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        pyclone3.spawn(["/bin/true"], rlimits=rlimits)  # type: ignore[arg-type]
    with pytest.raises(exc, match=match):
        pyclone3.Popen(["/bin/true"], rlimits=rlimits)  # type: ignore[arg-type]


def test_rlim_infinity_is_the_kernels() -> None:
    opts = check_sandbox_options(rlimits={"AS": resource.RLIM_INFINITY, "CPU": (1, -1)})
    assert opts.rlimits == (
        (resource.RLIMIT_AS, RLIM_INFINITY, RLIM_INFINITY),
        (resource.RLIMIT_CPU, 1, RLIM_INFINITY),
    )


# ---- no_new_privs, nice, oom_score_adj, affinity -----------------------------------


def test_no_new_privs(how: str) -> None:
    _, status, _, _ = parse(run_child(how, no_new_privs=True))
    assert status["NoNewPrivs"] == "1"
    assert _status_of("self")["NoNewPrivs"] == "0"


def test_nice_and_oom_score_adj(how: str) -> None:
    _, _, oom, nice = parse(run_child(how, nice=7, oom_score_adj=345))
    assert (nice, oom) == (7, 345)
    with open("/proc/self/oom_score_adj") as f:
        assert int(f.read()) != 345  # the vfork child's write did not reach us


def test_lowering_oom_score_adj_needs_cap_sys_resource(how: str) -> None:
    if _has_cap("CAP_SYS_RESOURCE"):
        _, _, oom, _ = parse(run_child(how, oom_score_adj=-17))
        assert oom == -17
    else:
        with pytest.raises(PermissionError, match="CAP_SYS_RESOURCE"):
            run_child(how, oom_score_adj=-17)


def test_cpu_affinity(how: str) -> None:
    ours = os.sched_getaffinity(0)
    cpu = max(ours)
    _, status, _, _ = parse(run_child(how, cpu_affinity=[cpu]))
    assert status["Cpus_allowed_list"] == str(cpu)
    assert os.sched_getaffinity(0) == ours


@pytest.mark.parametrize(
    "options, exc",
    [
        ({"nice": 20}, ValueError),
        ({"nice": "1"}, TypeError),
        ({"oom_score_adj": 1001}, ValueError),
        ({"cpu_affinity": []}, ValueError),
        ({"cpu_affinity": [-1]}, ValueError),
        ({"cpu_affinity": "0"}, TypeError),
        ({"capabilities": ["CAP_NOPE"]}, ValueError),
        ({"capabilities": [99]}, ValueError),
        ({"capabilities": "CAP_KILL"}, TypeError),
        ({"no_new_privs": 1}, TypeError),
        ({"seccomp": b"1234567"}, ValueError),
        ({"seccomp": "x"}, TypeError),
        ({"landlock": ["/tmp"]}, TypeError),
    ],
)
def test_bad_options_are_refused_before_any_child(options: dict, exc: type) -> None:
    with pytest.raises(exc):
        pyclone3.spawn(["/bin/true"], **options)


# ---- capabilities ----------------------------------------------------------------


def test_capabilities_keep_only_those_named(how: str) -> None:
    if not _has_cap("CAP_SETPCAP"):
        pytest.skip("dropping from the bounding set needs CAP_SETPCAP (run as root)")
    bounding = int(_status_of("self")["CapBnd"], 16)
    _, status, _, _ = parse(run_child(how, capabilities=["CAP_KILL", "net_bind_service", 0]))
    kept = (1 << 5 | 1 << 10 | 1 << 0) & bounding
    assert int(status["CapBnd"], 16) == kept
    assert int(status["CapAmb"], 16) == 0
    if os.geteuid() == 0:  # a root child holds what its bounding set has left
        assert int(status["CapEff"], 16) == kept
    assert int(_status_of("self")["CapBnd"], 16) == bounding


# ---- seccomp ---------------------------------------------------------------------

MKDIR = "mkdir {0}/d 2>&1 | grep -o 'Read-only file system\\|Operation not permitted'"


@pytest.mark.skipif(sys.platform != "linux", reason="Linux only")
def test_seccomp_denied_syscall_returns_the_errno(how: str, tmp_path: object) -> None:
    try:
        denied = seccomp.deny({"mkdir": errno.EROFS, "mkdirat": errno.EROFS})
    except ValueError as exc:
        pytest.skip(str(exc))
    command = MKDIR.format(tmp_path) + "; grep Seccomp: /proc/self/status"
    out = run_child(how, command, seccomp=denied, no_new_privs=True)
    assert "Read-only file system" in out and "Seccomp:\t2" in out
    assert not os.path.exists(f"{tmp_path}/d")


def test_seccomp_raw_bytes_and_allow_only(how: str, tmp_path: object) -> None:
    try:
        from pyclone3 import _syscall_table

        table = _syscall_table.X86_64 if os.uname().machine == "x86_64" else {}
        names = [n for n in table if n not in ("mkdir", "mkdirat")]
        allowed = seccomp.allow_only(names)
    except ValueError as exc:
        pytest.skip(str(exc))
    if not names:
        pytest.skip("no name table for this machine")
    out = run_child(how, MKDIR.format(tmp_path), seccomp=allowed.program, no_new_privs=True)
    assert "Operation not permitted" in out


def test_seccomp_kill(how: str) -> None:
    denied = seccomp.deny({"getppid": seccomp.KILL})
    extra = {"preexec_fn": lambda: None} if how == "preexec_fn" else {}
    with pyclone3.Popen(
        [PYTHON, "-c", "import os; os.getppid()"], seccomp=denied, no_new_privs=True, **extra
    ) as p:
        assert p.wait(timeout=30) == -31  # SIGSYS


def test_seccomp_filter_checks_the_architecture_first() -> None:
    import struct

    f = seccomp.deny(["getpid"])
    code, _, _, k = struct.unpack("=HBBI", f.program[:8])
    assert (code, k) == (0x20, 4)  # load seccomp_data.arch
    code, _, _, k = struct.unpack("=HBBI", f.program[8:16])
    assert code == 0x15 and k == seccomp.AUDIT_ARCH[os.uname().machine]
    assert struct.unpack("=HBBI", f.program[16:24])[3] == 0x80000000  # else kill


# ---- Landlock --------------------------------------------------------------------

needs_landlock = pytest.mark.skipif(abi_version() < 1, reason="no Landlock on this kernel")
SYSTEM_RO = ["/bin", "/usr", "/lib", "/lib64", "/etc", "/proc", "/dev"]


@needs_landlock
def test_landlock_write_inside_rw_only(how: str, tmp_path: object) -> None:
    inside, outside = f"{tmp_path}/in", f"{tmp_path}/out"
    os.mkdir(inside)
    os.mkdir(outside)
    ruleset = Landlock(ro=[p for p in SYSTEM_RO if os.path.exists(p)], rw=[inside])
    command = (
        f"echo a > {inside}/f && echo ok; echo b > {outside}/f 2>&1 || echo denied; "
        f"ls {outside} 2>&1 || true"
    )
    out = run_child(how, command, landlock=ruleset, no_new_privs=True)
    assert out.startswith("ok\n")
    assert "denied\n" in out  # writing outside (sh says why on its own stderr)
    assert "cannot open directory" in out and "Permission denied" in out  # and reading
    assert not os.path.exists(f"{outside}/f") and os.path.exists(f"{inside}/f")


@needs_landlock
def test_landlock_without_ro_leaves_reading_alone(how: str, tmp_path: object) -> None:
    out = run_child(
        how,
        f"head -c5 /etc/passwd; touch {tmp_path}/x 2>&1 || true",
        landlock=Landlock(ro=None),
    )
    assert out.startswith("root:") and "Permission denied" in out


def test_landlock_bad_path_fails_before_the_spawn() -> None:
    with pytest.raises(FileNotFoundError):
        pyclone3.spawn(["/bin/true"], landlock=Landlock(rw=["/no/such/dir"]), no_new_privs=True)
    assert not zombies()


def test_landlock_strict_refuses_what_the_kernel_lacks(monkeypatch: pytest.MonkeyPatch) -> None:
    from pyclone3 import landlock

    monkeypatch.setattr(landlock, "abi_version", lambda: 0)
    with pytest.raises(OSError, match="strict"):
        pyclone3.spawn(["/bin/true"], landlock=Landlock(strict=True))
    child = pyclone3.spawn(["/bin/true"], landlock=Landlock())  # best effort: unrestricted
    assert child.pidfd is not None
    with child.pidfd as pidfd:
        assert pidfd.wait().exit_code == 0


def test_features_reports_the_landlock_abi() -> None:
    assert pyclone3.features().landlock_abi == abi_version()


# ---- privilege and order ---------------------------------------------------------

UNPRIVILEGED = textwrap.dedent(
    """
    import os, sys
    sys.path[:0] = {path!r}
    from conftest import become_nobody
    become_nobody()
    import pyclone3
    from pyclone3 import seccomp
    for options in (
        dict(seccomp=seccomp.deny(["getpid"])),
        dict(capabilities=[]),
        dict(oom_score_adj=-1),
        dict(nice=-5),
    ):
        try:
            pyclone3.spawn(["/bin/true"], **options).pidfd.wait()
            print("ok")
        except PermissionError as exc:
            print(exc)
    """
)


@pytest.mark.skipif(NOBODY_REASON is not None, reason=NOBODY_REASON or "")
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become nobody")
def test_unprivileged_child_gets_clear_permission_errors() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    script = UNPRIVILEGED.format(path=[here, *sys.path])
    out = subprocess.run(
        [PYTHON, "-c", script], capture_output=True, text=True, check=True, cwd="/"
    ).stdout.splitlines()
    assert len(out) == 4, out
    assert "no_new_privs=True or CAP_SYS_ADMIN" in out[0]
    assert "CAP_SETPCAP" in out[1]
    assert "CAP_SYS_RESOURCE" in out[2]
    assert "CAP_SYS_NICE" in out[3]


@needs_threads
def test_sandboxed_spawns_while_other_threads_churn_malloc(spawn_path: str) -> None:
    with malloc_churn(), malloc_churn():
        for _ in range(20):
            out = run_child(
                "plain",
                "grep NoNewPrivs /proc/self/status",
                no_new_privs=True,
                rlimits={"NOFILE": 50},
                nice=3,
            )
            assert out == "NoNewPrivs:\t1\n"


# ---- hypothesis: the parent's verdict is what the child then sees ---------------------

# A valid limit here is one sh can run under (it needs a few fds), or infinity.
limit = st.one_of(st.integers(-3, -1), st.integers(20, 400))
limits = st.one_of(limit, st.tuples(limit, limit))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    nofile=st.none() | limits,
    core=st.none() | limits,
    nice=st.none() | st.integers(0, 21),
    oom=st.none() | st.integers(0, 1001),
    nnp=st.booleans(),
)
def test_parent_verdict_matches_the_child(
    nofile: object, core: object, nice: int | None, oom: int | None, nnp: bool
) -> None:
    rlimits = {}
    if nofile is not None:
        rlimits["NOFILE"] = nofile
    if core is not None:
        rlimits["CORE"] = core
    options = dict(rlimits=rlimits or None, nice=nice, oom_score_adj=oom, no_new_privs=nnp)
    fds = set(os.listdir("/proc/self/fd"))
    try:
        opts = check_sandbox_options(**options)  # type: ignore[arg-type]
    except ValueError:
        with pytest.raises(ValueError):
            run_child("plain", **options)
        return
    hard_nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    raises_nofile = any(
        r == resource.RLIMIT_NOFILE and hard > hard_nofile for r, _, hard in opts.rlimits
    )
    if raises_nofile and not _has_cap("CAP_SYS_RESOURCE"):
        with pytest.raises(PermissionError):
            run_child("plain", **options)
        return
    limits_, status, got_oom, got_nice = parse(run_child("plain", **options))
    for r, soft, hard in opts.rlimits:
        name = "Max open files" if r == resource.RLIMIT_NOFILE else "Max core file size"
        show = [str(v) if v != RLIM_INFINITY else "unlimited" for v in (soft, hard)]
        assert limits_[name] == tuple(show)
    if nice is not None:
        assert got_nice == nice
    if oom is not None:
        assert got_oom == oom
    assert status["NoNewPrivs"] == ("1" if nnp else "0")
    assert set(os.listdir("/proc/self/fd")) == fds and not zombies()
