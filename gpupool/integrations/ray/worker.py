"""The process a node runs task functions in: one task at a time, reused across tasks.

Ray's default for a GPU task starts a fresh worker process per task
(hundreds of milliseconds each, docs/ray.md); gpupool keeps worker actors
instead, each for one set of GPUs. One set, because CUDA reads
``CUDA_VISIBLE_DEVICES`` once, when a process first initialises it: a
process that ran a task on GPU 0 would run a later task on GPU 0 whatever
the variable then said. One task at a time, because the environment is the
process's, shared by its threads.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Awaitable, Callable
from typing import Any, final

import anyio

from ..._core.model import GPUAllocation

__all__ = ["TaskWorker"]


@final
class TaskWorker:
    """A Ray actor (made by the node's agent) that runs task functions on one GPU set."""

    def __init__(self, gpu_uuids: tuple[str, ...]) -> None:
        self.gpu_uuids = gpu_uuids

    def call(
        self,
        fn: Callable[[Any, GPUAllocation], Any],
        item: object,
        allocation: GPUAllocation,
        is_async: bool,
    ) -> Any:
        """``fn(item, allocation)`` with the allocation's environment, which is put back after."""
        if allocation.gpu_uuids != self.gpu_uuids:
            raise RuntimeError(
                f"worker for GPUs {self.gpu_uuids} was given an allocation of "
                f"{allocation.gpu_uuids}"
            )
        saved = {name: os.environ.get(name) for name in allocation.env}
        os.environ.update(allocation.env)
        try:
            if is_async:
                return anyio.run(fn, item, allocation)
            value = fn(item, allocation)
            if inspect.isawaitable(value):  # a plain function that returned a coroutine
                return anyio.run(_awaited, value)
            return value
        finally:
            for name, old in saved.items():
                if old is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = old

    def pid(self) -> int:
        return os.getpid()


async def _awaited(value: Awaitable[Any]) -> Any:
    return await value
