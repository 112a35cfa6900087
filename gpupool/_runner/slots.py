"""The runner's ``max_parallel`` slots: a FIFO semaphore with a priority lane.

A task that already holds GPUs goes to the front lane, so a granted GPU never
sits idle behind a queue of CPU-only tasks for longer than one of them runs.
Within a lane, first come first served. As in trio's ``CapacityLimiter``, a
released slot is handed straight to the next waiter; a waiter cancelled after
its grant raced in passes the slot on (anyio #947 was exactly such a lost
token). Cancelled waiters are dropped lazily, so cancelling ten thousand of
them costs linear time, not quadratic.

Like trio's ``acquire``, :meth:`Slots.acquire` is always a checkpoint: it
yields to the scheduler even when a slot is free (so a loop of acquires cannot
starve other tasks), and a caller whose scope is already cancelled raises
there and holds nothing. A :meth:`Slots.release` without a matching acquire
is a bug in the caller and raises ``RuntimeError``, as trio's does for a
release by a non-holder; ``in_use`` never goes below zero.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from typing import final

import attrs

from .._pool.native import Event, Native

__all__ = ["Slots", "SlotsStatistics"]


@final
@attrs.frozen
class SlotsStatistics:
    """The slots at one moment, named like trio's ``CapacityLimiterStatistics``."""

    #: Slots held now.
    in_use: int
    #: Slots in all.
    total: int
    #: Acquires queued now (cancelled ones not counted).
    waiting: int


class _Waiter:
    __slots__ = ("event", "gone", "granted")

    def __init__(self, event: Event) -> None:
        self.event = event
        self.granted = False
        self.gone = False


class Slots:
    def __init__(self, total: int) -> None:
        self.total = total
        self.in_use = 0
        self._front: deque[_Waiter] = deque()
        self._back: deque[_Waiter] = deque()
        self._queued = 0
        # The backend's own checkpoint and event class, looked up at the first
        # acquire (as the pool does): anyio's would find the backend each call.
        self._checkpoint: Callable[[], Awaitable[None]] | None = None
        self._new_event: Callable[[], Event] | None = None

    @property
    def waiting(self) -> int:
        return self._queued

    def statistics(self) -> SlotsStatistics:
        return SlotsStatistics(in_use=self.in_use, total=self.total, waiting=self._queued)

    def __repr__(self) -> str:
        return f"<Slots {self.in_use}/{self.total} with {self._queued} waiting>"

    async def acquire(self, *, front: bool = False, checkpoint: bool = True) -> None:
        """Take a slot, waiting in the front lane or the back one; always a checkpoint.

        ``checkpoint=False`` is for a caller that passes a checkpoint right
        before or right after (the runner, around ``pool.acquire``): there a
        free slot is taken without a yield of its own, which would be a second
        one in a row (measured: the runner's GPU-task overhead 1.5x -> 1.05x
        of the baseline's). A wait still yields, and still raises on
        cancellation.
        """
        if self._checkpoint is None:
            native = Native.current()
            self._checkpoint, self._new_event = native.checkpoint, native.event
        if checkpoint:
            # Yield *before* deciding, as pool.acquire does: a cancelled caller
            # raises here holding nothing, and no await comes between the take
            # and the return. (Taking first and yielding after, as trio does,
            # measured 10-40 % slower in bench_runner's overhead: all but the
            # first max_parallel tasks then park on events instead of finding
            # a slot free when they resume.)
            await self._checkpoint()
        if self.in_use < self.total and not self._queued:
            self.in_use += 1
            return
        assert self._new_event is not None
        waiter = _Waiter(self._new_event())
        (self._front if front else self._back).append(waiter)
        self._queued += 1
        try:
            await waiter.event.wait()
        except BaseException:
            if waiter.granted:
                self.release()
            else:
                waiter.gone = True
                self._queued -= 1
            raise

    def release(self) -> None:
        if self.in_use <= 0:
            raise RuntimeError(
                f"Slots.release() without a matching acquire(): no slot is held ({self!r})"
            )
        for lane in (self._front, self._back):
            while lane:
                waiter = lane.popleft()
                if waiter.gone:
                    continue
                self._queued -= 1
                waiter.granted = True
                waiter.event.set()
                return
        self.in_use -= 1
