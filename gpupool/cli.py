"""The ``gpupool`` command line.

MERGE NOTE: a stand-in for the full ``cli.py`` that the ``nvml`` branch
brings (same shape: each subcommand module exposes ``add_parser(subparsers)``
and sets a ``handler`` default). When both meet, keep that one and add
``_cli_run``, ``_cli_demo`` (and ``_cli_journal``) to its ``COMMANDS``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from . import _cli_demo, _cli_journal, _cli_run

__all__ = ["build_parser", "main"]

#: The subcommand modules, in the order ``gpupool --help`` lists them.
COMMANDS = (_cli_run, _cli_demo, _cli_journal)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpupool",
        description="Share the GPUs of one machine between many concurrent experiments.",
    )
    subparsers = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    subparsers.required = True
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    args = build_parser().parse_args(argv)
    code: int = args.handler(args)
    return code
