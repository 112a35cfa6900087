"""The example policy and scorer of docs/policies.md, "Writing a policy or a scorer".

docs/policies.md shows this file verbatim (tests/test_policy.py checks that
it does), and the tests run both with the scheduling core and the async pool.
Only public names are used: what a custom policy or scorer needs is exported
from ``gpupool``.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator

import gpupool

#: Order of service: priority (higher first), expected duration, then arrival.
_Key = tuple[int, float, int]


class ShortestFirstPolicy:
    """Within a priority, the request expected to end soonest goes first.

    Requests without ``expected_duration`` count as the longest; ties go by
    arrival. Strict in its own order: only the head is ever granted, so no
    request is overtaken by one that this order puts behind it. The price of
    the order: a long request can wait as long as shorter ones keep arriving.
    """

    def __init__(self) -> None:
        self._order: list[_Key] = []  # sorted: the head first
        self._waiters: dict[int, gpupool.Waiter] = {}  # by ticket

    def _key(self, waiter: gpupool.Waiter) -> _Key:
        hint = waiter.request.expected_duration
        return (-waiter.request.priority, math.inf if hint is None else hint, waiter.ticket)

    def push(self, waiter: gpupool.Waiter) -> None:
        bisect.insort(self._order, self._key(waiter))
        self._waiters[waiter.ticket] = waiter

    def remove(self, waiter: gpupool.Waiter) -> None:
        del self._order[bisect.bisect_left(self._order, self._key(waiter))]
        del self._waiters[waiter.ticket]

    def schedule(self, view: gpupool.SchedulerView, now: float) -> None:
        # Grant heads while they fit; the first that does not blocks everyone behind it.
        while self._order:
            head = self._waiters[self._order[0][2]]
            if not view.try_grant(head):
                return
            self.remove(head)  # granted (or failed by the scorer): no longer waiting

    def __iter__(self) -> Iterator[gpupool.Waiter]:
        return iter([self._waiters[ticket] for _, _, ticket in self._order])

    def __len__(self) -> int:
        return len(self._order)


def coolest_first(gpu: gpupool.ScoredGPU) -> float:
    """Prefer the least busy GPU; between equally busy ones, the one with more free memory.

    A GPU that cannot report utilization (a MIG instance) counts as half busy.
    """
    busy = 50.0 if gpu.utilization_pct is None else gpu.utilization_pct
    free = gpu.memory_free_mb / gpu.memory_total_mb if gpu.memory_total_mb else 0.0
    return -busy + free
