"""The ``pyclone3`` command: ``run``, ``wait`` and ``features``.

``run`` (:mod:`pyclone3.cli.run`) is ``timeout(1)`` on pidfds; ``wait``
(:mod:`pyclone3.cli.wait`) waits for any processes; ``features`` prints
:func:`pyclone3.features`. The arguments are parsed by
:mod:`pyclone3.cli.args`, except for the plainest ``run``, below.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence

from .common import RUN_DEFAULTS, OutputError, output, output_failed

TYPE_CHECKING = False  # typing itself is not imported: the command starts faster
if TYPE_CHECKING:
    from .common import Args

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command with *argv* (``sys.argv[1:]`` by default); return its exit status."""
    args = _plain_run(argv)
    if args is None:
        from .args import build_parser

        args = build_parser().parse_args(argv)
    try:
        if args.action == "run":
            from .run import cmd_run

            return cmd_run(args)
        if args.action == "wait":
            from .wait import cmd_wait

            return cmd_wait(args)
        return cmd_features(args)  # `python -m pyclone3` with no command: the report
    except OutputError as failed:
        return output_failed(failed.args[0])
    except KeyboardInterrupt:
        return 128 + signal.SIGINT


def _plain_run(argv: Sequence[str] | None) -> Args | None:
    """``run [--] CMD ARGS...`` with no option: what argparse would make of it, without argparse.

    The most common use of the command, and the one whose start-up counts:
    argparse, and building the parser, cost more than the rest of the
    command. Anything else (an option, ``--help``) goes to the parser.
    ``tests/test_cli.py`` checks the two agree.
    """
    if argv is None:
        import sys

        argv = sys.argv[1:]
    if len(argv) < 2 or argv[0] != "run":
        return None
    if argv[1] == "--":
        if len(argv) < 3:
            return None  # no command: the parser's message
    elif argv[1].startswith("-"):
        return None  # an option
    from types import SimpleNamespace

    return SimpleNamespace(action="run", json=False, command=list(argv[1:]), **RUN_DEFAULTS)


def cmd_features(args: Args) -> int:
    from .._features import features

    report = features()
    output(report.to_json() if args.json else report)
    return 0
