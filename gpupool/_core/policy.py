"""Scheduling policies: who goes next when GPUs free up.

A policy owns the wait queue and decides, each time something changes, which
waiters to start. It asks the core two things only, through
:class:`SchedulerView`: "would this request fit right now?" and "grant it".
The core does the accounting; the policy does the ordering. Policies are pure
and synchronous like the core.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Collection, Iterator
from typing import TYPE_CHECKING, Protocol, final

from .request import Request

if TYPE_CHECKING:
    from .scheduler import Holding, Waiter

__all__ = ["FifoPolicy", "SchedulerView", "SchedulingPolicy"]


class SchedulerView(Protocol):
    """What a policy may ask of the core while it schedules."""

    def try_grant(self, waiter: Waiter, avoid: Collection[int] = (), /) -> bool:
        """Grant now if it fits (GPUs and ``max_parallel``); True if granted.

        GPUs in ``avoid`` are left alone (kept for someone else).
        """
        ...

    def find_gpus(self, request: Request, avoid: Collection[int] = (), /) -> tuple[int, ...] | None:
        """The GPUs ``request`` would get right now (none of ``avoid``), without granting."""
        ...

    def hosts(self, request: Request, /) -> dict[int, int]:
        """GPUs that could host ``request`` once the pool's holders leave them, with the
        memory each offers the pool (its total less what outside processes use)."""
        ...

    def can_grant_more(self) -> bool:
        """False while ``max_parallel`` allocations are held."""
        ...

    @property
    def max_parallel(self) -> int | None:
        """The cap on allocations held at once (``None``: no cap)."""
        ...

    def holdings(self) -> Iterator[Holding]:
        """The live allocations, oldest first."""
        ...


class SchedulingPolicy(Protocol):
    """The wait queue and the rule for serving it.

    The core calls :meth:`push` for each new waiter, :meth:`remove` when a
    waiter is withdrawn (cancelled, timed out, failed), and :meth:`schedule`
    after every change. :meth:`schedule` calls ``view.try_grant(waiter)`` for
    the waiters to start and must itself drop every waiter it granted.
    Iteration yields the waiters in order of service. When nobody waits, the
    core grants a request that fits at once without asking the policy: with an
    empty queue there is nobody to be fair to. And a new waiter that joins a
    non-empty queue while nothing can start (every GPU held whole, or
    ``max_parallel`` reached), behind someone of its priority or above, is
    pushed without a :meth:`schedule` call: no grant could come of it.
    """

    def push(self, waiter: Waiter, /) -> None: ...
    def remove(self, waiter: Waiter, /) -> None: ...
    def schedule(self, view: SchedulerView, now: float, /) -> None: ...
    def __iter__(self) -> Iterator[Waiter]: ...
    def __len__(self) -> int: ...


@final
class FifoPolicy:
    """Strict priority-then-arrival order: nobody overtakes the head of the queue.

    Higher ``priority`` is served first; equal priorities in arrival order.
    Simple and starvation-free, but a head that cannot fit yet idles GPUs that
    later, smaller requests could use.

    Each priority level is an ``OrderedDict`` (a plain dict gets slower to take
    the first item from as items are deleted at its front), so push, remove and
    finding the head are O(1) (plus O(log levels) for a new level), whatever
    the queue's length.
    """

    def __init__(self) -> None:
        self._levels: dict[int, OrderedDict[int, Waiter]] = {}
        # Distinct priorities present, ascending; the highest is served first.
        self._priorities: list[int] = []
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Waiter]:
        for priority in reversed(self._priorities):
            yield from list(self._levels[priority].values())

    def push(self, waiter: Waiter) -> None:
        priority = waiter.request.priority
        level = self._levels.get(priority)
        if level is None:
            level = self._levels[priority] = OrderedDict()
            bisect.insort(self._priorities, priority)
        level[waiter.ticket] = waiter
        self._count += 1

    def remove(self, waiter: Waiter) -> None:
        priority = waiter.request.priority
        level = self._levels[priority]
        del level[waiter.ticket]
        self._count -= 1
        if not level:
            del self._levels[priority]
            self._priorities.remove(priority)

    def head(self) -> Waiter | None:
        if not self._priorities:
            return None
        return next(iter(self._levels[self._priorities[-1]].values()))

    def schedule(self, view: SchedulerView, now: float) -> None:
        while (head := self.head()) is not None and view.try_grant(head):
            self.remove(head)
