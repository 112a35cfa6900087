"""A runner process for the crash test: short jobs on a journaled ParallelRunner.

Usage: python tests/scripts/journal_crash_worker.py JOURNAL OUT_DIR [N_JOBS]

Each job holds one of 4 fake GPUs and appends one line (this process's pid)
to ``OUT_DIR/<key>.txt`` halfway through, so the test can count how often a
job's body really ran. Prints ``ready`` once the runner owns the journal;
exits 0 when every job succeeded.
"""

from __future__ import annotations

import functools
import os
import random
import sys
from pathlib import Path

import anyio

from gpupool import FakeGPUProvider, GPUAllocation, GPUResourcePool, ParallelRunner


def side_effect(path: Path) -> None:
    """What must not happen twice unless a kill cut a run short."""
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")


async def job(out: Path, key: str, allocation: GPUAllocation | None) -> dict[str, object]:
    assert allocation is not None
    await anyio.sleep(random.uniform(0.02, 0.22))
    side_effect(out / f"{key}.txt")
    await anyio.sleep(random.uniform(0.02, 0.22))
    return {"key": key, "gpus": list(allocation.gpu_indices)}


async def main(path: str, out: Path, n_jobs: int) -> int:
    keys = [f"job-{i:03d}" for i in range(n_jobs)]
    async with (
        GPUResourcePool(FakeGPUProvider(count=4)) as pool,
        ParallelRunner(pool, max_parallel=4, journal=path) as runner,
    ):
        print("ready", flush=True)
        results = await runner.map(functools.partial(job, out), keys, required_gpus=1, key=str)
    return 0 if all(r.ok and r.value["key"] == r.key for r in results) else 1


if __name__ == "__main__":
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 50
    sys.exit(anyio.run(main, sys.argv[1], Path(sys.argv[2]), n))
