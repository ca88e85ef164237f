"""Type-checked, never run: pyclone3's subprocess API types as typeshed types ``subprocess``.

CI runs ``mypy --strict tests/typing``. A ``type: ignore`` below marks a
call that must be refused; with mypy's ``warn_unused_ignores`` (part of
``--strict``) the check fails if such a call is ever accepted.
"""

from __future__ import annotations

import subprocess
from typing import IO, Optional

from typing_extensions import assert_type

import pyclone3


def popen_is_str_or_bytes_as_subprocess_decides() -> None:
    assert_type(pyclone3.Popen(["x"]), pyclone3.Popen[bytes])
    assert_type(pyclone3.Popen(["x"], text=True), pyclone3.Popen[str])
    assert_type(pyclone3.Popen(["x"], encoding="utf-8"), pyclone3.Popen[str])
    assert_type(pyclone3.Popen(["x"], errors="replace"), pyclone3.Popen[str])
    assert_type(pyclone3.Popen(["x"], universal_newlines=True), pyclone3.Popen[str])
    text = pyclone3.Popen(["x"], stdout=subprocess.PIPE, text=True)
    assert_type(text.stdout, Optional[IO[str]])
    assert_type(text.communicate()[0], str)


def pyclone3_keywords_are_typed_too() -> None:
    p = pyclone3.Popen(["x"], create_pidfd=False, spawn_path="clone", pdeathsig=9)
    assert_type(p, pyclone3.Popen[bytes])
    assert_type(p.pidfd, pyclone3.PidFd)
    assert_type(p.returncode, Optional[int])
    pyclone3.Popen(["x"], clone_flags="CLONE_NEWUTS")  # type: ignore[call-overload]
    pyclone3.Popen(["x"], kill_tree=1.5)  # type: ignore[call-overload]


def misspelt_keywords_are_errors() -> None:
    pyclone3.Popen(["x"], stdoutt=1)  # type: ignore[call-overload]
    pyclone3.run(["x"], captur_output=True)  # type: ignore[call-overload]
    pyclone3.check_output(["x"], txt=True)  # type: ignore[call-overload]


def the_helpers_return_what_subprocess_returns() -> None:
    assert_type(pyclone3.run(["x"]), subprocess.CompletedProcess[bytes])
    assert_type(
        pyclone3.run(["x"], capture_output=True, text=True), subprocess.CompletedProcess[str]
    )
    assert_type(pyclone3.run(["x"], text=True).stdout, str)
    assert_type(pyclone3.check_output(["x"]), bytes)
    assert_type(pyclone3.check_output(["x"], encoding="utf-8"), str)
    assert_type(pyclone3.call(["x"]), int)
    assert_type(pyclone3.check_call(["x"]), int)
    assert_type(pyclone3.getoutput("x"), str)
    assert_type(pyclone3.getstatusoutput("x"), tuple[int, str])
