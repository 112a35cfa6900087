"""The gpupool agent of one node: a Ray actor pinned to the node, owning its pool.

Each agent runs a :class:`~gpupool.GPUResourcePool` over its node's GPUs, so
a cluster request gets on its node what a request gets on one box: NVML
scoring, memory sharing, foreign memory, the settle gate, unhealthy GPUs,
and the node's machine-wide ledger (other processes on that machine, in or
out of Ray, share the GPUs with it). The driver picks the node; this pool
picks the GPUs, fairly, among everything waiting for them.

The agent is an async actor (Ray runs its methods as tasks of one asyncio
loop). The pool's ``async with`` must be entered and left in one task, so a
task started in ``__init__`` (the loop runs already) holds it for the
agent's life; each call is another task that uses the open pool. The agent
also keeps the node's worker actors (``worker.py``), one per GPU set.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Mapping
from typing import Any, final

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ..._core.model import GPUAllocation, PoolStatistics
from ..._core.request import Resources
from ..._pool.pool import GPUResourcePool
from ...providers import GPUProvider
from .worker import CONTROL, TaskWorker

__all__ = ["NodeAgent"]

#: Idle workers an agent keeps, per GPU of its node (the rest are ended).
IDLE_WORKERS_PER_GPU = 2

#: The worker actor class: ``interrupt`` has a thread of its own (a concurrency
#: group, given when the class is made: ``.options()`` cannot).
#: (Ray's typed overloads of ``ray.remote`` leave ``concurrency_groups`` out.)
_WORKER = ray.remote(concurrency_groups={CONTROL: 1})(TaskWorker)  # type: ignore[call-overload]


@final
class NodeAgent:
    """A Ray actor (made by :class:`~gpupool.integrations.ray.RayCluster`), one per node."""

    def __init__(
        self,
        node_id: str,
        provider: Callable[[], GPUProvider] | None,
        pool_options: Mapping[str, Any],
    ) -> None:
        self.node_id = node_id
        self._provider = provider
        self._options = dict(pool_options)
        self._pool: GPUResourcePool | None = None
        self._failure: BaseException | None = None
        self._ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._held: dict[int, tuple[GPUAllocation, Any]] = {}
        self._idle: dict[tuple[str, ...], list[Any]] = {}
        # The driver's requests waiting in acquire, and those it withdrew.
        self._pending: dict[int, asyncio.Task[Any]] = {}
        self._withdrawn: set[int] = set()
        self._serving = asyncio.get_running_loop().create_task(self._serve())

    async def _serve(self) -> None:
        try:
            provider = None if self._provider is None else self._provider()
            async with GPUResourcePool(provider, **self._options) as pool:
                self._pool = pool
                self._ready.set()
                await self._stop.wait()
        except BaseException as error:  # reported by every later call
            self._failure = error
        finally:
            self._pool = None
            self._ready.set()

    async def _open_pool(self) -> GPUResourcePool:
        await self._ready.wait()
        if self._pool is None:
            if isinstance(self._failure, Exception):
                raise self._failure  # the provider's error (a ProviderError, say), as it was
            raise RuntimeError(f"the gpupool agent on node {self.node_id} has closed its pool")
        return self._pool

    async def statistics(self) -> PoolStatistics:
        """The node's pool as it stands (what the driver places requests by)."""
        return (await self._open_pool()).statistics()

    async def acquire(
        self, resources: Resources, experiment_id: str | None, request: int = 0
    ) -> tuple[GPUAllocation, Any, PoolStatistics] | None:
        """Wait for GPUs in the node's pool; the allocation, a worker for its GPUs, the state.

        None if the driver withdrew ``request`` (:meth:`withdraw`) before it was
        granted. The driver withdraws through this agent, not with
        ``ray.cancel``: a call cancelled just as it returned reports the
        cancellation to the driver, and the grant it made would stay held here
        with nobody knowing its id.
        """
        task = asyncio.current_task()
        assert task is not None
        self._pending[request] = task
        try:
            pool = await self._open_pool()
            allocation = await pool.acquire(resources, experiment_id=experiment_id)
        except asyncio.CancelledError:
            if request not in self._withdrawn:
                raise
            self._withdrawn.discard(request)
            if sys.version_info >= (3, 11):
                task.uncancel()  # this task goes on: it returns to the driver
            return None
        finally:
            self._pending.pop(request, None)
        try:
            idle = self._idle.get(allocation.gpu_uuids)
            worker = idle.pop() if idle else self._new_worker(allocation.gpu_uuids)
        except BaseException:
            await pool.release(allocation)
            raise
        self._held[allocation.id] = (allocation, worker)
        return allocation, worker, pool.statistics()

    async def withdraw(self, requests: list[int]) -> None:
        """Stop waiting for ``requests`` (their :meth:`acquire` calls return None); one
        granted already is the driver's, which gives it back."""
        # Ray starts one caller's calls to an actor in the order sent, so each of
        # ``requests`` is waiting here, or over (granted or failed).
        for request in requests:
            task = self._pending.get(request)
            if task is not None:
                self._withdrawn.add(request)
                task.cancel()

    async def release(self, allocation_id: int, worker_ok: bool) -> PoolStatistics | None:
        """Give an allocation back; its worker is kept for the next task on those GPUs
        unless ``worker_ok`` is false (the driver ended it: a timeout, a cancellation)."""
        held = self._held.pop(allocation_id, None)
        pool = self._pool
        if held is None or pool is None:
            return None if pool is None else pool.statistics()
        allocation, worker = held
        await pool.release(allocation)
        if worker_ok:
            self._idle.setdefault(allocation.gpu_uuids, []).append(worker)
            self._trim_idle(len(pool.statistics().gpus))
        else:
            ray.kill(worker)
        return pool.statistics()

    def _new_worker(self, gpu_uuids: tuple[str, ...]) -> Any:
        strategy = NodeAffinitySchedulingStrategy(self.node_id, soft=False)
        actor = _WORKER.options(num_cpus=0, scheduling_strategy=strategy)
        return actor.remote(gpu_uuids)

    def _trim_idle(self, gpus: int) -> None:
        """End the oldest idle workers beyond what the node's GPUs can use."""
        keep = IDLE_WORKERS_PER_GPU * max(1, gpus)
        while sum(len(w) for w in self._idle.values()) > keep:
            uuids = max(self._idle, key=lambda u: len(self._idle[u]))
            ray.kill(self._idle[uuids].pop(0))
            if not self._idle[uuids]:
                del self._idle[uuids]

    async def close(self) -> None:
        """Close the pool (after giving back whatever the driver still held) and end the workers."""
        pool = self._pool
        for allocation, worker in self._held.values():
            if pool is not None:
                await pool.release(allocation)
            ray.kill(worker)
        self._held.clear()
        for workers in self._idle.values():
            for worker in workers:
                ray.kill(worker)
        self._idle.clear()
        self._stop.set()
        await self._serving
