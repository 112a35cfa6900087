"""The running backend's own primitives, looked up once instead of on every call.

anyio finds the backend on each ``current_time()``, ``checkpoint()`` and
``Event()``; the hot paths of the pool and the runner use these several times
per task, so they look them up once (per pool or runner) here.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

__all__ = ["Event", "Native", "Parked"]

T = TypeVar("T")


class Event(Protocol):
    """What the pool and the runner need of an event: anyio's, trio's or asyncio's."""

    def set(self) -> None: ...
    def is_set(self) -> bool: ...
    async def wait(self) -> Any: ...


class Parked(Protocol[T]):
    """One task parked until another hands it a value: the pool's waiter for a decision.

    What an event plus an attribute for the value would do, at the cost of
    one object instead of three or four (an anyio/trio event holds a parking
    lot, asyncio's a deque and a future). ``wait`` is cancellable; ``give``
    never blocks and does nothing once the wait was interrupted. Measured on
    10,000 tasks contending for 8 GPUs (CPU time, medians of 7 interleaved
    runs): asyncio 0.609 s with an event, 0.567 s so; trio 0.687 s, 0.653 s.
    """

    def give(self, value: T) -> None: ...
    async def wait(self) -> T: ...


class Native(NamedTuple):
    """The running backend's own clock, checkpoint and event, looked up once per pool.

    They are what ``anyio.current_time``, ``anyio.lowlevel.checkpoint`` and
    ``anyio.Event`` reach after finding the backend on every call; an acquire
    uses each once or twice, so the lookups would be a large share of its cost.
    anyio's own ``CapacityLimiter`` parks its waiters on native events likewise.
    """

    clock: Callable[[], float]
    checkpoint: Callable[[], Awaitable[None]]
    event: Callable[[], Event]
    #: A new :class:`Parked` for the calling task.
    parked: Callable[[], Parked[Any]]
    #: An acquire's schedule point, in two halves around its decision: ``before``
    #: raises a pending cancellation (and, where ``after`` is None, yields);
    #: ``after`` yields without being cancellable, so a grant just made is
    #: always returned. trio's own ``CapacityLimiter.acquire`` is built so
    #: (``checkpoint_if_cancelled``, decide, ``cancel_shielded_checkpoint``);
    #: on trio it saves a yield for every acquire that waits, and measured
    #: 3.26 against 3.4 us for the one that does not. asyncio has no cheap
    #: shielded yield, so there ``before`` is the whole checkpoint.
    before: Callable[[], Awaitable[None]]
    after: Callable[[], Awaitable[None]] | None

    @classmethod
    def current(cls) -> Native:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            import trio

            # The run's clock object is fixed for the whole run; asking it
            # directly skips two layers of lookup on every call.
            clock = trio.lowlevel.current_clock()
            return cls(
                clock.current_time,
                trio.lowlevel.checkpoint,
                trio.Event,
                _trio_parked(),
                trio.lowlevel.checkpoint_if_cancelled,
                trio.lowlevel.cancel_shielded_checkpoint,
            )
        return cls(
            loop.time,
            _asyncio_checkpoint,
            asyncio.Event,
            functools.partial(_AsyncioParked, loop),
            _asyncio_checkpoint,
            None,
        )


async def _asyncio_checkpoint() -> None:
    await asyncio.sleep(0)  # exactly anyio's checkpoint on asyncio


class _AsyncioParked(Generic[T]):
    """:class:`Parked` on asyncio: one future (what ``asyncio.Event.wait`` makes anyway)."""

    __slots__ = ("_future",)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._future: asyncio.Future[T] = loop.create_future()

    async def wait(self) -> T:
        return await self._future

    def give(self, value: T) -> None:
        if not self._future.done():  # done: the wait was cancelled
            self._future.set_result(value)


@functools.cache
def _trio_parked() -> Callable[[], Parked[Any]]:
    """:class:`Parked` on trio: the task itself, rescheduled with the value.

    trio's own ``Event`` and ``CapacityLimiter`` are built on the same two
    calls (``wait_task_rescheduled`` and ``reschedule``), through a parking
    lot. Made on first use, since trio is optional.
    """
    import outcome
    import trio

    checkpoint = trio.lowlevel.checkpoint
    current_task = trio.lowlevel.current_task
    wait_task_rescheduled = trio.lowlevel.wait_task_rescheduled
    reschedule = trio.lowlevel.reschedule
    succeeded = trio.lowlevel.Abort.SUCCEEDED
    wrap = outcome.Value

    class TrioParked(Generic[T]):
        __slots__ = ("_task", "_value")

        def __init__(self) -> None:
            self._task: trio.lowlevel.Task | None = None
            self._value: outcome.Value[T] | None = None

        async def wait(self) -> T:
            if self._value is not None:  # given before the wait began
                await checkpoint()
                return self._value.unwrap()
            self._task = current_task()
            value: T = await wait_task_rescheduled(self._abort)
            return value

        def _abort(self, raise_cancel: object) -> trio.lowlevel.Abort:
            self._task = None  # cancelled: a later give() finds nobody to wake
            return succeeded

        def give(self, value: T) -> None:
            task, self._task = self._task, None
            if task is not None:
                reschedule(task, wrap(value))
            elif self._value is None:
                self._value = wrap(value)

    return TrioParked
