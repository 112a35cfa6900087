"""The subcommands of the ``gpupool`` command line, one module each (see :mod:`gpupool._cli.main`),
and the argument types they share."""

from __future__ import annotations

import argparse
import functools
import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._core.errors import LedgerError
from .._ledger.location import DEFAULT, LEDGER_ENV, resolve_ledger
from .jobs_file import parse_duration, parse_memory_mb

__all__ = [
    "add_fake_gpus_option",
    "add_ledger_option",
    "add_ray_options",
    "duration_arg",
    "fake_gpus_arg",
    "int_arg",
    "ledger_dir",
    "ledger_path_arg",
    "memory_arg",
    "node_provider",
    "provider_arg",
    "seconds_arg",
    "size_text",
]


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


def add_fake_gpus_option(parser: argparse.ArgumentParser, *, use: str) -> None:
    """Declare ``--fake-gpus N`` (``args.fake_gpus``: an int, or None when not given).

    One declaration for every command where it means "pretend the machine has
    N GPUs" (``status``, ``reserve``, ``run``), so the bound, the error line and
    the help agree; ``use`` is the command's own note, shown in parentheses.
    ``gpupool demo`` declares its own: there it is the demo's size (at least 2,
    default 4), not a stand-in for NVML.
    """
    parser.add_argument(
        "--fake-gpus",
        type=fake_gpus_arg(1, label="N"),
        metavar="N",
        help=f"pretend the machine has N GPUs, without asking NVML ({use})",
    )


def ledger_path_arg(text: str) -> Path:
    """``--ledger PATH`` as a :class:`~pathlib.Path`; an empty ``PATH`` is refused.

    ``Path("")`` is the current directory, so ``--ledger "$UNSET_VAR"`` would
    otherwise read (or, for ``reserve`` and ``run``, create) a ledger nobody meant.
    """
    if not text:
        raise argparse.ArgumentTypeError(f"PATH must be a directory, got {text!r}")
    return Path(text)


def add_ledger_option(parser: argparse.ArgumentParser, *, note: str | None = None) -> None:
    """Declare ``--ledger PATH`` (``args.ledger``: a :class:`~pathlib.Path`, or None).

    Every command that touches the machine-wide ledger takes it the same way;
    None means the machine's default, which each command resolves itself
    (:func:`ledger_dir`, or the pool's ``ledger=DEFAULT``). ``note`` adds what
    differs for one command after the default (``gpupool run``: none with
    ``--fake-gpus``).
    """
    default = f"${LEDGER_ENV} or /dev/shm/gpupool"
    if note is not None:
        default += f"; {note}"
    parser.add_argument(
        "--ledger",
        type=ledger_path_arg,
        metavar="PATH",
        help=f"the machine-wide ledger's directory (default: {default})",
    )


def duration_arg(name: str) -> Callable[[str], float]:
    """An argparse ``type=`` for ``--timeout`` and ``--for``: ``90``, ``90s``, ``30m``,
    ``2h``, ``1h30m`` as seconds > 0; ``name`` is what the message calls it."""

    def parse(text: str) -> float:
        try:
            return parse_duration(text, name=name)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse


def memory_arg(text: str) -> int:
    """``--mem``: ``8G``, ``512M`` or ``8000`` (MB) as MB (binary units, as NVML counts)."""
    try:
        return parse_memory_mb(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def seconds_arg(text: str) -> float:
    """``--grace``: a finite number of seconds >= 0."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {text!r}")
    return value


def ledger_dir(given: Path | None) -> Path:
    """The ledger directory a command that only reads or signals uses (``gpupool release``).

    ``--ledger PATH`` if given, else the machine's default (``$GPUPOOL_LEDGER``,
    else ``/dev/shm/gpupool``); :class:`~gpupool.LedgerError` when the ledger
    is turned off and no path was given.
    """
    path = resolve_ledger(DEFAULT if given is None else given, real_gpus=True)
    if path is None:
        raise LedgerError(
            f"the machine-wide ledger is turned off (${LEDGER_ENV}="
            f"{os.environ.get(LEDGER_ENV, '')}): give its directory with --ledger PATH, "
            f"or unset ${LEDGER_ENV}"
        )
    return Path(os.path.abspath(path))


def size_text(mb: int) -> str:
    """Megabytes as the jobs file and ``--mem`` write them: ``24G``, ``1T`` where whole,
    else ``1500M``."""
    for unit, scale in (("T", 1024 * 1024), ("G", 1024)):
        if mb >= scale and mb % scale == 0:
            return f"{mb // scale}{unit}"
    return f"{mb}M"


def provider_arg(text: str) -> Callable[[], Any]:
    """``--provider MODULE:FUNCTION``: the function, imported here (on the driver).

    It must be a module-level callable of an importable module, so that Ray
    sends it to the nodes by reference and each node imports it there.
    """
    module_name, _, name = text.partition(":")
    if not module_name or not name:
        raise argparse.ArgumentTypeError(
            f"must be MODULE:FUNCTION (a zero-argument function returning a GPU provider), "
            f"got {text!r}"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise argparse.ArgumentTypeError(f"cannot import {module_name!r}: {error}") from None
    factory = getattr(module, name, None)
    if not callable(factory):
        raise argparse.ArgumentTypeError(
            f"{module_name} has no callable {name!r} (got {text!r}; MODULE:FUNCTION, "
            "a zero-argument function returning a GPU provider)"
        )
    return factory  # type: ignore[no-any-return]


def add_ray_options(parser: argparse.ArgumentParser, *, use: str) -> None:
    """Declare ``--ray ADDRESS`` and ``--provider MODULE:FUNCTION`` (``args.ray``,
    ``args.provider``; None when not given), the same way for every command that
    can work on a Ray cluster (``status``, ``run``); ``use`` says what ``--ray`` does."""
    parser.add_argument(
        "--ray",
        metavar="ADDRESS",
        help=(
            f"{use}: the Ray cluster at ADDRESS, as ray.init takes it (auto, HOST:PORT, "
            "ray://HOST:PORT); needs the extra gpupool[ray] (docs/ray.md)"
        ),
    )
    parser.add_argument(
        "--provider",
        type=provider_arg,
        metavar="MODULE:FUNCTION",
        help=(
            "with --ray: a zero-argument function, importable on every node, that each node "
            "calls for its GPU provider (default: NVML; e.g. for a test cluster without GPUs)"
        ),
    )


def node_provider(args: argparse.Namespace) -> Callable[[], Any] | None:
    """What each node of ``--ray`` calls for its GPUs: ``--provider``, else ``--fake-gpus N``
    on every node, else ``None`` (NVML). ``ValueError`` for what cannot go together."""
    if args.provider is not None and args.ray is None:
        raise ValueError("--provider MODULE:FUNCTION needs --ray ADDRESS (it is each node's)")
    if args.provider is not None and args.fake_gpus is not None:
        raise ValueError(
            f"--provider and --fake-gpus both say where the nodes' GPUs come from; give one, "
            f"got --fake-gpus {args.fake_gpus} and --provider"
        )
    if args.provider is not None:
        factory: Callable[[], Any] = args.provider
        return factory
    if args.fake_gpus is not None:
        # A partial of the class pickles by reference: every node imports gpupool anyway.
        from ..providers import FakeGPUProvider

        return functools.partial(FakeGPUProvider, count=args.fake_gpus)
    return None
