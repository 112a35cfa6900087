"""A journaled runner whose only task runs a subprocess job that never ends.

Usage: python tests/scripts/journal_leftover_worker.py JOURNAL

The job (``sh`` with a background ``sleep`` and a foreground one) runs
through ``gpupool.run_process``, which records its process group in the
journal of the task it runs for. The test kills this process with SIGKILL
once the group is recorded, and checks that the next runner on the journal
kills the orphaned job before it runs anything.
"""

from __future__ import annotations

import sys

import anyio

from gpupool import GPUAllocation, ParallelRunner, run_process


async def task(item: int, allocation: GPUAllocation | None) -> None:
    await run_process(["sh", "-c", "sleep 600 & sleep 600"], allocation=allocation)


async def main(path: str) -> None:
    async with ParallelRunner(journal=path) as runner:
        await runner.map(task, [1], key=lambda item: "job")


if __name__ == "__main__":
    anyio.run(main, sys.argv[1])
