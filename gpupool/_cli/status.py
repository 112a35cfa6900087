"""``gpupool status``: the machine, as the ledger and NVML see it.

Per GPU, NVML's numbers and every process that holds it through gpupool (any
process on the machine that shares the ledger), then the machine-wide queue,
and the memory of processes gpupool does not manage. ``--json`` prints the
same as one object (:mod:`gpupool._cli.status_json`, schema in
docs/machine.md); ``--watch`` redraws it every ``--interval`` seconds until
Ctrl-C, which ends it normally (exit 0).

The view comes from one function, :func:`_machine_status`, so that tests put
any :class:`MachineStatus` in front of the real tables. A ``GPUPoolError`` it
raises (no usable provider, a ledger that cannot be read) is printed as one
``gpupool: error:`` line with exit code 2, the code of every "cannot even
start" error of the command line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.text import Text

from .._core.errors import GPUPoolError
from .._ledger.view import MachineStatus
from ..providers import FakeGPUProvider
from .args import add_fake_gpus_option, add_ledger_option, add_ray_options
from .console import OutputConsole
from .status_json import SCHEMA, status_to_json
from .status_view import machine_view

__all__ = ["SCHEMA", "add_parser", "run", "status_to_json"]

#: The shortest ``--interval``: a display refreshed faster is unreadable, and
#: each refresh reads the ledger and asks NVML.
MIN_INTERVAL_S = 0.1


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "status",
        help="show who uses the GPUs: holders, the queue, other processes",
        description=(
            "Show the machine: per GPU, NVML's memory, utilization and health, every "
            "process holding it through gpupool (user, pid, command, since when), the "
            "machine-wide queue, and memory used by processes gpupool does not manage."
        ),
    )
    add_ledger_option(parser)
    add_fake_gpus_option(parser, use="for machines without GPUs; with --ray, on every node")
    add_ray_options(parser, use="show every node of")
    parser.add_argument(
        "--node-timeout",
        type=_positive_seconds,
        default=30.0,
        metavar="SECONDS",
        help="with --ray: how long to wait for the nodes (default 30); a node that does "
        "not answer by then is one line",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object (schema in docs/machine.md); with --watch, one a line",
    )
    parser.add_argument("--watch", action="store_true", help="refresh in place until Ctrl-C")
    parser.add_argument(
        "--interval",
        type=_interval,
        metavar="SECONDS",
        help="seconds between refreshes with --watch (default 1)",
    )
    parser.set_defaults(handler=run)


def _interval(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds >= MIN_INTERVAL_S):
        raise argparse.ArgumentTypeError(
            f"SECONDS must be a number of seconds >= {MIN_INTERVAL_S}, got {text!r}"
        )
    return seconds


def _positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise argparse.ArgumentTypeError(f"SECONDS must be a number of seconds > 0, got {text!r}")
    return seconds


def _machine_status(args: argparse.Namespace) -> MachineStatus:
    """The one place the command gets its view (tests replace it)."""
    # Imported here: the ledger (SQLite, /proc) is only loaded by the command that needs it.
    from .._ledger.status import machine_status

    provider = None if args.fake_gpus is None else FakeGPUProvider(count=args.fake_gpus)
    status: MachineStatus = machine_status(args.ledger, provider=provider)
    return status


def run(args: argparse.Namespace) -> int:
    if args.interval is not None and not args.watch:
        print("gpupool status: error: --interval SECONDS needs --watch", file=sys.stderr)
        return 2
    if args.ray is not None:
        from .status_ray import run_cluster  # Ray is imported only with --ray

        return run_cluster(args)
    if args.provider is not None:
        print(
            "gpupool status: error: --provider MODULE:FUNCTION needs --ray ADDRESS", file=sys.stderr
        )
        return 2
    interval = 1.0 if args.interval is None else args.interval
    try:
        status = _machine_status(args)
    except GPUPoolError as error:
        print(f"gpupool: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(status_to_json(status), indent=None if args.watch else 2), flush=True)
        if args.watch:
            _watch_json(args, interval)
        return 0
    console = OutputConsole(highlight=False)
    notes = _notes(args)
    if not args.watch:
        console.print(machine_view(status, console.width, [*notes, *status.notes]))
        return 0
    notes.append(f"refreshed every {interval:g}s, Ctrl-C to stop")
    first = machine_view(status, console.width, [*notes, *status.notes])
    _watch(console, lambda: _view(args, console.width, notes), first, interval)
    return 0


def _notes(args: argparse.Namespace) -> list[str]:
    """What the reader should know about where the numbers come from."""
    notes = []
    if args.fake_gpus is not None:
        notes.append(f"{args.fake_gpus} fake GPU(s) (--fake-gpus)")
    else:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is not None:
            # machine_status shows the machine, so the mask is not applied: say so.
            notes.append(f"every GPU of the machine (CUDA_VISIBLE_DEVICES={visible} not applied)")
    return notes


def _view(args: argparse.Namespace, width: int, notes: list[str]) -> RenderableType:
    """A fresh view, or the error that kept it from being taken (the watch goes on)."""
    try:
        status = _machine_status(args)
        return machine_view(status, width, [*notes, *status.notes])
    except GPUPoolError as error:
        when = time.strftime("%H:%M:%S")
        return Group(
            Text(f"{when}: could not read the machine's status: {error}", style="bold red"),
            Text("; ".join([*notes, "retrying"]), style="dim"),
        )


def _watch(
    console: Console, view: Callable[[], RenderableType], first: RenderableType, interval: float
) -> None:
    """Redraw ``view()`` every ``interval`` seconds until Ctrl-C.

    On a terminal, in place (rich Live, refreshed only when a new view is in:
    no refresh thread); elsewhere (a pipe, a file) each view is printed in
    turn, since there is no place to redraw. Between views the process sleeps.
    """
    try:
        if console.is_terminal:
            with Live(first, console=console, auto_refresh=False, redirect_stderr=False) as live:
                while True:
                    time.sleep(interval)
                    live.update(view(), refresh=True)
        else:
            console.print(first)
            while True:
                time.sleep(interval)
                console.print()
                console.print(view())
    except KeyboardInterrupt:
        return


def _watch_json(args: argparse.Namespace, interval: float) -> None:
    """``--json --watch``: one object a line (JSON Lines) every ``interval`` seconds."""
    try:
        while True:
            time.sleep(interval)
            try:
                status = _machine_status(args)
            except GPUPoolError as error:
                print(f"gpupool: error: {' '.join(str(error).split())}", file=sys.stderr)
                continue
            print(json.dumps(status_to_json(status)), flush=True)
    except KeyboardInterrupt:
        return
