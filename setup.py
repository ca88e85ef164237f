# cffi's setuptools integration: compiles pyclone3._clone3 from build_ffi.py.
# The module uses only the stable ABI (cffi builds with Py_LIMITED_API), so one
# wheel serves every CPython from 3.9 on.
from setuptools import setup

setup(
    cffi_modules=["build_ffi.py:ffibuilder"],
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
