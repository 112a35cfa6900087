"""A pool that joins a machine-wide ledger, for the crash tests (tests/test_ledger_crashes.py).

Usage: python tests/scripts/ledger_crash_worker.py LEDGER BACKEND GPUS
           [--cycle TASKS [--pause SECONDS]] [--uid UID]

Opens ``GPUResourcePool(FakeGPUProvider(count=GPUS), ledger=LEDGER)`` on the
anyio backend BACKEND (fake UUIDs are the same in every process, so every
worker given the same LEDGER shares the same GPUs) and prints, one line each,
flushed at once:

* ``ready PID MEMBER`` once the pool is open (MEMBER: its id in the ledger),
* ``granted NAME TIME UUID,...`` when an acquire returns (TIME: ``time.monotonic()``,
  which every process on the machine reads from the same clock),
* ``timeout NAME``, ``released NAME``, ``job NAME PID`` (a ``sleep 60`` started
  with ``run_process`` on NAME's allocation), ``error NAME TYPE: MESSAGE``,
* ``open-error TYPE: MESSAGE`` if the pool cannot be opened (then it exits 3).

It obeys commands read from stdin, one a line: ``acquire NAME GPUS [TIMEOUT
[INDEX,...]]`` (an exclusive acquire in the background; INDEX,... its
``allowed_gpus``), ``release NAME``, ``job NAME``, ``exit`` (close the pool and
exit 0); end of input is ``exit``.

``--cycle TASKS`` obeys ``exit`` alone: TASKS tasks acquire and release as fast as
they can, forever (some with short timeouts, some shared), for a test that
kills the process at random points; it prints ``cycled N`` after every 100
releases; with ``--pause SECONDS`` each task sleeps up to that long after each
attempt (0: not at all). ``--uid UID`` drops root for user (and
group) UID once everything is imported: the code comes from root's
installation, which that user may not be able to read, while every file of
the ledger is then opened as UID.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import time

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread

from gpupool import (
    FakeGPUProvider,
    GPUAllocation,
    GPUResourcePool,
    PoolTimeout,
    run_process,
)


def say(*words: object) -> None:
    sys.stdout.write(" ".join(str(w) for w in words) + "\n")
    sys.stdout.flush()


async def lines_of_stdin() -> list[str]:
    """The next complete lines of stdin (``["exit"]`` at its end), without a thread."""
    fd = sys.stdin.fileno()
    buffer = b""
    while True:
        await anyio.wait_readable(fd)
        chunk = os.read(fd, 4096)
        if not chunk:
            return ["exit"]
        buffer += chunk
        if buffer.endswith(b"\n"):
            return buffer.decode().splitlines()


async def commands(pool: GPUResourcePool) -> None:
    held: dict[str, GPUAllocation] = {}

    async def acquire(name: str, gpus: int, timeout: float | None, allowed: str | None) -> None:
        allowed_gpus = None if allowed is None else [int(i) for i in allowed.split(",")]
        try:
            allocation = await pool.acquire(gpus, timeout=timeout, allowed_gpus=allowed_gpus)
        except PoolTimeout:
            say("timeout", name)
            return
        except Exception as error:
            say("error", name, f"{type(error).__name__}: {error}".replace("\n", " "))
            return
        held[name] = allocation
        say("granted", name, repr(time.monotonic()), ",".join(allocation.gpu_uuids))

    async def job(name: str) -> None:
        await run_process(
            ["sleep", "60"],
            allocation=held[name],
            check=False,
            on_start=lambda pid: say("job", name, pid),
        )

    os.set_blocking(sys.stdin.fileno(), False)
    async with anyio.create_task_group() as tasks:
        while True:
            for line in await lines_of_stdin():
                words = line.split()
                if not words:
                    continue
                if words[0] == "exit":
                    tasks.cancel_scope.cancel()
                    return
                if words[0] == "acquire":
                    timeout = float(words[3]) if len(words) > 3 else None
                    allowed = words[4] if len(words) > 4 else None
                    tasks.start_soon(acquire, words[1], int(words[2]), timeout, allowed)
                elif words[0] == "release":
                    await pool.release(held.pop(words[1]))
                    say("released", words[1])
                elif words[0] == "job":
                    tasks.start_soon(job, words[1])
                else:
                    raise ValueError(f"unknown command {line!r}")


async def cycle(pool: GPUResourcePool, tasks: int, gpus: int, pause: float) -> None:
    done = 0

    async def one(seed: int) -> None:
        nonlocal done
        rng = random.Random(seed)
        while True:
            shared = rng.random() < 0.2
            try:
                async with pool.allocation(
                    rng.randint(1, min(2, gpus)),
                    timeout=rng.choice([None, None, 0.01, 0.05]),
                    exclusive=not shared,
                    min_memory_mb=1000 if shared else 0,
                ):
                    await anyio.lowlevel.checkpoint()
            except PoolTimeout:
                continue
            finally:
                await anyio.sleep(rng.uniform(0, pause))
            done += 1
            if done % 100 == 0:
                say("cycled", done)

    async with anyio.create_task_group() as group:
        for i in range(tasks):
            group.start_soon(one, os.getpid() * 100 + i)


async def main(args: argparse.Namespace) -> None:
    try:
        pool = GPUResourcePool(FakeGPUProvider(count=args.gpus), ledger=args.ledger)
        await pool.__aenter__()
    except Exception as error:
        say("open-error", f"{type(error).__name__}: {error}".replace("\n", " "))
        sys.exit(3)
    try:
        core = pool._core
        say("ready", os.getpid(), getattr(core, "member_id", "?"))
        if args.cycle:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(cycle, pool, args.cycle, args.gpus, args.pause)
                os.set_blocking(sys.stdin.fileno(), False)
                while "exit" not in await lines_of_stdin():
                    pass
                tasks.cancel_scope.cancel()
        else:
            await commands(pool)
    finally:
        await pool.__aexit__(None, None, None)


def drop_privileges(uid: int) -> None:
    """Become ``uid`` for good (its group too, no supplementary groups): no capability left."""
    # What the run imports lazily, imported while the code is still readable.
    import anyio._backends._asyncio
    import anyio._backends._trio  # noqa: F401

    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("ledger")
    parser.add_argument("backend", choices=["asyncio", "trio"])
    parser.add_argument("gpus", type=int)
    parser.add_argument("--cycle", type=int, default=0)
    parser.add_argument("--pause", type=float, default=0.0)
    parser.add_argument("--uid", type=int)
    arguments = parser.parse_args()
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(message)s")
    if arguments.uid is not None:
        drop_privileges(arguments.uid)
    anyio.run(main, arguments, backend=arguments.backend)
