# cffi's setuptools integration: compiles pyclone3._clone3 from build_ffi.py.
from setuptools import setup

setup(cffi_modules=["build_ffi.py:ffibuilder"])
