# Type stub for pyclone3's private cffi module (built by build_ffi.py).
# cffi's objects are dynamically typed: `ffi` and `lib` are Any-typed handles;
# the typed API is pyclone3.syscalls.
from typing import Any

ffi: Any
lib: Any
