"""Sphinx configuration for pyclone3's documentation."""

from __future__ import annotations

import pyclone3

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
intersphinx_mapping = {}  # offline builds: no inventories are fetched
autodoc_member_order = "bysource"
autodoc_typehints = "description"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
exclude_patterns = ["_build"]
html_theme = "alabaster"
