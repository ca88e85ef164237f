"""cffi out-of-line (API mode) builder for pyclone3's private module.

The C declarations live in ``pyclone3/_clone3.cdef`` and the C definitions in
``pyclone3/_clone3_impl.c`` (syscalls) and ``pyclone3/_spawn_impl.c`` (the
spawn core); this script only reads and joins them, so
editors and compilers see C as C. setuptools runs it through
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

ffibuilder = cffi.FFI()
ffibuilder.cdef((PKG / "_clone3.cdef").read_text(encoding="utf-8"))
C_SOURCES = ["_clone3_impl.c", "_spawn_impl.c"]

ffibuilder.set_source(
    "pyclone3._clone3",
    "\n".join((PKG / name).read_text(encoding="utf-8") for name in C_SOURCES),
    extra_compile_args=["-Wall", "-Wextra", "-Wno-unused-parameter"],
)

if __name__ == "__main__":
    built = ffibuilder.compile(tmpdir=str(HERE / "build" / "ffi"), verbose=True)
    shutil.copy(built, PKG)
    print(f"copied {built} into {PKG}")
