"""``python -m pyclone3``: print what this kernel and sandbox support."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__
from ._features import features


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pyclone3",
        description="Report which clone3/pidfd features this kernel and sandbox allow.",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--version", action="version", version=f"pyclone3 {__version__}")
    args = parser.parse_args(argv)
    report = features()
    print(report.to_json() if args.json else report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
