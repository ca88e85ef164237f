# cffi's setuptools integration: compiles pyclone3._clone3 from build_ffi.py.
# The module uses only the stable ABI (cffi builds with Py_LIMITED_API), so one
# wheel serves every CPython from 3.9 on.
from __future__ import annotations

import os
import shutil

from setuptools import setup
from setuptools.command.build_ext import build_ext as _build_ext
from setuptools.errors import CCompilerError, ExecError

NO_COMPILER = (
    "pyclone3 needs a C compiler to build its extension module, and {program!r} "
    "was not found. Install gcc and the Python headers (Debian/Ubuntu: "
    "apt install gcc python3-dev; Fedora/RHEL: dnf install gcc python3-devel; "
    "Alpine: apk add gcc musl-dev python3-dev), or set CC to a C compiler."
)


class build_ext(_build_ext):
    """build_ext that says which package to install when there is no compiler.

    Without one, setuptools ends with the bare ``[Errno 2] No such file or
    directory: 'x86_64-linux-gnu-gcc'`` (or ``command 'gcc' failed``), which
    does not say that a compiler is what is missing, nor where to get it.
    """

    def build_extensions(self) -> None:
        try:
            super().build_extensions()
        except (CCompilerError, ExecError, OSError) as exc:
            program = _missing_program(exc, _programs(self.compiler))
            if program is None:
                raise
            # setup() prints a CCompilerError as one "error: ..." line, no traceback.
            raise CCompilerError(NO_COMPILER.format(program=program)) from exc


def _programs(compiler: object) -> set[str]:
    """The programs *compiler* runs: its compiler, linker, archiver..., as configured."""
    found = set()
    for name in getattr(compiler, "executables", {}):
        command = getattr(compiler, name, None)
        if command:
            found.add(os.fspath(command[0]))
    return found


def _missing_program(exc: BaseException | None, programs: set[str]) -> str | None:
    """Which of *programs* could not be run, if that is what *exc* comes from.

    The FileNotFoundError from starting the program sits under one or two
    wrappers (CompileError, DistutilsExecError), depending on the setuptools.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, FileNotFoundError) and exc.filename is not None:
            program = os.fsdecode(exc.filename)
            if program in programs and shutil.which(program) is None:
                return program
        exc = exc.__cause__ or exc.__context__
    return None


# setuptools runs this file as __main__; the test of build_ext imports it.
if __name__ == "__main__":
    setup(
        cffi_modules=["build_ffi.py:ffibuilder"],
        cmdclass={"build_ext": build_ext},
        options={"bdist_wheel": {"py_limited_api": "cp39"}},
    )
