"""Sphinx configuration for pyclone3's documentation."""

from __future__ import annotations

import ast
import contextlib
import glob
import importlib
import pkgutil

from sphinx.util import logging

import pyclone3


def _import_what_annotations_name() -> None:
    """Make, in each pyclone3 module, the imports it makes for type checkers only.

    For start-up's sake pyclone3 imports ``typing``, and names only its
    annotations use, under ``if TYPE_CHECKING:``. autodoc evaluates the
    annotations, and would show them unresolved without those names. A name
    the module has at run time is left as it is (``pyclone3.popen.run`` is
    not ``subprocess.run``, whose types it borrows).
    """
    for info in pkgutil.iter_modules(pyclone3.__path__, "pyclone3."):
        module = importlib.import_module(info.name)
        if not (module.__file__ or "").endswith(".py"):
            continue
        with open(module.__file__, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        for node in tree.body:
            if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
                for stmt in node.body:
                    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                        code = compile(ast.Module([stmt], []), module.__file__, "exec")
                        names = dict(vars(module))
                        with contextlib.suppress(ImportError):  # typing_extensions, say
                            exec(code, names)
                        for name, value in names.items():
                            if name not in vars(module):
                                setattr(module, name, value)


_import_what_annotations_name()

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
