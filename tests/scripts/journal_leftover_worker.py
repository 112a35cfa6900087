"""A journaled runner whose only task starts a subprocess job and hangs.

Usage: python tests/scripts/journal_leftover_worker.py JOURNAL

The task starts ``sleep 600`` in its own session (as ``run_process`` does),
records its process group through the journal binding of the current task,
prints ``spawned <pid>`` and waits forever, for the test to kill -9 this
process and check that the next runner kills the orphaned job first.
"""

from __future__ import annotations

import subprocess
import sys

import anyio

from gpupool import GPUAllocation, ParallelRunner
from gpupool._journal import record_process_group


def start_job() -> int:
    job = subprocess.Popen(
        ["sleep", "600"],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    record_process_group(job.pid)  # what run_process does right after the spawn
    return job.pid


async def task(item: int, allocation: GPUAllocation | None) -> None:
    print(f"spawned {start_job()}", flush=True)
    await anyio.sleep_forever()


async def main(path: str) -> None:
    async with ParallelRunner(journal=path) as runner:
        await runner.map(task, [1], key=lambda item: "job")


if __name__ == "__main__":
    anyio.run(main, sys.argv[1])
