"""``pspnet`` command line: one module per subcommand, each a thin layer over the Python API.

Every module exposes ``add_parser(subparsers)`` which registers its subcommand and sets
``func`` to the function that runs it. Modules import torch and the library inside ``func``,
so ``pspnet --help`` answers at once. Problems the user can fix (``PSPNetError``) print one line
and exit with code 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from pspnet.version import __version__
from pspnet.cli import benchmark, calibrate, check_data, convert, evaluate, export, models, predict, serve, train
from pspnet.cli.options import HelpFormatter, Parser
from pspnet.errors import PSPNetError

COMMANDS = [train, evaluate, predict, check_data, convert, export, calibrate, benchmark, serve, models]


class _LogFormatter(logging.Formatter):
    """Plain messages; warnings and errors say so."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {text}"


def setup_logging(debug: bool = False) -> None:
    """The library logs through ``logging``; the CLI shows INFO and above on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LogFormatter("%(message)s"))
    root = logging.getLogger("pspnet")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="pspnet", formatter_class=HelpFormatter,
                                     description="PSPNet semantic segmentation: train, evaluate, predict, export, "
                                     "benchmark and serve.")
    parser.add_argument("--version", action="version", version=f"pspnet {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for module in COMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    setup_logging(args.debug)
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
