"""One process of the machine-wide ledger tests (tests/test_ledger_processes.py).

Usage: python tests/scripts/ledger_worker.py BACKEND LEDGER MODE [options]

It opens ``GPUResourcePool(FakeGPUProvider(count=N), ledger=LEDGER)`` under
anyio's ``BACKEND`` (asyncio or trio), prints ``ready`` and then, by MODE:

* ``cycles``: waits for a line on stdin (so that every process starts
  contending at once), then ``--cycles`` times acquires, holds for a random
  time below ``--hold`` seconds and releases. Each cycle appends one line per
  GPU to ``--out``: ``uuid start end memory_mb exclusive``, with ``start``
  read after the acquire returned and ``end`` before the release, both from
  ``time.monotonic()`` (one clock for the whole machine on Linux). So the
  recorded intervals lie inside the real holdings: if two of them overlap on
  one GPU, the ledger double-booked it. With ``--until-stop`` it goes on,
  past ``--cycles`` if need be, until a second line arrives on stdin.
  Prints ``cycles N`` (the cycles done) at the end.
* ``once``: one acquire; prints ``granted T`` (monotonic time) once it holds,
  holds for ``--hold`` seconds, records its interval like ``cycles``,
  releases and prints ``released``.
* ``hold``: like ``once``, but holds until a line arrives on stdin.

``--tasks K`` runs K such loops at once in the process.

``--no-poll`` makes the listener's slow poll and the monitor's refresh
(both of which also pick up decisions made by others) take hours, so that
only a wake-up can deliver a grant made by another process;
``--no-refresh`` does that to the monitor's refresh alone, leaving the poll.
``--no-wake`` makes this process send no wake-ups (every one it owes is
lost).
It exits 0 once the pool has closed.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import random
import sys
import time
from pathlib import Path
from typing import TextIO

import anyio
import anyio.to_thread

import gpupool._ledger.machine
import gpupool._ledger.wakeup
import gpupool._pool.pool
from gpupool import FakeGPUProvider, GPUAllocation, GPUResourcePool

#: Long enough that no test ever sees it end.
HOURS = 36_000.0


def _options(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("backend", choices=["asyncio", "trio"])
    parser.add_argument("ledger", type=Path)
    parser.add_argument("mode", choices=["cycles", "once", "hold"])
    parser.add_argument("--count", type=int, default=2, help="fake GPUs")
    parser.add_argument("--memory", type=int, default=16_000, help="MB per fake GPU")
    parser.add_argument("--gpus", type=int, default=1, help="required_gpus")
    parser.add_argument("--mem", type=int, default=0, help="min_memory_mb")
    parser.add_argument("--shared", action="store_true", help="exclusive=False")
    parser.add_argument("--priority", type=int, default=0)
    parser.add_argument("--cycles", type=int, default=100, help="per task")
    parser.add_argument("--tasks", type=int, default=1, help="concurrent cycling tasks")
    parser.add_argument("--hold", type=float, default=0.001, help="seconds (at most, in cycles)")
    parser.add_argument("--timeout", type=float, default=60.0, help="of each acquire")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--until-stop", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-poll", action="store_true")
    parser.add_argument("--no-refresh", action="store_true")
    parser.add_argument("--no-wake", action="store_true")
    return parser.parse_args(argv)


def _say(*words: object) -> None:
    print(*words, flush=True)


def _record(out: TextIO | None, allocation: GPUAllocation, start: float, end: float) -> None:
    if out is None:
        return
    for uuid in allocation.gpu_uuids:
        out.write(f"{uuid} {start!r} {end!r} {allocation.memory_mb} {int(allocation.exclusive)}\n")
    out.flush()


async def _line() -> None:
    """Wait for a line on stdin (or its end), without blocking the event loop."""
    await anyio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)


async def _set_on_line(stop: anyio.Event) -> None:
    await _line()
    stop.set()


async def _cycles(pool: GPUResourcePool, args: argparse.Namespace, out: TextIO | None) -> None:
    await _line()
    counts = [0] * args.tasks
    stop = anyio.Event()
    async with anyio.create_task_group() as tasks:
        if args.until_stop:
            tasks.start_soon(_set_on_line, stop)
        else:
            stop.set()
        async with anyio.create_task_group() as cycling:
            for task in range(args.tasks):
                rng = random.Random(f"{args.seed}-{task}")
                cycling.start_soon(_cycle, pool, args, out, rng, stop, counts, task)
        tasks.cancel_scope.cancel()
    _say("cycles", sum(counts))


async def _cycle(
    pool: GPUResourcePool,
    args: argparse.Namespace,
    out: TextIO | None,
    rng: random.Random,
    stop: anyio.Event,
    counts: list[int],
    task: int,
) -> None:
    request = {"min_memory_mb": args.mem, "exclusive": not args.shared}
    done = 0
    while done < args.cycles or not stop.is_set():
        allocation = await pool.acquire(args.gpus, timeout=args.timeout, **request)
        start = time.monotonic()
        try:
            await anyio.sleep(rng.uniform(0, args.hold))
        finally:
            end = time.monotonic()
            await pool.release(allocation)
        _record(out, allocation, start, end)
        done += 1
        counts[task] = done


async def _once(pool: GPUResourcePool, args: argparse.Namespace, out: TextIO | None) -> None:
    request = {"min_memory_mb": args.mem, "exclusive": not args.shared, "priority": args.priority}
    allocation = await pool.acquire(args.gpus, timeout=args.timeout, **request)
    start = time.monotonic()
    _say("granted", repr(start), " ".join(allocation.gpu_uuids))
    if args.mode == "hold":
        await _line()
    else:
        await anyio.sleep(args.hold)
    end = time.monotonic()
    await pool.release(allocation)
    _record(out, allocation, start, end)
    _say("released")


async def main(args: argparse.Namespace, out: TextIO | None) -> None:
    if args.no_poll:
        # pool.py took its own name for the constant at import: set both.
        gpupool._ledger.machine.POLL_INTERVAL = HOURS
        gpupool._pool.pool.POLL_INTERVAL = HOURS  # type: ignore[attr-defined]
    if args.no_wake:
        gpupool._ledger.wakeup.wake = lambda ledger, members: None
    provider = FakeGPUProvider(count=args.count, memory_mb=args.memory)
    refresh = HOURS if args.no_poll or args.no_refresh else 1.0
    async with GPUResourcePool(provider, ledger=args.ledger, refresh_interval=refresh) as pool:
        _say("ready", os.getpid())
        if args.mode == "cycles":
            await _cycles(pool, args, out)
        else:
            await _once(pool, args, out)


if __name__ == "__main__":
    options = _options(sys.argv[1:])
    with contextlib.ExitStack() as files:
        record = None if options.out is None else files.enter_context(open(options.out, "a"))
        anyio.run(functools.partial(main, options, record), backend=options.backend)
