"""A sweep's driver on a Ray cluster (tests/ray/test_driver_restart.py kills it with
``kill -9`` and starts it again): ``ray_driver.py ADDRESS JOURNAL DIRECTORY``.

Eight 1-GPU tasks of 1 s each (tests.ray.tasks.marks_and_sleeps, which notes every
start and end in DIRECTORY), journaled in JOURNAL: a second run skips what the first
finished. Prints ``done N`` with the number that succeeded."""

from __future__ import annotations

import sys

import anyio

from gpupool import ParallelRunner, TaskStatus
from gpupool.integrations.ray import RayCluster
from tests.ray.tasks import fake_gpus, marks_and_sleeps


async def main(address: str, journal: str, directory: str) -> None:
    async with (
        RayCluster(address, provider=fake_gpus) as cluster,
        ParallelRunner(cluster, max_parallel=4, journal=journal) as runner,
    ):
        items = [(directory, number, 1.0) for number in range(8)]
        results = await runner.map(marks_and_sleeps, items, required_gpus=1)
    print("done", sum(r.status is TaskStatus.SUCCEEDED for r in results), flush=True)


if __name__ == "__main__":
    address, journal, directory = sys.argv[1:4]
    anyio.run(main, address, journal, directory)
