"""The ``gpupool`` command line.

Each subcommand lives in a module of :mod:`gpupool._cli` that exposes
``add_parser(subparsers)``; that function adds the subcommand's parser and
sets its ``handler`` default, a function from the parsed arguments to the
exit code. Adding a command is one module plus one entry in :data:`COMMANDS`.

Exit codes: 0 success, 1 a command's own failure, 2 bad usage or no usable
GPU provider (the message says what to do), 130 interrupted. A reader that
closes the pipe early (``gpupool journal export J | head -1``) ends the
command normally: exit 0, nothing on stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from importlib import metadata

from .._core.errors import GPUPoolError, ProviderError
from . import attach, demo, journal, logs, release, reserve, run, status

__all__ = ["build_parser", "main"]

#: The subcommand modules, in the order ``gpupool --help`` lists them.
COMMANDS = (run, logs, attach, demo, status, reserve, release, journal)


def _version() -> str:
    try:
        return metadata.version("gpupool")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpupool",
        description="Share the GPUs of one machine between many concurrent experiments.",
    )
    parser.add_argument("--version", action="version", version=f"gpupool {_version()}")
    subparsers = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    subparsers.required = True
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="gpupool: %(levelname)s: %(message)s")
    try:
        code: int = args.handler(args)
        sys.stdout.flush()  # a closed pipe shows here, not at the interpreter's exit
    except ProviderError as error:
        print(f"gpupool: error: {error}", file=sys.stderr)
        return 2
    except GPUPoolError as error:
        print(f"gpupool: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("gpupool: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`gpupool status --json | head`): it has what it
        # wanted, so this is a normal end. Point stdout at /dev/null so that the
        # interpreter's final flush of what is still buffered stays quiet (the
        # recipe of the Python docs, "Note on SIGPIPE").
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return code
