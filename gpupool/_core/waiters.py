"""Queued requests, and the one queue the built-in policies keep them in.

A :class:`Waiter` is what a policy is given for every request that has to
wait. :class:`WaitQueue` is the bookkeeping that :class:`FifoPolicy`,
:class:`BackfillPolicy` and :class:`GreedyPolicy` share: waiters by priority
(highest first), then by arrival, optionally grouped within a priority (the
backfilling policy groups them by request *shape*, so that a pass can skip
every waiter behind a shape-mate that does not fit). One implementation, so
that the order of service is defined once.
"""

from __future__ import annotations

import bisect
import heapq
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Mapping
from typing import Any, Generic, TypeVar, final

import attrs

from .request import Resources

__all__ = ["WaitQueue", "Waiter"]

K = TypeVar("K", bound=Hashable)


@final
@attrs.define(eq=False)
class Waiter:
    """A queued request, as the core hands it to the policy.

    ``ticket`` is unique within a scheduler and grows with arrival, so it
    orders waiters by arrival; ``submitted_at`` is the ``now`` of the submit.
    Policies read waiters and hand them back to ``view.try_grant``; they do
    not change them. (A mutable attrs class: one is made for every request
    that waits, and a frozen one costs more to make.)
    """

    ticket: int
    request: Resources
    submitted_at: float
    #: The label its allocation will carry (``pool.acquire(experiment_id=...)``).
    experiment_id: str | None = None


#: Not a group key (a key may be ``None``: a queue without groups has only that one).
_ABSENT: Any = object()


class _Level(Generic[K]):
    """The waiters of one priority: a FIFO per group, groups ordered by their oldest waiter."""

    __slots__ = ("count", "groups", "heads", "order")

    def __init__(self) -> None:
        self.groups: dict[K, OrderedDict[int, Waiter]] = {}
        #: The ticket of each group's oldest waiter, and that group.
        self.heads: dict[int, K] = {}
        #: Those tickets, sorted (a change costs a bisect and a memmove of one pointer
        #: per group, cheap for the few hundred groups a queue has at most in practice).
        self.order: list[int] = []
        self.count = 0

    def push(self, waiter: Waiter, key: K) -> None:
        members = self.groups.get(key)
        if members is None:
            # OrderedDict, not dict: a plain dict gets slower to take the first item
            # from as items are deleted at its front.
            members = self.groups[key] = OrderedDict()
            self.heads[waiter.ticket] = key
            bisect.insort(self.order, waiter.ticket)
        members[waiter.ticket] = waiter
        self.count += 1

    def remove(self, waiter: Waiter, key: K) -> None:
        members = self.groups[key]
        del members[waiter.ticket]
        self.count -= 1
        if self.heads.pop(waiter.ticket, _ABSENT) is not _ABSENT:  # it was its group's oldest
            del self.order[bisect.bisect_left(self.order, waiter.ticket)]
            if members:
                first = next(iter(members))
                self.heads[first] = key
                bisect.insort(self.order, first)
            else:
                del self.groups[key]

    def oldest(self) -> Waiter:
        ticket = self.order[0]
        return self.groups[self.heads[ticket]][ticket]

    def __iter__(self) -> Iterator[Waiter]:
        queues = [list(members.values()) for members in self.groups.values()]
        if len(queues) == 1:
            return iter(queues[0])
        return heapq.merge(*queues, key=lambda w: w.ticket)


@final
class WaitQueue(Generic[K]):
    """Waiters by priority (highest first), then arrival, grouped by ``group(request)``.

    Without ``group`` every priority is one FIFO. Push, remove and finding
    the head cost O(log groups) (plus O(log levels) for a new priority),
    whatever the queue's length. Iteration yields the waiters in order of
    service and works on a copy, so the caller may remove waiters meanwhile.
    """

    __slots__ = ("_count", "_group", "_levels", "_priorities")

    def __init__(self, group: Callable[[Resources], K] | None = None) -> None:
        # None: one group per priority, with no call to make for its key.
        self._group = group
        self._levels: dict[int, _Level[K]] = {}
        # Distinct priorities present, highest first.
        self._priorities: list[int] = []
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Waiter]:
        for priority in list(self._priorities):
            yield from list(self._levels[priority])

    def push(self, waiter: Waiter) -> None:
        priority = waiter.request.priority
        level = self._levels.get(priority)
        if level is None:
            level = self._levels[priority] = _Level()
            self._priorities.append(priority)
            self._priorities.sort(reverse=True)
        group = self._group
        level.push(waiter, None if group is None else group(waiter.request))  # type: ignore[arg-type]
        self._count += 1

    def remove(self, waiter: Waiter) -> None:
        """Drop ``waiter``, which must be queued (a ``KeyError`` otherwise)."""
        priority = waiter.request.priority
        level = self._levels[priority]
        group = self._group
        level.remove(waiter, None if group is None else group(waiter.request))  # type: ignore[arg-type]
        self._count -= 1
        if not level.count:
            del self._levels[priority]
            self._priorities.remove(priority)

    def head(self) -> Waiter | None:
        """The first waiter in order of service (priority, then arrival), or ``None``."""
        if not self._priorities:
            return None
        return self._levels[self._priorities[0]].oldest()

    def single_group(self) -> bool:
        """True when every waiter has one priority and one group: the commonest queue."""
        return len(self._priorities) == 1 and len(self._levels[self._priorities[0]].groups) == 1

    def groups(
        self, limit: int | None, skip: Callable[[K], bool]
    ) -> Iterator[Mapping[int, Waiter]]:
        """Each group's FIFO (ticket to waiter), oldest group first, priority by priority.

        Groups whose key ``skip`` accepts are passed over; at most ``limit``
        others are yielded (``None``: all). The FIFOs are live: the caller
        may grant and :meth:`remove` their waiters between two steps, and a
        group emptied meanwhile is not yielded.
        """
        left = limit
        for priority in list(self._priorities):
            level = self._levels.get(priority)
            if level is None:
                continue
            heads = level.heads
            keys = [heads[t] for t in level.order[: None if left is None else left + 1]]
            for key in keys:
                if skip(key):
                    continue
                if left is not None:
                    if left == 0:
                        return
                    left -= 1
                members = level.groups.get(key)
                if members:
                    yield members
