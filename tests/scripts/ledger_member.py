"""A process that joins a ledger over fake GPUs and holds (or waits for) GPUs, for tests.

    python ledger_member.py LEDGER [--count N] [--gpus K] [--mem MB] [--shared]
        [--key KEY] [--priority P] [--estimate SECONDS] [--job] [--backend asyncio|trio]

It acquires one allocation (waiting in the machine-wide queue if it must),
(``--estimate``: with that ``estimated_duration``, as a ParallelRunner asks),
optionally starts a job on it with ``run_process`` (a shell running
``sleep 600`` as its child, in a session of its own, registered in the
ledger as the allocation's job), then
prints one JSON line ``{"pid": ..., "job": ..., "gpus": [...]}`` and holds
until its stdin closes, when it releases and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import anyio
import anyio.to_thread

from gpupool import FakeGPUProvider, GPUResourcePool, Resources, run_process


async def main(args: argparse.Namespace) -> None:
    async with GPUResourcePool(FakeGPUProvider(args.count), ledger=args.ledger) as pool:
        request = Resources(
            args.gpus,
            min_memory_mb=args.mem,
            exclusive=not args.shared,
            priority=args.priority,
            estimated_duration=args.estimate,
        )
        allocation = await pool.acquire(request, experiment_id=args.key)
        job: list[int] = []
        async with anyio.create_task_group() as tg:
            if args.job:
                started = anyio.Event()

                async def run_job() -> None:
                    await run_process(
                        ["sh", "-c", "sleep 600 & wait"],
                        allocation=allocation,
                        on_start=lambda pid: (job.append(pid), started.set()),
                        check=False,
                    )

                tg.start_soon(run_job)
                await started.wait()
            print(
                json.dumps({"pid": os.getpid(), "job": job[0] if job else None,
                            "gpus": list(allocation.gpu_uuids)}),
                flush=True,
            )  # fmt: skip
            await anyio.to_thread.run_sync(sys.stdin.read)  # until stdin closes
            tg.cancel_scope.cancel()
        await pool.release(allocation)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("ledger")
    parser.add_argument("--count", type=int, default=2)
    parser.add_argument("--gpus", type=int, default=1)
    parser.add_argument("--mem", type=int, default=0)
    parser.add_argument("--shared", action="store_true")
    parser.add_argument("--key")
    parser.add_argument("--priority", type=int, default=0)
    parser.add_argument("--estimate", type=float)
    parser.add_argument("--job", action="store_true")
    parser.add_argument("--backend", default="asyncio")
    options = parser.parse_args()
    anyio.run(main, options, backend=options.backend)
