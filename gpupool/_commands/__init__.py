"""The subcommands of the ``gpupool`` command line, one module each (see :mod:`gpupool.cli`),
and the argument types they share."""

from __future__ import annotations

import argparse
from collections.abc import Callable

__all__ = ["int_arg"]


def int_arg(minimum: int, *, label: str = "") -> Callable[[str], int]:
    """An argparse ``type=`` for integers of at least ``minimum``.

    One parser for every command's counts, so ``--fake-gpus -1`` or
    ``--errors -5`` fail the same way everywhere: at parse time, with exit
    code 2 and argparse's ``argument --x: <label> must be an int >= N`` line.
    """
    prefix = f"{label} " if label else ""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"{prefix}must be an int >= {minimum}, got {text!r}")
        return value

    return parse
