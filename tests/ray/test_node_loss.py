"""Faults on a real Ray cluster (its own, since a node leaves it): a node removed in the
middle of a sweep, and a runner cancelled while its tasks run on every node."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from gpupool import ParallelRunner, TaskStatus

from .conftest import RayTestCluster, fake_gpus
from .tasks import marks_and_sleeps

ray = pytest.importorskip("ray")
from gpupool.integrations.ray import RayCluster  # noqa: E402

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(300)]


def started(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if not p.name.endswith(".done"))


async def wait_for(what: Any, timeout: float = 60.0) -> None:
    """Wait until ``what()`` is true (a bounded poll from a thread: never a hang)."""

    def poll() -> None:
        deadline = time.monotonic() + timeout
        while not what():
            if time.monotonic() > deadline:
                raise AssertionError(f"not true within {timeout} s: {what}")
            time.sleep(0.05)

    await anyio.to_thread.run_sync(poll)


def holders(cluster: RayCluster) -> dict[str, int]:
    """What each node's pool holds now, asked of the agents themselves."""
    return {
        node: ray.get(agent.statistics.remote()).holder_count
        for node, agent in cluster._agents.items()
    }


async def test_cancelling_the_runner_frees_every_gpu_on_every_node(
    ray_cluster: RayTestCluster, tmp_path: Path
) -> None:
    async with RayCluster(provider=fake_gpus) as cluster:
        with anyio.CancelScope() as scope:
            async with ParallelRunner(cluster, max_parallel=4) as runner:
                for number in range(4):
                    runner.submit(marks_and_sleeps, (str(tmp_path), number, 300.0), required_gpus=1)
                await wait_for(lambda: len(started(tmp_path)) == 4)
                assert {name.split("-")[1] for name in started(tmp_path)} == set(
                    ray_cluster.ids.values()
                )
                scope.cancel()
        assert scope.cancelled_caught
        pids = [int(name.split("-")[2]) for name in started(tmp_path)]
        # Every running function was stopped on its node, and every GPU given back there.
        await wait_for(lambda: all(not _alive(pid) for pid in pids))
        await wait_for(lambda: set(holders(cluster).values()) == {0})


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# A node leaves a cluster once: one backend (the other runs the same code paths above).
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_node_removed_mid_sweep_has_its_tasks_retried_on_the_others(
    ray_cluster: RayTestCluster, tmp_path: Path
) -> None:
    a, b = ray_cluster.ids["a"], ray_cluster.ids["b"]
    async with (
        RayCluster(provider=fake_gpus) as cluster,
        # All 8 ask at once: 2 run on each node, the other 4 wait in the nodes' queues.
        ParallelRunner(cluster, max_parallel=8) as runner,
    ):
        handles = [
            runner.submit(
                marks_and_sleeps,
                (str(tmp_path), n, 5.0),
                required_gpus=1,
                retries=2,
                retry_backoff=0.1,
            )
            for n in range(8)
        ]
        await wait_for(lambda: sum(f"-{a}-" in name for name in started(tmp_path)) == 2)
        await anyio.to_thread.run_sync(ray_cluster.cluster.remove_node, ray_cluster.handles["a"])
        results = [await handle.wait() for handle in handles]
        assert cluster.nodes == (b,)
    assert [r.status for r in results] == [TaskStatus.SUCCEEDED] * 8
    assert {r.value for r in results} == {b}
    on_a = {int(name.split("-")[0]) for name in started(tmp_path) if f"-{a}-" in name}
    assert len(on_a) == 2  # both of node a's GPUs were running a task when it went
    for number in on_a:
        # Cut short there: that was an attempt, and the task ran again on b.
        assert results[number].attempts == 2, results[number]
    # The requests waiting in node a's queue went to b's at no cost: no other retries.
    assert sum(r.attempts for r in results) == 8 + 2
