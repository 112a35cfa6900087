"""The head's reserved start: when the request at the front could start, by the hints.

:class:`BackfillPolicy` (``backfill.py``) asks one question of a plan: would
granting these GPUs to that request now delay the head? The plan answers from
the live allocations' ``expected_duration`` hints (an allocation without a
hint, or past it, has no known end), for exclusive heads (waiting for whole
GPUs) and shared ones (waiting for memory), and with ``max_parallel`` slots.

A holder that outlived its estimate is planned to end when the estimate,
doubled until it lies ahead, says (``_extended``); one that outlived a user's
hint has an unknown end. A plan made with ``estimates=False`` reads only the users' hints
(``expected_duration``) and treats a duration the system estimated
(``estimated_duration``) as none: what the policy does once the head's
patience is spent, so that estimates that turn out too short cannot keep
delaying it (``backfill.py``).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Collection
from typing import TypeAlias

from .policy import SchedulerView
from .request import Resources, planned_duration

__all__ = ["Plan"]

_INF = math.inf

#: (expected end, memory reserved per GPU) of one shared allocation on one GPU.
_Use: TypeAlias = "tuple[float, int]"


def _extended(granted_at: float, estimate: float | None, now: float) -> float:
    """When a holder that outlived its *estimate* should end: the estimate doubled until
    that lies ahead of ``now``.

    Tsafrir, Etsion and Feitelson's correction of a prediction that turned out short:
    the job is still expected to end, later. A user's hint that was outlived gets no
    such credit (its end is unknown, as docs/scheduling.md has always said). On the
    batch benchmark with durations +-30% off their history, planning outlived
    estimates as unknown gave makespan/LB 1.067 (median of 5 seeds, in the
    simulator), worse than no estimates at all (1.049); extended, 1.036. Only while
    the head is patient: afterwards no estimate counts (``backfill.py``).
    """
    assert estimate is not None
    while granted_at + estimate <= now:
        estimate *= 2
    return granted_at + estimate


class Plan:
    """When the head could start, by the holders' hints, and what would delay that.

    ``free_at`` maps each GPU that could host the head to when it could,
    ``shadow`` is the head's reserved start (``None`` when the hints cannot
    tell), ``spare`` counts the GPUs free by then beyond what the head needs,
    and ``slots`` the ``max_parallel`` slots free then beyond the head's own.
    Built in O(GPUs + holders); each later check costs O(GPUs of the request).
    """

    def __init__(
        self, view: SchedulerView, head: Resources, now: float, *, estimates: bool = True
    ) -> None:
        self.now = now
        self.estimates = estimates
        self.need = head.required_gpus
        self.memory = head.min_memory_mb
        self.capacity = view.hosts(head)
        self.shadow: float | None = None
        self.spare = 0
        #: max_parallel slots free at the shadow (ever, without one) beyond the head's.
        self.slots: float = _INF
        self.free_at: dict[int, float] = {}
        self._protected: set[int] | None = None
        limit = view.max_parallel
        if head.exclusive and not any(
            planned_duration(h.request, estimates=estimates) is not None for h in view.holdings()
        ):
            # The common case without hints, in O(holders) and no more: nothing can be
            # reserved, as the head cannot start on the idle GPUs alone. (A GPU settling
            # after a release counts as busy here, and as free below: within one snapshot
            # interval either way.)
            if limit is not None:
                self.slots = limit - 1 - sum(1 for _ in view.holdings())
            return
        free_at = self.free_at = dict.fromkeys(self.capacity, now)
        # An exclusive head waits for every holder of a GPU; a shared one for memory (and
        # for an exclusive holder), so it keeps the list of what is on each GPU.
        self.shared: dict[int, list[_Use]] | None = None
        self.blocked: dict[int, float] = {}
        if not head.exclusive:
            self.shared = {g: [] for g in self.capacity}
        ends: list[float] = []
        exclusive = head.exclusive
        for holding in view.holdings():
            # When it should end by its hint; unknown (inf) without a hint or past it.
            # An estimate it outlived is extended instead (see `_extended`).
            hint = planned_duration(holding.request, estimates=estimates)
            end = _INF if hint is None else holding.granted_at + hint
            if end < now:
                user_hint = holding.request.expected_duration is not None
                end = _INF if user_hint else _extended(holding.granted_at, hint, now)
            ends.append(end)
            allocation = holding.allocation
            for index in allocation.gpu_indices:
                free = free_at.get(index)
                if free is None:
                    continue
                if exclusive:
                    if end > free:
                        free_at[index] = end
                else:
                    self._add(index, end, allocation.memory_mb, allocation.exclusive)
        if self.shared is not None:
            for index in self.shared:
                free_at[index] = self._shared_free_time(index)
        times = sorted(free_at.values())
        shadow = times[self.need - 1] if len(times) >= self.need else _INF
        if limit is not None and len(ends) >= limit:
            # The head also needs a max_parallel slot: enough holders must have ended.
            ends.sort()
            shadow = max(shadow, ends[len(ends) - limit])
        self.shadow = shadow if shadow < _INF else None
        if self.shadow is not None:
            self.spare = bisect.bisect_right(times, shadow) - self.need
            if limit is not None:
                self.slots = limit - 1 - sum(1 for e in ends if e > shadow)
        elif limit is not None:
            self.slots = limit - 1 - len(ends)

    def _add(self, index: int, end: float, memory: int, exclusive: bool) -> None:
        if self.shared is None:
            if end > self.free_at[index]:
                self.free_at[index] = end
        elif exclusive:
            self.blocked[index] = max(self.blocked.get(index, self.now), end)
        else:
            self.shared[index].append((end, memory))

    def _shared_free_time(self, index: int, extra: _Use | None = None) -> float:
        """When enough memory on GPU ``index`` is free for the (shared) head."""
        assert self.shared is not None
        uses = self.shared[index] if extra is None else [*self.shared[index], extra]
        free = self.capacity[index] - sum(mb for _, mb in uses)
        at = self.now
        for end, mb in sorted(uses):
            if free >= self.memory:
                break
            free += mb
            at = end
        return max(self.blocked.get(index, self.now), at)

    def _free_time_with(self, index: int, request: Resources) -> float:
        end = self._end(request)
        if self.shared is None:
            return max(self.free_at[index], end)
        if request.exclusive:
            return max(self._shared_free_time(index), end)
        return self._shared_free_time(index, (end, request.min_memory_mb))

    def _end(self, request: Resources) -> float:
        hint = planned_duration(request, estimates=self.estimates)
        return _INF if hint is None else self.now + hint

    def _lost(self, chosen: tuple[int, ...], request: Resources) -> int:
        """How many GPUs of ``chosen`` would no longer be free for the head by the shadow."""
        shadow = self.shadow
        assert shadow is not None
        lost = 0
        for index in chosen:
            free_at = self.free_at.get(index)
            if free_at is not None and free_at <= shadow:
                lost += self._free_time_with(index, request) > shadow
        return lost

    def late(self, request: Resources) -> bool:
        """Would ``request`` hold GPUs past the reserved start (or with none, for long)?"""
        return self.shadow is None or self._end(request) > self.shadow

    def delays(self, chosen: tuple[int, ...], request: Resources) -> bool:
        """Would granting ``chosen`` to ``request`` now delay the head?"""
        if self.shadow is None:
            return self.slots < 1 or any(index in self.capacity for index in chosen)
        if self._end(request) > self.shadow and self.slots < 1:
            return True
        return self._lost(chosen, request) > self.spare

    def protected(self, request: Resources) -> Collection[int]:
        """GPUs ``request`` must keep off so as not to delay the head (empty: no way to)."""
        if self.shadow is None:
            return self.capacity.keys() if self.slots >= 1 else ()
        if self._end(request) > self.shadow and self.slots < 1:
            return ()
        if self._protected is None:
            shadow = self.shadow
            ready = sorted((t, g) for g, t in self.free_at.items() if t <= shadow)
            # Of the GPUs free by the shadow, the latest-free ``spare`` ones may go.
            self._protected = {g for _, g in ready[: len(ready) - self.spare]}
        return self._protected

    def take(self, chosen: tuple[int, ...], request: Resources) -> None:
        """Account for ``request`` having been granted ``chosen``."""
        self._protected = None
        end = self._end(request)
        if self.shadow is None:
            self.slots -= 1
        else:
            self.spare -= self._lost(chosen, request)
            if end > self.shadow:
                self.slots -= 1
        for index in chosen:
            if index in self.free_at:
                self._add(index, end, request.min_memory_mb, request.exclusive)
                if self.shared is not None:
                    self.free_at[index] = self._shared_free_time(index)
