"""The subcommands of the ``gpupool`` command line, one module each (see :mod:`gpupool._cli.main`),
and the argument types they share."""

from __future__ import annotations

import argparse
from collections.abc import Callable

__all__ = ["fake_gpus_arg", "int_arg"]


def int_arg(minimum: int, *, maximum: int | None = None, label: str = "") -> Callable[[str], int]:
    """An argparse ``type=`` for integers of at least ``minimum`` (and at most ``maximum``).

    One parser for every command's counts, so ``--fake-gpus -1`` or
    ``--errors -5`` fail the same way everywhere: at parse time, with exit
    code 2 and argparse's ``argument --x: <label> must be an int >= N`` line
    (``an int in [N, M]`` where there is a maximum).
    """
    prefix = f"{label} " if label else ""
    allowed = f"an int >= {minimum}" if maximum is None else f"an int in [{minimum}, {maximum}]"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"{prefix}must be {allowed}, got {text!r}")
        return value

    return parse


def fake_gpus_arg(minimum: int, *, label: str = "") -> Callable[[str], int]:
    """The ``--fake-gpus N`` parser: at most :data:`~gpupool.providers.fake.MAX_FAKE_GPUS`
    (1024), so that a typo such as ``--fake-gpus 100000000`` is refused, not a hang."""
    from ..providers.fake import MAX_FAKE_GPUS

    return int_arg(minimum, maximum=MAX_FAKE_GPUS, label=label)
