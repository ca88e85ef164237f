"""``python -m pyclone3``: the ``pyclone3`` command (see :mod:`pyclone3.cli`)."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
