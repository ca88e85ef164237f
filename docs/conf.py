"""Sphinx configuration for pyclone3's documentation."""

from __future__ import annotations

import glob

from sphinx.util import logging

import pyclone3
import pyclone3.clone_options
import pyclone3.pidfd

# clone_options imports PidFd for type checkers only; autodoc evaluates the
# annotations at run time, and without it would show them as written, with
# private aliases (StrOrBytesPath) and unresolvable names.
pyclone3.clone_options.PidFd = pyclone3.pidfd.PidFd  # type: ignore[attr-defined]

project = "pyclone3"
author = "The pyclone3 developers"
copyright = "2026, The pyclone3 developers"
release = pyclone3.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.doctest",
    "sphinx.ext.intersphinx",
]

# Links into the standard library's documentation. Builds are offline, so its
# inventory is read from the local copy a distribution's Python documentation
# package installs (Debian: python3-doc, which .ci/run installs; Fedora:
# python3-docs); the links themselves point at docs.python.org.
_PYTHON_INVENTORIES = sorted(glob.glob("/usr/share/doc/python3*/html/objects.inv"))
if _PYTHON_INVENTORIES:
    intersphinx_mapping = {"python": ("https://docs.python.org/3", _PYTHON_INVENTORIES[0])}
else:
    intersphinx_mapping = {}
    logging.getLogger(__name__).warning(
        "no local inventory of the Python documentation: references to the standard "
        "library stay unresolved (install python3-doc on Debian, python3-docs on Fedora)"
    )
# Documented under resource.getrusage(), with no target of its own.
nitpick_ignore = [("py:class", "resource.struct_rusage")]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_type_aliases = {"FdLike": "~pyclone3.syscalls.FdLike"}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
exclude_patterns = ["_build"]
html_theme = "alabaster"
