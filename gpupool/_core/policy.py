"""Scheduling policies: who goes next when GPUs free up.

A policy owns the wait queue and decides, each time something changes, which
waiters to start. It asks the core two things only, through
:class:`SchedulerView`: "would this request fit right now?" and "grant it".
The core does the accounting; the policy does the ordering. Policies are pure
and synchronous like the core. How to write one: ``docs/scheduling.md``.

Decisions are values, but a policy does not return them: ``view.try_grant``
records each grant (or a scorer's failure) in the view, which the core makes
for one scheduling pass and whose decisions the core's call then returns. So
a policy cannot lose a grant it made, nor report one it did not make; it
only says whom to try, in which order.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from typing import Protocol, final

from .holdings import Holding
from .request import Resources
from .waiters import Waiter, WaitQueue

__all__ = ["FifoPolicy", "SchedulerView", "SchedulingPolicy"]


class SchedulerView(Protocol):
    """What a policy may ask of the core during one scheduling pass.

    Valid only inside the :meth:`SchedulingPolicy.schedule` call it was
    given to: the decisions it records are returned when that call ends.
    """

    def try_grant(self, waiter: Waiter, avoid: Collection[int] = (), /) -> bool:
        """Grant now if it fits (GPUs and ``max_parallel``); True if granted.

        GPUs in ``avoid`` are left alone (kept for someone else). True also
        when the scorer failed on the GPUs the waiter was about to get: the
        waiter is then woken with that error. Either way it is no longer
        waiting, and the policy must drop it from its queue.
        """
        ...

    def find_gpus(
        self, request: Resources, avoid: Collection[int] = (), /
    ) -> tuple[int, ...] | None:
        """The GPUs ``request`` would get right now (none of ``avoid``), without granting."""
        ...

    def hosts(self, request: Resources, /) -> dict[int, int]:
        """GPUs that could host ``request`` once the pool's holders leave them, with the
        memory each offers the pool (its total less what outside processes use).
        Do not modify the answer."""
        ...

    def can_grant_more(self) -> bool:
        """False while ``max_parallel`` allocations are held."""
        ...

    @property
    def max_parallel(self) -> int | None:
        """The cap on allocations held at once (``None``: no cap)."""
        ...

    def holdings(self) -> Iterator[Holding]:
        """The live allocations, oldest first (read them, do not change them)."""
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
    """

    __slots__ = ("_queue",)

    def __init__(self) -> None:
        self._queue: WaitQueue[None] = WaitQueue()

    def __repr__(self) -> str:
        return "FifoPolicy()"

    def __len__(self) -> int:
        return len(self._queue)

    def __iter__(self) -> Iterator[Waiter]:
        return iter(self._queue)

    def push(self, waiter: Waiter) -> None:
        self._queue.push(waiter)

    def remove(self, waiter: Waiter) -> None:
        self._queue.remove(waiter)

    def head(self) -> Waiter | None:
        """The next waiter to serve, or ``None`` when nobody waits."""
        return self._queue.head()

    def schedule(self, view: SchedulerView, now: float) -> None:
        queue = self._queue
        while (head := queue.head()) is not None and view.try_grant(head):
            queue.remove(head)
