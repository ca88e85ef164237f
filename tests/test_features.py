"""features(): truthful, cached, printable, and never caching transient errors."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import FEATURES as FEATURES_REAL
from conftest import PYTHON, sleeper

import pyclone3
from pyclone3 import Features, PidFd, features, syscalls

#: Every field of the report, as its constructor takes them.
_FIELDS = list(inspect.signature(Features).parameters)


def test_cached_until_refreshed() -> None:
    first = features()
    assert features() is first
    fresh = features(refresh=True)
    assert fresh is not first and fresh == first


def test_every_field_is_printed() -> None:
    report = features()
    text = str(report)
    for name in _FIELDS:
        if name != "notes":
            assert name in text
    assert os.uname().release in text


def test_json_round_trips() -> None:
    report = features()
    data = json.loads(report.to_json())
    assert data == report.as_dict()
    assert set(data) == set(_FIELDS)


def test_the_report_is_an_immutable_record() -> None:
    report = features()
    again = Features(*(getattr(report, name) for name in _FIELDS))
    assert again == report and again is not report
    assert repr(again) == repr(report)
    assert repr(report).startswith(f"Features(kernel={report.kernel!r}, clone3={report.clone3!r}")
    with pytest.raises(AttributeError):
        report.clone3 = False  # type: ignore[misc]
    with pytest.raises(TypeError):  # notes is a dict
        hash(report)
    assert report.as_dict()["notes"] is not report.notes


def test_reported_features_work() -> None:
    """What features() says yes to, the kernel actually does (and vice versa)."""
    report = features()
    if report.pidfd_open:
        with sleeper() as child:
            assert report.pidfd_send_signal
            child.kill()
            assert child.wait().returncode == -9
    else:
        with pytest.raises(OSError):
            syscalls.pidfd_open(os.getpid())
    if report.clone_pidfd:
        pid, fd = syscalls.clone3(flags=pyclone3.CloneFlag.CLONE_PIDFD)
        if pid == 0:
            os._exit(0)
        assert fd is not None
        with PidFd(fd, pid=pid) as child:
            assert child.wait().exit_code == 0
    for name, value in report.as_dict().items():
        if value is False:
            assert name in report.notes, f"{name} is False without a reason"


def test_the_probe_leaves_no_child_and_no_fd() -> None:
    # The autouse leak fixture checks fds and zombies after this probe.
    assert isinstance(features(refresh=True), Features)


def run_isolated(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60
    )


def test_emfile_is_raised_not_cached_and_recovers() -> None:
    # In a disposable process: use up every fd, probe, free them, probe again.
    result = run_isolated(
        """
        import errno, os, resource
        import pyclone3._features as f
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
        held = []
        try:
            while True:
                held.append(os.open("/dev/null", os.O_RDONLY))
        except OSError as exc:
            assert exc.errno == errno.EMFILE
        try:
            f.features()
        except OSError as exc:
            assert exc.errno == errno.EMFILE, exc
            print("raised EMFILE")
        else:
            raise SystemExit("probe did not fail under EMFILE")
        assert f._cached is None, "a transient failure was cached"
        for fd in held:
            os.close(fd)
        report = f.features()
        assert report.pidfd_open and report.clone3, report
        print("recovered")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["raised", "EMFILE", "recovered"]


def test_python_dash_m_prints_the_report() -> None:
    out = subprocess.run(
        [PYTHON, "-m", "pyclone3"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "clone3" in out and "pidfd_open" in out
    data = json.loads(
        subprocess.run(
            [PYTHON, "-m", "pyclone3", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    )
    assert data["kernel"] == os.uname().release


def test_version_is_exposed() -> None:
    assert isinstance(pyclone3.__version__, str) and pyclone3.__version__
    out = subprocess.run(
        [sys.executable, "-m", "pyclone3", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert pyclone3.__version__ in out


def test_clone_pidfd_refused_with_einval_still_finds_clone3(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # qemu-user answers EINVAL to CLONE_PIDFD; seccomp cannot see clone3's
    # flags (they sit behind a pointer), so simulate it at the probe's call.
    import errno

    import pyclone3._features as f

    real = f._clone3_child

    def qemu_like(flags: int) -> tuple[int, int]:
        if flags & pyclone3.CloneFlag.CLONE_PIDFD:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(flags)

    monkeypatch.setattr(f, "_clone3_child", qemu_like)
    report = features(refresh=True)
    try:
        assert report.clone3 is True
        assert report.clone_pidfd is False and report.notes["clone_pidfd"] == "EINVAL"
        assert "clone3" not in report.notes
        assert report.pidfd_info_exit == FEATURES_REAL.pidfd_info_exit  # probed via pidfd_open
    finally:
        monkeypatch.undo()
        features(refresh=True)


def test_the_installed_package_is_the_one_under_test() -> None:
    # Set by the nox sessions, which test an installed pyclone3 (a wheel).
    if not os.environ.get("PYCLONE3_TEST_INSTALLED"):
        pytest.skip("testing the source tree (PYCLONE3_TEST_INSTALLED not set)")
    source = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pyclone3")
    assert os.path.dirname(os.path.abspath(pyclone3.__file__)) != source, pyclone3.__file__


def test_scope_says_whether_a_scope_can_be_made_and_leaves_no_cgroup() -> None:
    from pyclone3.scope import Scope, own_cgroup

    report = features(refresh=True)
    try:
        with Scope() as made:
            works = os.path.exists(os.path.join(made.path, "cgroup.kill"))
    except OSError:
        works = False
    assert report.scope == works
    assert ("scope" in report.notes) == (not works)
    if report.cgroup2_mount is not None:
        assert not [n for n in os.listdir(own_cgroup()) if n.startswith("pyclone3-probe-")]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to nobody")
def test_scope_is_false_where_our_cgroup_is_not_ours_to_write() -> None:
    from conftest import become_nobody, fork_child

    def body() -> int:
        become_nobody()
        report = features(refresh=True)
        return 0 if not report.scope and report.notes.get("scope") == "EACCES" else 1

    with fork_child(body) as child:
        assert child.wait(30).returncode == 0
