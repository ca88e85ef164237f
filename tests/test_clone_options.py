"""Spawn-time Linux features, each proven from inside the child it was asked for.

The child reads its own /proc/self/ns/*, /proc/self/cgroup, uid_map, PID
and hostname and prints them; the test compares with what the parent sees.
Privileged features run as root and skip without it; what an unprivileged
user gets instead is checked in a child that drops to nobody.
"""

from __future__ import annotations

import errno
import os
import signal
import struct
import uuid
from collections.abc import Iterator

import pytest
from conftest import (
    CLONE_PATHS,
    FEATURES,
    NOBODY,
    PYTHON,
    become_nobody,
    fork_child,
    needs_stdlib_spawn,
    needs_threads,
    require,
    requires_clone_options,
    requires_root,
    requires_userns,
    sleeper,
)

import pyclone3
from pyclone3 import CloneFlag, clone_options
from pyclone3.clone_options import NAMESPACE_FLAGS, check_clone_options

pytestmark = require("waitid_pidfd")  # these tests reap through pidfds

NS_FILES = {
    CloneFlag.CLONE_NEWNS: "mnt",
    CloneFlag.CLONE_NEWPID: "pid",
    CloneFlag.CLONE_NEWNET: "net",
    CloneFlag.CLONE_NEWUTS: "uts",
    CloneFlag.CLONE_NEWIPC: "ipc",
    CloneFlag.CLONE_NEWUSER: "user",
    CloneFlag.CLONE_NEWCGROUP: "cgroup",
    CloneFlag.CLONE_NEWTIME: "time",
}
# A child's namespaces: pid and time are the ones it was born into, which
# /proc/self/ns/{pid,time} name (the *_for_children links name the next).
REPORT = (
    "echo pid=$$; echo host=$(hostname); echo uid=$(id -u); "
    "for n in mnt pid net uts ipc user cgroup time; do "
    "echo ns_$n=$(readlink /proc/self/ns/$n); done; "
    "echo cgroup=$(grep '^0::' /proc/self/cgroup)"
)


def report(**kw: object) -> dict[str, str]:
    """Spawn the REPORT script with *kw*; return what the child printed, after reaping it."""
    r, w = os.pipe()
    try:
        child = pyclone3.spawn(["/bin/sh", "-c", REPORT], stdout=w, **kw)  # type: ignore[arg-type]
    finally:
        os.close(w)
    try:
        with os.fdopen(r, "rb") as f:
            out = f.read().decode()
    finally:
        assert child.pidfd is not None
        status = child.pidfd.wait()
        child.pidfd.close()
    assert status.exit_code == 0, out
    return dict(line.split("=", 1) for line in out.splitlines())


def own_ns(name: str) -> str:
    return os.readlink(f"/proc/self/ns/{name}")


def unprivileged(body: object) -> int:
    """Run *body* in a child that drops to uid/gid nobody; its exit code."""

    def run() -> int:
        become_nobody()
        return body()  # type: ignore[operator,no-any-return]

    child = fork_child(run)
    try:
        return child.wait(30).returncode
    finally:
        child.close()


def skip_unless_path(path: str) -> None:
    from conftest import _path_unavailable

    reason = _path_unavailable(path)
    if reason:
        pytest.skip(reason)


# ---- the checks before any syscall --------------------------------------------


@pytest.mark.parametrize(
    ("kw", "rule"),
    [
        ({"clone_flags": CloneFlag.CLONE_VM}, "spawn-flags"),
        ({"clone_flags": CloneFlag.CLONE_INTO_CGROUP}, "spawn-flags"),
        ({"clone_flags": 1 << 40}, "spawn-flags"),
        (
            {"clone_flags": CloneFlag.CLONE_PARENT, "exit_signal": signal.SIGCHLD},
            "parent-exit-signal",
        ),
        ({"exit_signal": 65}, "exit-signal-range"),
        ({"exit_signal": -1}, "exit-signal-range"),
        ({"set_tid": list(range(1, 34))}, "set-tid-size"),
        ({"set_tid": [5000, 5000, 5000]}, "set-tid-depth"),
        ({"set_tid": [0]}, "set-tid-range"),
        ({"set_tid": [1 << 30]}, "set-tid-range"),
        ({"clone_flags": CloneFlag.CLONE_NEWPID, "set_tid": [2]}, "set-tid-newpid"),
        ({"uid_map": [(0, 0, 1)]}, "maps-need-newuser"),
        ({"setgroups": False}, "maps-need-newuser"),
        ({"setns": (0, 0)}, "setns-flags"),
        ({"setns": (0, CloneFlag.CLONE_VM)}, "setns-flags"),
        (
            {"clone_flags": CloneFlag.CLONE_NEWNET, "setns": (0, CloneFlag.CLONE_NEWNET)},
            "setns-flags",
        ),
    ],
)
def test_invalid_combinations_name_their_rule(kw: dict[str, object], rule: str) -> None:
    with pytest.raises(ValueError, match=rf"\[{rule}\]"):
        check_clone_options(**kw)  # type: ignore[arg-type]
    # spawn checks first, so nothing is created.
    with pytest.raises(ValueError, match=rf"\[{rule}\]"):
        pyclone3.spawn(["/bin/true"], **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kw",
    [
        {"clone_flags": "CLONE_NEWNET"},
        {"clone_flags": True},
        {"exit_signal": 1.5},
        {"set_tid": "12"},
        {"set_tid": [1.0]},
        {"cgroup": 1.5},
        {"cgroup": True},
        {"clone_flags": CloneFlag.CLONE_NEWUSER, "uid_map": b"0 0 1"},
        {"clone_flags": CloneFlag.CLONE_NEWUSER, "uid_map": [(0, "0", 1)]},
        {"clone_flags": CloneFlag.CLONE_NEWUSER, "setgroups": "deny"},
        {"setns": [0, CloneFlag.CLONE_NEWNET]},
        {"setns": ("x", CloneFlag.CLONE_NEWNET)},
    ],
)
def test_wrong_types_are_type_errors(kw: dict[str, object]) -> None:
    with pytest.raises(TypeError):
        check_clone_options(**kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "bad", ["0 0", "a b c", "", [(0, 0, 0)], [(-1, 0, 1)], [(0, 0, 1 << 32)], [(0, 0)]]
)
def test_bad_id_maps(bad: object) -> None:
    with pytest.raises(ValueError, match="uid_map"):
        check_clone_options(CloneFlag.CLONE_NEWUSER, uid_map=bad)  # type: ignore[arg-type]


def test_id_maps_are_formatted_for_the_kernel() -> None:
    opts = check_clone_options(
        CloneFlag.CLONE_NEWUSER, uid_map="0 1000 1\n1 100000 65536", gid_map=[(0, 1000, 1)]
    )
    assert opts.uid_map == b"0 1000 1\n1 100000 65536\n"
    assert opts.gid_map == b"0 1000 1\n"
    assert opts.setgroups is False  # denied by default with a gid_map, as unshare -r


def test_options_are_an_immutable_record() -> None:
    opts = check_clone_options(CloneFlag.CLONE_NEWUTS, set_tid=[])
    same = clone_options.CloneOptions(int(CloneFlag.CLONE_NEWUTS), exit_signal=signal.SIGCHLD)
    assert opts == same and hash(opts) == hash(same)
    assert opts != clone_options.CloneOptions() and opts != (opts.flags,)
    assert repr(clone_options.CloneOptions(setgroups=False)) == (
        "CloneOptions(flags=0, exit_signal=<Signals.SIGCHLD: 17>, set_tid=(), cgroup=None, "
        "uid_map=None, gid_map=None, setgroups=False, setns=None)"
    )
    with pytest.raises(AttributeError):
        opts.flags = 0  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del opts.set_tid  # type: ignore[misc]
    assert opts.flags == CloneFlag.CLONE_NEWUTS


def test_options_exclude_preexec_fn_and_no_pidfd() -> None:
    with pytest.raises(ValueError, match="no-preexec"):
        pyclone3.spawn(["/bin/true"], clone_flags=CloneFlag.CLONE_NEWUTS, preexec_fn=lambda: None)
    with pytest.raises(ValueError, match="no-preexec"):
        pyclone3.spawn(["/bin/true"], clone_flags=CloneFlag.CLONE_NEWUTS, create_pidfd=False)


def test_a_path_that_cannot_honour_the_options_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot honour"):
        pyclone3.spawn(["/bin/true"], clone_flags=CloneFlag.CLONE_NEWUTS, spawn_path="vfork")
    with pytest.raises(ValueError, match="cannot honour"):
        pyclone3.spawn(["/bin/true"], set_tid=[4000], spawn_path="clone")


# ---- namespaces ----------------------------------------------------------------


@requires_clone_options
@requires_root
@pytest.mark.parametrize("flag", list(NS_FILES), ids=lambda f: NS_FILES[f])
def test_each_namespace_flag_puts_the_child_in_a_new_one(flag: CloneFlag) -> None:
    name = NS_FILES[flag]
    if not os.path.exists(f"/proc/self/ns/{name}"):
        pytest.skip(f"this kernel has no {name} namespaces")
    if flag == CloneFlag.CLONE_NEWTIME and not FEATURES.clone3:
        pytest.skip("CLONE_NEWTIME needs clone3, which this kernel or sandbox lacks")
    plain = report()
    assert plain[f"ns_{name}"] == own_ns(name)
    inside = report(clone_flags=flag)
    assert inside[f"ns_{name}"] != own_ns(name)
    for other, other_name in NS_FILES.items():  # and only that one
        if (
            other != flag
            and other_name in plain
            and not (flag == CloneFlag.CLONE_NEWUSER and other_name == "user")
        ):
            assert inside[f"ns_{other_name}"] == plain[f"ns_{other_name}"], other_name


@requires_clone_options
@requires_root
def test_new_pid_and_uts_namespaces_seen_from_inside() -> None:
    inside = report(clone_flags=CloneFlag.CLONE_NEWPID | CloneFlag.CLONE_NEWUTS)
    assert inside["pid"] == "1"


@requires_clone_options
@requires_root
def test_all_namespaces_at_once_on_each_clone_path() -> None:
    every = NAMESPACE_FLAGS & ~CloneFlag.CLONE_NEWTIME
    for path in CLONE_PATHS:
        inside = report(clone_flags=every, spawn_path=path)
        assert inside["pid"] == "1"
        for name in ("mnt", "net", "uts", "ipc", "user", "cgroup"):
            assert inside[f"ns_{name}"] != own_ns(name), (path, name)


@requires_clone_options
def test_unprivileged_namespace_is_a_clear_permission_error() -> None:
    def body() -> int:
        try:
            pyclone3.spawn(["/bin/true"], clone_flags=CloneFlag.CLONE_NEWNET)
        except PermissionError as exc:
            return 0 if exc.errno == errno.EPERM else 2
        return 1

    assert unprivileged(body) == 0


# ---- user namespaces with ID maps -----------------------------------------------


@requires_clone_options
@requires_userns
def test_unprivileged_user_becomes_root_in_a_user_namespace() -> None:
    """unshare -r: an unprivileged user maps itself to root and is root inside."""
    r, w = os.pipe()

    def body() -> int:
        os.close(r)
        uid, gid = os.getuid(), os.getgid()
        child = pyclone3.spawn(
            ["/bin/sh", "-c", "id -u; id -g; cat /proc/self/uid_map /proc/self/setgroups"],
            stdout=w,
            clone_flags=CloneFlag.CLONE_NEWUSER,
            uid_map=[(0, uid, 1)],
            gid_map=[(0, gid, 1)],
        )
        assert child.pidfd is not None
        return child.pidfd.wait().returncode

    try:
        assert unprivileged(body) == 0
    finally:
        os.close(w)
    with os.fdopen(r) as f:
        out = f.read().split()
    outside = str(NOBODY if os.geteuid() == 0 else os.getuid())
    assert out == ["0", "0", "0", outside, "1", "deny"]


@requires_clone_options
@requires_root
def test_root_maps_a_range_and_allows_setgroups() -> None:
    r, w = os.pipe()
    try:
        child = pyclone3.spawn(
            ["/bin/sh", "-c", "id -u; cat /proc/self/uid_map /proc/self/setgroups"],
            stdout=w,
            clone_flags=CloneFlag.CLONE_NEWUSER,
            uid_map="0 0 1\n1 100000 1000",
            gid_map=[(0, 0, 1)],
            setgroups=True,
        )
    finally:
        os.close(w)
    with os.fdopen(r) as f:
        out = f.read().split()
    assert child.pidfd is not None
    assert child.pidfd.wait().returncode == 0
    child.pidfd.close()
    assert out == ["0", "0", "0", "1", "1", "100000", "1000", "allow"]


@requires_userns
@requires_clone_options
def test_a_refused_map_reaps_the_waiting_child() -> None:
    """Mapping someone else's uid fails with the kernel's error; nothing is left behind."""

    def body() -> int:
        before = len(os.listdir("/proc/self/fd"))
        try:
            pyclone3.spawn(["/bin/true"], clone_flags=CloneFlag.CLONE_NEWUSER, uid_map=[(0, 0, 1)])
        except PermissionError as exc:
            if not exc.filename.endswith("/uid_map"):
                return 3
        else:
            return 1
        try:
            os.waitpid(-1, os.WNOHANG | 0x40000000)  # __WALL
        except ChildProcessError:
            pass  # reaped: no child left
        else:
            return 4
        return 0 if len(os.listdir("/proc/self/fd")) == before else 5

    assert unprivileged(body) == 0


# ---- cgroup --------------------------------------------------------------------


@pytest.fixture
def cgroup_dir() -> Iterator[tuple[str, str]]:
    """A fresh cgroup v2 directory: (its path, its name as /proc/PID/cgroup shows it)."""
    mount = FEATURES.cgroup2_mount
    if mount is None:
        pytest.skip("no cgroup v2 hierarchy mounted")
    if os.geteuid() != 0:
        pytest.skip("needs root to create a cgroup")
    with open("/proc/self/cgroup") as f:
        own = next(line.split(":", 2)[2].strip() for line in f if line.startswith("0::"))
    path = os.path.join(mount, f"pyclone3-test-{uuid.uuid4().hex[:8]}")
    os.mkdir(path)
    if own != "/" and not own.startswith("/.."):
        pytest.skip("in a cgroup namespace or a nested cgroup: paths would not compare")
    rel = path[len(mount) :]
    try:
        yield path, rel
    finally:
        os.rmdir(path)


@pytest.mark.parametrize("path", ["clone3", "clone", "vfork_pidfd"])
def test_child_is_born_in_the_cgroup(cgroup_dir: tuple[str, str], path: str) -> None:
    skip_unless_path(path)
    where, rel = cgroup_dir
    inside = report(cgroup=where, spawn_path=path)
    assert inside["cgroup"] == f"0::{rel}"


def test_cgroup_as_an_fd(cgroup_dir: tuple[str, str]) -> None:
    where, rel = cgroup_dir
    fd = os.open(where, os.O_RDONLY | os.O_DIRECTORY)
    try:
        inside = report(cgroup=fd)
        assert inside["cgroup"] == f"0::{rel}"
        os.fstat(fd)  # still ours, still open
    finally:
        os.close(fd)


def test_cgroup_must_be_a_cgroup2_directory(tmp_path: object) -> None:
    with pytest.raises(ValueError, match="not a directory of a cgroup v2"):
        pyclone3.spawn(["/bin/true"], cgroup=str(tmp_path))
    with pytest.raises(FileNotFoundError) as info:
        pyclone3.spawn(["/bin/true"], cgroup="/nonexistent/cgroup")
    assert info.value.filename == "/nonexistent/cgroup"


def test_unprivileged_cgroup_is_a_clear_permission_error() -> None:
    mount = FEATURES.cgroup2_mount
    if mount is None:
        pytest.skip("no cgroup v2 hierarchy mounted")

    def body() -> int:
        for path in CLONE_PATHS:
            try:
                pyclone3.spawn(["/bin/true"], cgroup=mount, spawn_path=path)
            except PermissionError as exc:
                if exc.filename != mount:
                    return 3
            else:
                return 1
        return 0

    assert unprivileged(body) == 0


# ---- set_tid, exit_signal, CLONE_PARENT, setns -----------------------------------


def _free_pid() -> int:
    with open("/proc/sys/kernel/pid_max") as f:
        pid_max = int(f.read())
    for candidate in range(pid_max - 1000, pid_max - 1):
        if not os.path.exists(f"/proc/{candidate}"):
            return candidate
    raise AssertionError("no free PID")


@requires_root
@require("clone3")
def test_set_tid_chooses_the_pid() -> None:
    pid = _free_pid()
    assert report(set_tid=[pid])["pid"] == str(pid)


@requires_root
@require("clone3")
def test_set_tid_in_a_new_pid_namespace_chooses_both_pids() -> None:
    outer = _free_pid()
    r, w = os.pipe()
    try:
        child = pyclone3.spawn(
            ["/bin/sh", "-c", "echo $$"],
            stdout=w,
            clone_flags=CloneFlag.CLONE_NEWPID,
            set_tid=[1, outer],
        )
    finally:
        os.close(w)
    with os.fdopen(r) as f:
        assert f.read().strip() == "1"
    assert child.pid == outer
    assert child.pidfd is not None
    assert child.pidfd.wait().pid == outer
    child.pidfd.close()


@requires_root
@require("clone3")
def test_set_tid_of_a_pid_in_use_is_the_kernels_eexist() -> None:
    with pytest.raises(FileExistsError):
        pyclone3.spawn(["/bin/true"], set_tid=[os.getpid()])


@require("clone3")
def test_unprivileged_set_tid_is_a_clear_permission_error() -> None:
    def body() -> int:
        try:
            pyclone3.spawn(["/bin/true"], set_tid=[_free_pid()])
        except PermissionError:
            return 0
        return 1

    assert unprivileged(body) == 0


@requires_clone_options
@pytest.mark.parametrize("exit_signal", [0, signal.SIGUSR1])
def test_exit_signal_applies_until_exec(exit_signal: int) -> None:
    """The parent gets *exit_signal* if the child dies before exec; execve resets it to SIGCHLD.

    (execve(2): "the termination signal is reset to SIGCHLD".) Either way
    the pidfd waits for the child (with __WALL, which such a child needs).
    """
    got: list[int] = []
    old_usr1 = signal.signal(signal.SIGUSR1, lambda s, f: got.append(s))
    old_chld = signal.signal(signal.SIGCHLD, lambda s, f: got.append(s))
    try:
        with pytest.raises(FileNotFoundError):
            pyclone3.spawn(["/nonexistent/program"], exit_signal=exit_signal)
        for _ in range(100):  # run pending handlers
            pass
        died_early = list(got)
        got.clear()
        child = pyclone3.spawn(["/bin/true"], exit_signal=exit_signal)
        assert child.pidfd is not None
        assert child.pidfd.wait().exit_code == 0
        child.pidfd.close()
        for _ in range(100):
            pass
    finally:
        signal.signal(signal.SIGUSR1, old_usr1)
        signal.signal(signal.SIGCHLD, old_chld)
    assert died_early == ([exit_signal] if exit_signal else [])
    assert got == [signal.SIGCHLD]


@requires_clone_options
def test_clone_parent_makes_the_child_our_sibling() -> None:
    """A child spawned with CLONE_PARENT by a child of ours is our child: we reap it."""
    r, w = os.pipe()

    def body() -> int:
        child = pyclone3.spawn(["/bin/true"], clone_flags=CloneFlag.CLONE_PARENT)
        os.write(w, struct.pack("i", child.pid))
        return 0

    middle = fork_child(body)
    os.close(w)
    try:
        with os.fdopen(r, "rb") as f:
            (sibling,) = struct.unpack("i", f.read())
        assert middle.wait(30).returncode == 0
    finally:
        middle.close()
    pid, status = os.waitpid(sibling, 0)  # ours, though we did not spawn it
    assert pid == sibling and os.waitstatus_to_exitcode(status) == 0


@require("pidfd_send_signal")
@needs_threads
@requires_clone_options
@requires_root
@pytest.mark.parametrize("path", ["clone3", "clone", "vfork_pidfd"])
def test_setns_starts_the_child_in_another_process_namespaces(path: str) -> None:
    skip_unless_path(path)
    r, w = os.pipe()
    target = pyclone3.spawn(
        ["/bin/sh", "-c", "hostname pyclone3-target; echo ready; exec sleep 30"],
        stdout=w,
        clone_flags=CloneFlag.CLONE_NEWUTS | CloneFlag.CLONE_NEWNET | CloneFlag.CLONE_NEWPID,
    )
    os.close(w)
    assert target.pidfd is not None
    try:
        with os.fdopen(r) as f:
            assert f.readline() == "ready\n"
        flags = CloneFlag.CLONE_NEWUTS | CloneFlag.CLONE_NEWNET
        inside = report(setns=(target.pidfd, flags), spawn_path=path)
        assert inside["host"] == "pyclone3-target"
        assert inside["ns_net"] == os.readlink(f"/proc/{target.pid}/ns/net")
        assert inside["ns_pid"] == own_ns("pid")
        # With CLONE_NEWPID the child is born in the target's PID namespace.
        inside = report(setns=(target.pidfd, flags | CloneFlag.CLONE_NEWPID), spawn_path=path)
        assert inside["ns_pid"] == os.readlink(f"/proc/{target.pid}/ns/pid")
        assert int(inside["pid"]) > 1  # the target is its PID 1
    finally:
        target.pidfd.kill()
        target.pidfd.wait()
        target.pidfd.close()


@needs_threads
@requires_clone_options
@requires_root
@require("pidfd_send_signal")
def test_pdeathsig_with_setns_into_a_pid_namespace_is_refused() -> None:
    """With setns into a PID namespace the spawning thread is a helper that
    ends at once, which PR_SET_PDEATHSIG counts as the parent's death: the
    child would get the signal straight away, so the combination is refused."""
    target = pyclone3.spawn(["/bin/sleep", "30"], clone_flags=CloneFlag.CLONE_NEWPID)
    assert target.pidfd is not None
    try:
        with pytest.raises(ValueError, match="pdeathsig cannot be combined with setns"):
            pyclone3.spawn(
                ["/bin/true"],
                setns=(target.pidfd, CloneFlag.CLONE_NEWPID),
                pdeathsig=signal.SIGTERM,
            )
    finally:
        target.pidfd.kill()
        target.pidfd.wait()
        target.pidfd.close()


@require("pidfd_send_signal")
def test_unprivileged_setns_is_a_clear_permission_error() -> None:
    target = sleeper()
    try:

        def body() -> int:
            try:
                pyclone3.spawn(["/bin/true"], setns=(target.fileno(), CloneFlag.CLONE_NEWNET))
            except PermissionError:
                return 0
            return 1

        assert unprivileged(body) == 0
    finally:
        target.kill()
        target.wait()
        target.close()


CGROUP_FALLBACK = """
import json, sys
import pyclone3
child = pyclone3.spawn(["/bin/cat", "/proc/self/cgroup"], cgroup=sys.argv[1], stdout=1)
print(json.dumps({"path": child.path, "status": child.pidfd.wait().returncode}))
"""


@needs_stdlib_spawn
@pytest.mark.parametrize(
    ("rules", "path"),
    [
        (["clone3_cgroup=E2BIG"], "clone3"),  # a kernel before 5.7: no CLONE_INTO_CGROUP
        (["clone3_cgroup=EPERM"], "clone"),  # a sandbox that refuses it
        (["clone3=ENOSYS"], "clone"),  # no clone3 at all
    ],
)
def test_cgroup_fallback_when_clone_into_cgroup_is_refused(
    cgroup_dir: tuple[str, str], rules: list[str], path: str
) -> None:
    """The child joins the cgroup itself before exec, on whatever path remains."""
    import json
    import subprocess

    from test_sandbox import HERE, seccomp

    if not seccomp.supported():
        pytest.skip("no syscall table for this CPU")
    skip_unless_path(path)
    where, rel = cgroup_dir
    helper = os.path.join(HERE, "seccomp.py")
    result = subprocess.run(
        [PYTHON, helper, *rules, "--", PYTHON, "-c", CGROUP_FALLBACK, where],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert f"0::{rel}" in lines
    assert json.loads(lines[-1]) == {"path": path, "status": 0}


def test_module_is_exported() -> None:
    assert pyclone3.clone_options is clone_options


# ---- the same options through Popen (CommandExt) --------------------------------


@requires_clone_options
@requires_root
def test_popen_takes_the_clone_options(cgroup_dir: tuple[str, str]) -> None:
    where, rel = cgroup_dir
    out = pyclone3.check_output(
        ["/bin/sh", "-c", REPORT],
        clone_flags=CloneFlag.CLONE_NEWPID | CloneFlag.CLONE_NEWNET,
        cgroup=where,
    )
    inside = dict(line.split("=", 1) for line in out.decode().splitlines())
    assert inside["pid"] == "1"
    assert inside["ns_net"] != own_ns("net")
    assert inside["cgroup"] == f"0::{rel}"


def test_popen_checks_the_options_before_spawning() -> None:
    with pytest.raises(ValueError, match="parent-exit-signal"):
        pyclone3.Popen(["/bin/true"], clone_flags=CloneFlag.CLONE_PARENT, exit_signal=10)
    with pytest.raises(ValueError, match="no-preexec"):
        pyclone3.Popen(["/bin/true"], clone_flags=CloneFlag.CLONE_NEWNET, preexec_fn=os.getpid)


@requires_clone_options
@requires_userns
def test_popen_unprivileged_map_root_user() -> None:
    r, w = os.pipe()

    def body() -> int:
        os.close(r)
        result = pyclone3.run(
            ["/bin/sh", "-c", "id -u"],
            stdout=w,
            clone_flags=CloneFlag.CLONE_NEWUSER,
            uid_map=[(0, os.getuid(), 1)],
            gid_map=[(0, os.getgid(), 1)],
        )
        return result.returncode

    try:
        assert unprivileged(body) == 0
    finally:
        os.close(w)
    with os.fdopen(r) as f:
        assert f.read().strip() == "0"
