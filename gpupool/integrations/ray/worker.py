"""The process a node runs task functions in: one task at a time, reused across tasks.

Ray's default for a GPU task starts a fresh worker process per task
(hundreds of milliseconds each, docs/ray.md); gpupool keeps worker actors
instead, each for one set of GPUs. One set, because CUDA reads
``CUDA_VISIBLE_DEVICES`` once, when a process first initialises it: a
process that ran a task on GPU 0 would run a later task on GPU 0 whatever
the variable then said. One task at a time, because the environment is the
process's, shared by its threads.

A task that times out or is cancelled is **stopped gracefully** where it
can be: :meth:`TaskWorker.interrupt` (in a concurrency group of its own, so
it runs while ``call`` does) cancels an async function's anyio run, so that
``run_process`` inside it ends its job (SIGTERM, the grace period,
SIGKILL) and ``finally`` blocks run. The driver waits for that, bounded,
and ends the worker process only when it does not stop in time, or for a
plain function, which nothing can interrupt.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, final

import anyio
import anyio.from_thread
import anyio.lowlevel
import ray

from ..._core.model import GPUAllocation

__all__ = ["CONTROL", "Call", "FunctionUnknown", "TaskInterrupted", "TaskWorker"]

#: The concurrency group of :meth:`TaskWorker.interrupt` (one thread of its own).
CONTROL = "control"


#: Task functions a worker keeps unpickled (the least recently used is dropped beyond).
KEPT_FUNCTIONS = 32


class TaskInterrupted(Exception):
    """The task was interrupted on its node (the driver stopped it)."""


class FunctionUnknown(Exception):
    """The driver named a task function this worker no longer keeps: send it again."""


@final
class Call(NamedTuple):
    """One call of a task function, as the driver sends it: one argument, one pickle.

    ``number`` increases from call to call of one driver (it names the call
    for :meth:`TaskWorker.interrupt`). The function is ``payload`` unpickled,
    the first time the driver sends it to this worker; after that
    ``payload`` is None and ``token`` names it (:class:`FunctionUnknown` if
    the worker has let it go meanwhile). Likewise ``allocation`` (the node
    pool's) comes with the first call of a lease, and ``allocation_id``
    names it after.
    """

    number: int
    token: int
    payload: bytes | None
    item: object
    allocation_id: int
    allocation: GPUAllocation | None
    is_async: bool


@final
class TaskWorker:
    """A Ray actor (made by the node's agent) that runs task functions on one GPU set."""

    def __init__(self, gpu_uuids: tuple[str, ...]) -> None:
        self.gpu_uuids = gpu_uuids
        self._functions: OrderedDict[int, Callable[[Any, GPUAllocation], Any]] = OrderedDict()
        self._current: GPUAllocation | None = None  # the allocation of the last call
        # The call running now: its number, and how to cancel it from another thread.
        self._running: tuple[int, anyio.CancelScope, anyio.lowlevel.EventLoopToken] | None = None
        self._started = 0  # the number of the last call that started
        self._started_async = False
        self._stop: set[int] = set()  # calls to stop as soon as they can be
        # Held while either thread reads or changes the three above (and _running).
        self._lock = threading.Lock()

    def call(self, call: Call) -> Any:
        """``fn(item, allocation)`` on this worker's GPUs (see :class:`Call`)."""
        fn = self._function(call.token, call.payload)
        allocation = self._allocation(call.allocation_id, call.allocation)
        number = call.number
        with self._lock:
            self._started, self._started_async = number, call.is_async
            if number in self._stop:
                self._stop.discard(number)
                raise TaskInterrupted("the task was stopped before it started")
        # The process serves these GPUs only, so their variables stay set between
        # tasks; set again only if a task changed them. The devices alone: a shared
        # allocation's memory caps (docs/memory.md) are read once, when a framework
        # starts, so in a reused worker they would hold for the next task's too.
        for name, value in allocation.device_env.items():
            if os.environ.get(name) != value:
                os.environ[name] = value
        if call.is_async:
            return anyio.run(_interruptible, self, number, fn(call.item, allocation))
        value = fn(call.item, allocation)
        if inspect.isawaitable(value):  # a plain function that returned a coroutine
            return anyio.run(_interruptible, self, number, value)
        return value

    def _allocation(self, allocation_id: int, allocation: GPUAllocation | None) -> GPUAllocation:
        if allocation is not None:
            if allocation.gpu_uuids != self.gpu_uuids:
                raise RuntimeError(
                    f"worker for GPUs {self.gpu_uuids} was given an allocation of "
                    f"{allocation.gpu_uuids}"
                )
            self._current = allocation
        elif self._current is None or self._current.id != allocation_id:
            raise RuntimeError(f"allocation {allocation_id} was never sent to this worker")
        return self._current

    @ray.method(concurrency_group=CONTROL)
    def interrupt(self, number: int) -> bool:
        """Cancel call ``number`` if it runs an async function; whether it will stop.

        A call not started yet is stopped when it starts (the driver sends
        calls to a worker in order, so a larger number than any started is
        one still to come). Runs in its own thread, beside ``call``.
        """
        with self._lock:
            running = self._running
            if running is None or running[0] != number:
                if number > self._started or (number == self._started and self._started_async):
                    self._stop.add(number)  # not started, or not yet in its anyio run
                    return True
                return False  # a plain function (nothing can stop it), or over already
        _, scope, token = running
        # RuntimeError: the run ended meanwhile, so there is nothing to stop.
        with contextlib.suppress(RuntimeError):
            anyio.from_thread.run_sync(scope.cancel, token=token)
        return True

    def _function(self, token: int, payload: bytes | None) -> Callable[[Any, GPUAllocation], Any]:
        functions = self._functions
        if payload is not None:
            functions[token] = ray.cloudpickle.loads(payload)
            while len(functions) > KEPT_FUNCTIONS:
                functions.popitem(last=False)
        elif token not in functions:
            raise FunctionUnknown(token)
        functions.move_to_end(token)
        return functions[token]

    def pid(self) -> int:
        return os.getpid()


async def _interruptible(worker: TaskWorker, number: int, value: Awaitable[Any]) -> Any:
    """Await ``value`` where ``worker.interrupt(number)`` can cancel it.

    A function, not a method: an actor class with an ``async def`` method is
    made an async actor by Ray, whose calls run on an asyncio loop (where
    ``anyio.run`` cannot start another).
    """
    with anyio.CancelScope() as scope:
        with worker._lock:
            worker._running = (number, scope, anyio.lowlevel.current_token())
            if number in worker._stop:  # interrupted between the start and here
                worker._stop.discard(number)
                scope.cancel()
        try:
            return await value
        finally:
            worker._running = None
    raise TaskInterrupted("the task was stopped on its node")
