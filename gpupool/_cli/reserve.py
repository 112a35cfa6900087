"""``gpupool reserve``: hold GPUs in the machine-wide ledger for interactive work.

``gpupool reserve --gpus 1 --mem 20G --for 2h -- jupyter lab`` waits in the
machine-wide queue like any other request, then runs the command with its
GPUs in ``CUDA_VISIBLE_DEVICES`` and holds them until the command exits or
the duration is over. Without a command it prints the environment to use and
holds the GPUs until the duration is over, SIGTERM, Ctrl-C or ``gpupool
release ID``. The hold is labelled ``reservation`` in the ledger (so ``gpupool
status`` tells it from a program's allocation, and ``gpupool release`` may end
it) and records when it ends (``until``).

The command runs in a session of its own with this terminal's stdin, stdout
and stderr (``gpupool._process.attached``). Signals:

* SIGINT (Ctrl-C) while the command runs is passed on to it, as if it ran in
  the foreground (Jupyter asks whether to shut down; a REPL interrupts); the
  reservation lasts as long as the command. Without a command, or while
  still waiting for GPUs, it ends the reservation (or the wait).
* SIGTERM and SIGHUP (``gpupool release``, a closed terminal) end the
  reservation: the command gets SIGTERM, the grace period, then SIGKILL, as
  in ``gpupool run``; a second one SIGKILLs it at once.
* The end of ``--for`` (counted from the grant, not from the start of the
  wait) ends it the same way.

A reader of the printed environment that goes away (``| head -3``) does not
end the hold.

Exit codes: the command's own when it exits by itself (128+N when signal N
ended it); 0 when the reservation was ended as asked (``--for`` over,
``gpupool release``, SIGTERM, Ctrl-C without a command); 1 when the GPUs were
not granted within ``--timeout`` or the request can never be met; 2 bad usage
or no usable GPUs or ledger; 126/127 a command that cannot be run / is not
found; 130 interrupted while waiting.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shlex
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, final

import anyio
import attrs

from .._core.errors import (
    GPUPoolError,
    LedgerError,
    PoolTimeout,
    ProviderError,
    UnsatisfiableRequest,
    WouldBlock,
)
from .._core.model import GPUAllocation
from .._ledger.location import DEFAULT, LEDGER_ENV, resolve_ledger
from .._pool.pool import GPUResourcePool
from .._process.attached import run_attached
from .._process.proctree import killpg_quietly
from .._process.run import DEFAULT_GRACE_PERIOD
from ..providers import FakeGPUProvider
from .args import (
    add_fake_gpus_option,
    add_ledger_option,
    duration_arg,
    int_arg,
    memory_arg,
    seconds_arg,
    size_text,
)

__all__ = ["ReserveOptions", "add_parser", "reserve"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CANNOT_RUN = 126
EXIT_NOT_FOUND = 127
EXIT_INTERRUPTED = 130

_PREFIX = "gpupool reserve"


@final
@attrs.frozen
class ReserveOptions:
    """What ``gpupool reserve`` was asked for (the command line, validated)."""

    gpus: int
    memory_mb: int = 0
    shared: bool = False
    duration: float | None = None
    timeout: float | None = None
    grace_period: float = DEFAULT_GRACE_PERIOD
    fake_gpus: int | None = None
    ledger: Path | None = None
    command: tuple[str, ...] = ()


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "reserve",
        help="hold GPUs for interactive work (a notebook), machine-wide",
        description=(
            "Wait in the machine-wide queue for GPUs, then hold them in the ledger: run "
            "COMMAND with them in CUDA_VISIBLE_DEVICES until it exits, or, without a "
            "command, print the environment to use and hold them until --for is over, "
            "Ctrl-C, or `gpupool release ID`."
        ),
        epilog=(
            "examples: gpupool reserve --gpus 1 --mem 20G --for 2h -- jupyter lab; "
            "gpupool reserve --gpus 2 --for 30m. "
            "exit codes: the command's own; 0 the reservation ended as asked; 1 not granted "
            "within --timeout, or never possible; 2 bad usage; 130 interrupted while waiting."
        ),
    )
    parser.add_argument(
        "--gpus", type=int_arg(1), required=True, metavar="N", help="how many GPUs to hold"
    )
    parser.add_argument(
        "--mem",
        type=memory_arg,
        default=0,
        metavar="SIZE",
        help=(
            "free memory each GPU must have (e.g. 20G); the GPUs are still held whole "
            "unless --shared is given"
        ),
    )
    parser.add_argument(
        "--shared",
        action="store_true",
        help="hold only --mem of each GPU, sharing it with other shared holders",
    )
    parser.add_argument(
        "--for",
        dest="duration",
        type=duration_arg("--for"),
        metavar="DURATION",
        help="end the reservation after DURATION (e.g. 90m, 2h; default: no limit)",
    )
    parser.add_argument(
        "--timeout",
        type=duration_arg("--timeout"),
        metavar="DURATION",
        help="give up if the GPUs are not granted within DURATION (default: wait)",
    )
    parser.add_argument(
        "--grace",
        type=seconds_arg,
        default=DEFAULT_GRACE_PERIOD,
        metavar="SECONDS",
        help=f"seconds between SIGTERM and SIGKILL for COMMAND (default {DEFAULT_GRACE_PERIOD:g})",
    )
    add_fake_gpus_option(parser, use="needs --ledger; for trying things out")
    add_ledger_option(parser)
    parser.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        metavar="-- COMMAND",
        help="the command to run on the GPUs (no shell: use `-- sh -c '...'` for one)",
    )
    parser.set_defaults(handler=command)
    return parser


def command(args: argparse.Namespace) -> int:
    """The ``gpupool reserve`` handler: the exit code."""
    words = list(args.command)
    if words and words[0] == "--":
        words = words[1:]
    if args.shared and args.mem == 0:
        _say("error: --shared needs --mem SIZE: how much of each GPU to hold")
        return EXIT_USAGE
    return reserve(
        ReserveOptions(
            gpus=args.gpus,
            memory_mb=args.mem,
            shared=args.shared,
            duration=args.duration,
            timeout=args.timeout,
            grace_period=args.grace,
            fake_gpus=args.fake_gpus,
            ledger=args.ledger,
            command=tuple(words),
        )
    )


def reserve(options: ReserveOptions) -> int:
    """Make the reservation of ``options``, hold it to its end; the exit code."""
    problem = _ledger_problem(options)
    if problem is not None:
        _say(f"error: {problem}")
        return EXIT_USAGE
    try:
        return anyio.run(_Reservation(options).main)
    except KeyboardInterrupt:  # before the signal handlers were installed
        _say("interrupted")
        return EXIT_INTERRUPTED


def _ledger_problem(options: ReserveOptions) -> str | None:
    """Why this reservation would be held in no ledger (and so protect nothing), or None."""
    if options.fake_gpus is not None and options.ledger is None:
        return (
            "--fake-gpus needs --ledger PATH: fake GPUs join no ledger by default, and a "
            "reservation in no ledger holds nothing that another process would respect"
        )
    if options.ledger is None and resolve_ledger(DEFAULT, real_gpus=True) is None:
        return (
            f"the machine-wide ledger is turned off (${LEDGER_ENV}="
            f"{os.environ.get(LEDGER_ENV, '')}), so a reservation would hold nothing that "
            f"another process would respect: give a ledger with --ledger PATH, or unset "
            f"${LEDGER_ENV}"
        )
    return None


def _say(message: str) -> None:
    print(f"{_PREFIX}: {message}", file=sys.stderr, flush=True)


def _exit_code(returncode: int) -> int:
    """A child's return code as a shell reports it: 128+N for signal N."""
    return 128 - returncode if returncode < 0 else returncode


# -- one reservation ---------------------------------------------------------------


@attrs.define(eq=False)
class _Reservation:
    options: ReserveOptions
    #: "waiting" (for the pool or the GPUs), "holding", then "ending".
    phase: str = "waiting"
    #: True once a signal asked for the end (SIGTERM, SIGHUP, or Ctrl-C where it ends it).
    stopped: bool = False
    #: The command's process group, while it runs.
    group: int | None = None
    #: The scope of the current phase, which a stop cancels.
    scope: anyio.CancelScope | None = None

    async def main(self) -> int:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._signals, signals)
                try:
                    return await self._run()
                except GPUPoolError as error:  # the ledger became unusable under us, for one
                    _say(f"error: {error}")
                    return EXIT_FAILED
                finally:
                    tg.cancel_scope.cancel()
        raise AssertionError("unreachable")  # pragma: no cover

    @contextlib.contextmanager
    def _stoppable(self) -> Iterator[anyio.CancelScope]:
        """A scope for one phase, cancelled by a stop (at once if one came already)."""
        scope = self.scope = anyio.CancelScope()
        if self.stopped:
            scope.cancel()
        try:
            with scope:
                yield scope
        finally:
            self.scope = None

    async def _signals(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            if self.phase == "holding" and signum == signal.SIGINT and self.group is not None:
                killpg_quietly(self.group, signal.SIGINT)  # Ctrl-C is for the command
            elif self.stopped:
                if self.group is not None:
                    killpg_quietly(self.group, signal.SIGKILL)
                    _say("forced stop: killed the command")
            else:
                self.stopped = True
                if self.scope is not None:
                    self.scope.cancel()

    async def _run(self) -> int:
        options = self.options
        fake = options.fake_gpus
        pool = GPUResourcePool(
            None if fake is None else FakeGPUProvider(count=fake),
            refresh_interval=0.25 if fake else 1.0,
            ledger=DEFAULT if options.ledger is None else options.ledger,
            _ledger_kind="reservation",
        )
        async with contextlib.AsyncExitStack() as stack:
            try:
                await stack.enter_async_context(pool)
            except (ProviderError, ImportError) as error:
                _say(f"error: cannot use the GPUs: {error} (to try it without GPUs: --fake-gpus N)")
                return EXIT_USAGE
            except LedgerError as error:
                _say(f"error: cannot use the machine-wide ledger: {error}")
                return EXIT_USAGE
            return await self._with_pool(pool)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _with_pool(self, pool: GPUResourcePool) -> int:
        options = self.options
        allocation: GPUAllocation | None = None
        with self._stoppable():
            allocation = await self._acquire(pool)
        if allocation is None:
            if self.stopped:
                _say("interrupted while waiting: nothing was reserved")
                return EXIT_INTERRUPTED
            return EXIT_FAILED
        try:
            until = None if options.duration is None else time.time() + options.duration
            hold_id = pool._ledger_hold(allocation, until=until)
            self.phase = "holding"
            if options.command:
                return await self._run_command(allocation, hold_id, until)
            return await self._hold(allocation, hold_id, until)
        finally:
            self.phase = "ending"
            await pool.release(allocation)  # never yields: completes under cancellation

    async def _acquire(self, pool: GPUResourcePool) -> GPUAllocation | None:
        """The GPUs, or None after saying why not (timeout, impossible, stopped)."""
        options = self.options
        exclusive = not options.shared
        what = _request_text(options)
        try:
            try:
                return pool.acquire_nowait(
                    options.gpus, min_memory_mb=options.memory_mb, exclusive=exclusive
                )
            except WouldBlock:
                pass
            _say(
                f"waiting for {what} in the machine-wide queue "
                "(`gpupool status` shows who holds them)"
            )
            return await pool.acquire(
                options.gpus,
                min_memory_mb=options.memory_mb,
                exclusive=exclusive,
                timeout=options.timeout,
            )
        except PoolTimeout:
            assert options.timeout is not None
            _say(
                f"error: {what} not granted within {_duration(options.timeout)}: they are "
                "held by others, or others queued first (`gpupool status` shows who); "
                "nothing was reserved"
            )
        except UnsatisfiableRequest as error:
            _say(f"error: {what} can never be granted here: {error}")
        return None

    async def _hold(self, allocation: GPUAllocation, hold_id: int, until: float | None) -> int:
        """No command: print what to use, then hold until the end."""
        release = f"gpupool release {hold_id}"
        if self.options.ledger is not None:
            release += f" --ledger {shlex.quote(str(self.options.ledger))}"
        lines = [
            f"# gpupool reservation {hold_id}: {_gpus_text(allocation)}, {_until_text(until)}",
            f"# end it with `{release}` or Ctrl-C here; use it in another shell with:",
            *(f"export {k}={shlex.quote(v)}" for k, v in sorted(allocation.env.items())),
        ]
        try:
            print("\n".join(lines), flush=True)
        except BrokenPipeError:
            # `gpupool reserve ... | head -3` took what it wanted: the hold goes on.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        with self._stoppable(), anyio.move_on_after(_seconds(self.options.duration)):
            await anyio.sleep_forever()
        why = "released" if self.stopped else "its time is up"
        _say(f"reservation {hold_id} ended ({why})")
        return EXIT_OK

    async def _run_command(
        self, allocation: GPUAllocation, hold_id: int, until: float | None
    ) -> int:
        options = self.options
        shown = shlex.join(options.command)
        _say(
            f"reservation {hold_id}: {_gpus_text(allocation)}, {_until_text(until)}; "
            f"running {shown}"
        )

        def started(pid: int) -> None:
            self.group = pid

        returncode: int | None = None
        try:
            with self._stoppable(), anyio.move_on_after(_seconds(options.duration)) as timer:
                returncode = await run_attached(
                    options.command,
                    allocation=allocation,
                    env={"GPUPOOL_RESERVATION": str(hold_id)},
                    grace_period=options.grace_period,
                    on_start=started,
                )
        except FileNotFoundError:
            _say(f"error: cannot run {shown}: command not found")
            return EXIT_NOT_FOUND
        except PermissionError as error:
            _say(f"error: cannot run {shown}: {error.strerror or error}")
            return EXIT_CANNOT_RUN
        finally:
            self.group = None
        if returncode is not None:
            return _exit_code(returncode)
        why = "its time is up" if timer.cancelled_caught else "released"
        _say(f"reservation {hold_id} ended ({why}): stopped {shown}")
        return EXIT_OK


# -- text ------------------------------------------------------------------------------


def _seconds(duration: float | None) -> float:
    return math.inf if duration is None else duration


def _request_text(options: ReserveOptions) -> str:
    gpus = f"{options.gpus} GPU{'' if options.gpus == 1 else 's'}"
    if options.memory_mb and options.shared:
        return f"{gpus} with {size_text(options.memory_mb)} each (shared)"
    if options.memory_mb:
        return f"{gpus} with {size_text(options.memory_mb)} free each"
    return gpus


def _gpus_text(allocation: GPUAllocation) -> str:
    gpus = ", ".join(
        f"{i} ({u})" for i, u in zip(allocation.gpu_indices, allocation.gpu_uuids, strict=True)
    )
    word = "GPU" if len(allocation.gpu_indices) == 1 else "GPUs"
    held = "" if allocation.exclusive else f", {size_text(allocation.memory_mb)} of each (shared)"
    return f"{word} {gpus}{held}"


def _until_text(until: float | None) -> str:
    if until is None:
        return "until released"
    return "until " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(until))


def _duration(seconds: float) -> str:
    return f"{seconds:g}s" if seconds < 120 else f"{seconds / 60:g}m"
