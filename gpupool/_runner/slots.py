"""The runner's ``max_parallel`` slots: a FIFO semaphore with a priority lane.

A task that already holds GPUs goes to the front lane, so a granted GPU never
sits idle behind a queue of CPU-only tasks for longer than one of them runs.
Within a lane, first come first served. As in trio's ``CapacityLimiter``, a
released slot is handed straight to the next waiter; a waiter cancelled after
its grant raced in passes the slot on (anyio #947 was exactly such a lost
token). Cancelled waiters are dropped lazily, so cancelling ten thousand of
them costs linear time, not quadratic.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from .._pool.native import Event, Native

__all__ = ["Slots"]


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
        # The backend's own event class, looked up at the first wait (as the pool does).
        self._new_event: Callable[[], Event] | None = None

    @property
    def waiting(self) -> int:
        return self._queued

    async def acquire(self, *, front: bool = False) -> None:
        if self.in_use < self.total and not self._queued:
            self.in_use += 1
            return
        if self._new_event is None:
            self._new_event = Native.current().event
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
