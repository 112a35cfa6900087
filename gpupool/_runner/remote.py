"""GPUs on other machines, as a :class:`~gpupool.ParallelRunner` runs its tasks on them.

A runner is given a :class:`~gpupool.GPUResourcePool` for the GPUs of this
machine, or a :class:`RemoteGPUs` for the GPUs of a cluster
(:class:`gpupool.integrations.ray.RayCluster`). Everything else about a run
stays the same: the runner still acquires before it runs and releases
after, records each step in its journal, and applies timeouts, retries and
cancellation; what changes is where the task's function runs. A remote
allocation's function runs on the node that granted its GPUs, so the
runner hands it to :meth:`RemoteGPUs.call` instead of its own executors.
CPU-only tasks (``required_gpus=0``) still run on this machine.

The runner layer defines this base class and an integration subclasses it,
so that the runner never imports the integration's library (Ray is an
optional extra).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

from .._core.model import GPUAllocation, PoolStatistics
from .._core.request import Resources

__all__ = ["RemoteGPUs"]


class RemoteGPUs(abc.ABC):
    """The calls a runner makes on the GPUs of a cluster."""

    @abc.abstractmethod
    async def acquire(
        self, resources: Resources, *, experiment_id: str | None = None
    ) -> GPUAllocation:
        """Wait for GPUs on one node; the allocation names that node's GPUs."""

    @abc.abstractmethod
    async def release(self, allocation: GPUAllocation) -> None:
        """Give the allocation back. Never yields, so it completes under cancellation."""

    @abc.abstractmethod
    async def call(
        self,
        fn: Callable[..., Any],
        item: object,
        allocation: GPUAllocation,
        *,
        is_async: bool,
    ) -> Any:
        """Run ``fn(item, allocation)`` on the allocation's node and return its value.

        Raises what ``fn`` raised; cancelled, it stops ``fn`` on the node before
        it returns.
        """

    @abc.abstractmethod
    def check_task(self, fn: Callable[..., Any]) -> None:
        """Raise ``TypeError`` (naming ``fn``) if ``fn`` cannot be sent to the nodes."""

    @abc.abstractmethod
    def statistics(self) -> PoolStatistics:
        """The cluster's GPUs as the nodes last reported them, as one pool's statistics."""
