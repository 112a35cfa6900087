"""The running backend's own primitives, looked up once instead of on every call.

anyio finds the backend on each ``current_time()``, ``checkpoint()`` and
``Event()``; the hot paths of the pool and the runner use these several times
per task, so they look them up once (per pool or runner) here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, Protocol

__all__ = ["Event", "Native"]


class Event(Protocol):
    """What the pool and the runner need of an event: anyio's, trio's or asyncio's."""

    def set(self) -> None: ...
    def is_set(self) -> bool: ...
    async def wait(self) -> Any: ...


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

    @classmethod
    def current(cls) -> Native:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            import trio

            # The run's clock object is fixed for the whole run; asking it
            # directly skips two layers of lookup on every call.
            clock = trio.lowlevel.current_clock()
            return cls(clock.current_time, trio.lowlevel.checkpoint, trio.Event)
        return cls(loop.time, _asyncio_checkpoint, asyncio.Event)


async def _asyncio_checkpoint() -> None:
    await asyncio.sleep(0)  # exactly anyio's checkpoint on asyncio
