"""nox sessions: tests on every CPython 3.9-3.13 present, lint, docs, and the wheel.

    nox                    # everything; a missing interpreter is skipped, with a message
    nox -s tests-3.13      # one Python
    nox -s wheel           # sdist -> wheel -> clean venv -> tests
    nox -s trio            # the trio/anyio examples, with both installed

With pyenv, every installed version is made visible to nox (PYENV_VERSION)
unless PYENV_VERSION is already set.
"""

from __future__ import annotations

import glob
import os
import pathlib

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
    """The Sphinx site, warnings as errors."""
    session.install("-e", ".[docs]")
    session.run("sphinx-build", "-q", "-W", "-b", "html", "docs", "docs/_build/html")


@nox.session(python=PYTHONS[2])
def wheel(session: nox.Session) -> None:
    """Build the sdist, the wheel from it, install the wheel alone, run the tests."""
    session.install("build")
    out = session.create_tmp()
    session.run("python", "-m", "build", "--outdir", out, ".")
    wheels = sorted(pathlib.Path(out).glob("*.whl"))
    if not wheels:
        session.error("no wheel was built")
    session.install(str(wheels[-1]), "pytest", "hypothesis")
    _pytest_outside_the_tree(session, ["-p", "no:cacheprovider"])


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
