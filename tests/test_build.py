"""Building from source: what setup.py's build_ext says when there is no C compiler.

These need the source tree (setup.py next to tests/) and setuptools in this
interpreter; they never touch the network. Each build runs in a child
interpreter, so setuptools' distutils shim never enters the test process.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SETUP_PY = ROOT / "setup.py"

pytestmark = [
    pytest.mark.skipif(not SETUP_PY.exists(), reason="no source tree (setup.py) here"),
    pytest.mark.skipif(
        importlib.util.find_spec("setuptools") is None, reason="setuptools is not installed"
    ),
]

MESSAGE = "pyclone3 needs a C compiler to build its extension module"

# A one-file extension built by setup.py's build_ext, in the current directory.
BUILD_ONE = """
import importlib.util, sys
from setuptools import Extension, setup
spec = importlib.util.spec_from_file_location("pyclone3_setup", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
setup(
    name="one",
    ext_modules=[Extension("one", ["one.c"])],
    cmdclass={"build_ext": module.build_ext},
    script_args=["build_ext", "--build-temp", "tmp", "--build-lib", "lib"],
)
"""


def _build(
    tmp_path: pathlib.Path, source: str, cc: str | None
) -> subprocess.CompletedProcess[str]:
    (tmp_path / "one.c").write_text(source)
    env = dict(os.environ)
    env.pop("DISTUTILS_DEBUG", None)  # it turns the one-line error into a traceback
    if cc is not None:
        env["CC"] = cc
    return subprocess.run(
        [sys.executable, "-c", BUILD_ONE, str(SETUP_PY)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def test_a_missing_compiler_is_named_with_what_to_install(tmp_path: pathlib.Path) -> None:
    missing = str(tmp_path / "no-such-cc")
    done = _build(tmp_path, "int one;\n", cc=missing)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert output.count(MESSAGE) == 1, output
    assert f"error: {MESSAGE}, and {missing!r} was not found." in output
    assert "apt install gcc python3-dev" in output
    assert "Errno" not in output and "Traceback" not in output, output


def test_a_compile_error_is_not_mistaken_for_a_missing_compiler(tmp_path: pathlib.Path) -> None:
    import sysconfig

    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(os.environ.get("CC", cc).split()[0]) is None:
        pytest.skip(f"no C compiler ({cc}) here")
    done = _build(tmp_path, "#error deliberately broken\n", cc=None)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "deliberately broken" in output
    assert MESSAGE not in output


def _setuptools_at_least(major: int) -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return int(version("setuptools").split(".")[0]) >= major
    except (PackageNotFoundError, ValueError):  # a 3.12+ venv has no setuptools
        return False


@pytest.mark.skipif(
    importlib.util.find_spec("cffi") is None or importlib.util.find_spec("pip") is None,
    reason="pip wheel --no-build-isolation needs pip and cffi installed here",
)
@pytest.mark.skipif(
    not _setuptools_at_least(77), reason="pyproject.toml needs setuptools>=77 to build"
)
def test_pip_building_the_project_without_a_compiler_says_so(tmp_path: pathlib.Path) -> None:
    """The whole path a user takes: pip, the build backend, cffi, build_ext."""
    tree = tmp_path / "src"
    tree.mkdir()
    for name in ("pyproject.toml", "setup.py", "build_ffi.py", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, tree)
    # A copy, so the build leaves no build/ or egg-info in the source tree.
    shutil.copytree(
        ROOT / "pyclone3",
        tree / "pyclone3",
        ignore=shutil.ignore_patterns("__pycache__", "*.so"),
    )
    missing = str(tmp_path / "no-such-cc")
    env = {k: v for k, v in os.environ.items() if k != "DISTUTILS_DEBUG"}
    env["CC"] = missing
    done = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps"),
            *("--no-index", "--wheel-dir", str(tmp_path / "wheels"), str(tree)),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert output.count(MESSAGE) == 1, output
    assert f"{missing!r} was not found" in output
    assert "Errno" not in output, output


@pytest.mark.skipif(importlib.util.find_spec("cffi") is None, reason="needs cffi")
def test_build_ffi_alone_compiles_the_module_from_any_directory(tmp_path: pathlib.Path) -> None:
    """``python build_ffi.py``, as its docstring offers for working on the C."""
    tree = tmp_path / "src"
    tree.mkdir()
    shutil.copy(ROOT / "build_ffi.py", tree)
    shutil.copytree(
        ROOT / "pyclone3",
        tree / "pyclone3",
        ignore=shutil.ignore_patterns("__pycache__", "*.so"),
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run(
        [sys.executable, str(tree / "build_ffi.py")],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    built = list((tree / "pyclone3").glob("_clone3*.so"))
    assert len(built) == 1, built
    check = subprocess.run(
        [sys.executable, "-c", "import pyclone3._clone3 as m; print(m.lib.SPAWN_CLONE3)"],
        cwd=tree,
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0 and check.stdout.strip().isdigit(), check.stderr
