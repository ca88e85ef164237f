"""cffi out-of-line (API mode) builder for pyclone3's private module.

The C declarations for Python live in ``pyclone3/_clone3.cdef``; the C is
four translation units sharing one header, ``pyclone3/_clone3.h``:
``_syscalls.c`` (syscall wrappers), ``_spawn_child.c`` (what the child runs
between clone and exec), ``_sandbox_child.c`` (the child's sandbox steps)
and ``_spawn_parent.c`` (the parent's side of a spawn). cffi's generated
module only includes the header, so each file compiles on its own and
editors see C as C. setuptools runs it through
``cffi_modules`` (see ``setup.py``). ``python build_ffi.py`` compiles the
module under ``build/ffi`` and copies it next to the sources, for working on
the C code without reinstalling.
"""

from __future__ import annotations

import pathlib
import shutil

import cffi

HERE = pathlib.Path(__file__).resolve().parent
PKG = HERE / "pyclone3"

C_SOURCES = ["_syscalls.c", "_spawn_child.c", "_sandbox_child.c", "_spawn_parent.c"]


def make_builder(package_dir: str) -> cffi.FFI:
    """The builder, with the C found in *package_dir*.

    setuptools wants it relative to the project root; a standalone
    ``compile`` runs the compiler in its own directory, so it needs it absolute.
    """
    builder = cffi.FFI()
    builder.cdef((PKG / "_clone3.cdef").read_text(encoding="utf-8"))
    builder.set_source(
        "pyclone3._clone3",
        '#include "_clone3.h"\n',
        sources=[f"{package_dir}/{name}" for name in C_SOURCES],
        include_dirs=[package_dir],
        extra_compile_args=["-Wall", "-Wextra", "-Wno-unused-parameter"],
    )
    return builder


ffibuilder = make_builder("pyclone3")

if __name__ == "__main__":
    built = make_builder(str(PKG)).compile(tmpdir=str(HERE / "build" / "ffi"), verbose=True)
    shutil.copy(built, PKG)
    print(f"copied {built} into {PKG}")
