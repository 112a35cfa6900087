"""A runner process for the crash test: 50 short jobs on a journal.

Usage: python tests/scripts/journal_crash_worker.py JOURNAL OUT_DIR [N_JOBS]

Each job appends one line (this process's pid) to ``OUT_DIR/<key>.txt``
halfway through, so the test can count how often a job's body really ran.
Prints ``ready`` once it owns the journal; exits 0 when every job succeeded.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import anyio

from gpupool import Journal, TaskResult, TaskStatus
from gpupool._journal_gate import JournalGate


def side_effect(path: Path) -> None:
    """What must not happen twice unless a kill cut a run short."""
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")


async def job(gate: JournalGate, key: str, out: Path, limiter: anyio.CapacityLimiter) -> None:
    async with limiter:
        if await gate.claim(key, fn="crash_worker.job", item=key) is not None:
            return
        gate.record(key, TaskStatus.RUNNING, attempt=1)
        await anyio.sleep(random.uniform(0.02, 0.22))
        side_effect(out / f"{key}.txt")
        await anyio.sleep(random.uniform(0.02, 0.22))
        gate.finish(TaskResult(key, TaskStatus.SUCCEEDED, value={"key": key}, attempts=1))


async def main(path: str, out: Path, n_jobs: int) -> int:
    with Journal(path) as journal:
        journal.kill_leftovers()
        print("ready", flush=True)
        gate = JournalGate(journal)
        limiter = anyio.CapacityLimiter(4)
        async with anyio.create_task_group() as tg:
            for i in range(n_jobs):
                tg.start_soon(job, gate, f"job-{i:03d}", out, limiter)
        counts = journal.counts()
    return 0 if counts[TaskStatus.SUCCEEDED] == n_jobs else 1


if __name__ == "__main__":
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 50
    sys.exit(anyio.run(main, sys.argv[1], Path(sys.argv[2]), n))
