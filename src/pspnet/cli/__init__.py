"""``pspnet`` command line: one module per subcommand, each a thin layer over the Python API.

Every module exposes ``add_parser(subparsers)`` which registers its subcommand and sets
``func`` to the function that runs it. Problems the user can fix (``PSPNetError``) print one line
and exit with code 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from pspnet.version import __version__
from pspnet.cli import benchmark, check_data, convert, export, predict, serve, train_eval
from pspnet.errors import PSPNetError

COMMANDS = [train_eval, predict, check_data, convert, export, benchmark, serve]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pspnet", description="PSPNet semantic segmentation: train, evaluate, "
                                     "predict, export, benchmark and serve.")
    parser.add_argument("--version", action="version", version=f"pspnet {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return args.func(args) or 0
    except PSPNetError as err:
        if args.debug:
            raise
        print(f"pspnet {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
