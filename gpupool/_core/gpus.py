"""The core's record of each GPU: its numbers, its holders, its score.

:class:`GPUState` is what the scheduler keeps per GPU. Its derived fields
(free memory, the rank key the scorer gave) are computed once per change of
the numbers, in two steps (:meth:`GPUState.rank_with` runs the scorer and
changes nothing; :meth:`GPUState.take` applies), so that a scorer that fails
leaves the GPU as it was. The hot-path notes in ``scheduler.py`` say which
of these shortcuts the benchmarks need and what each one saves.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import final

import attrs

from .model import GPUStats
from .scoring import ScoredGPU, Scorer, checked_score

__all__ = ["GPUState", "ScoreInputs", "Settle", "packed_first", "settled"]


@final
class ScoreInputs:
    """What a scorer reads of a GPU (:class:`ScoredGPU`), for numbers not yet applied.

    A slotted class, not attrs: one is made per scorer call (hot path H6 in
    ``scheduler.py``)."""

    __slots__ = ("index", "memory_free_mb", "memory_total_mb", "utilization_pct")

    def __init__(
        self, index: int, memory_total_mb: int, memory_free_mb: int, utilization_pct: float | None
    ) -> None:
        self.index = index
        self.memory_total_mb = memory_total_mb
        self.memory_free_mb = memory_free_mb
        self.utilization_pct = utilization_pct


@final
@attrs.define(eq=False)
class Settle:
    """A released GPU waiting for the released job's processes to leave it."""

    pids: frozenset[int]
    #: Only a snapshot started at or after this epoch can show them gone.
    epoch: int
    deadline: float


@final
@attrs.define(eq=False)
class GPUState:
    """One GPU as the scheduler accounts for it (mutable: the scheduler's own state)."""

    index: int
    uuid: str
    memory_total_mb: int
    utilization_pct: float | None
    reported_healthy: bool
    health_detail: str | None
    marked_unhealthy: bool = False
    foreign_mb: int = 0
    reserved_mb: int = 0
    exclusive_holder: int | None = None
    shared_holders: dict[int, int] = attrs.Factory(dict)
    settle: Settle | None = None
    # (hot path H4 in scheduler.py) Derived from the fields above by take(), which
    # every change to them goes through (an exclusive grant excepted, see _grant): a
    # grant reads them for each candidate GPU, so they are computed once per change.
    free_mb: int = 0
    rank_key: tuple[float, int] = (0.0, 0)
    # What rank_key was computed from (hot path H4): a snapshot with the same numbers,
    # or a GPU released as it was granted, scores the same without asking the scorer.
    rank_inputs: tuple[int, int, float | None] | None = None
    #: The key under which this GPU stands in the scheduler's idle list, or None.
    idle_key: tuple[float, int] | None = None

    @property
    def healthy(self) -> bool:
        return self.reported_healthy and not self.marked_unhealthy

    @property
    def memory_free_mb(self) -> int:
        return self.free_mb

    def rank_with(
        self, scorer: Scorer, foreign_mb: int, reserved_mb: int, utilization_pct: float | None
    ) -> tuple[float, int]:
        """The rank key this GPU would have with these numbers; changes nothing.

        The first of the two steps of every change to a GPU's numbers: the
        scorer runs (and its result is checked) here, so that a scorer that
        fails makes the change fail before anything has changed.
        """
        if self.rank_inputs == (foreign_mb, reserved_mb, utilization_pct):
            return self.rank_key  # hot path H4: scored already
        free = self.memory_total_mb - foreign_mb - reserved_mb
        numbers: ScoredGPU = ScoreInputs(
            self.index, self.memory_total_mb, free if free > 0 else 0, utilization_pct
        )
        return (-checked_score(scorer, numbers), self.index)

    def take(
        self,
        foreign_mb: int,
        reserved_mb: int,
        utilization_pct: float | None,
        rank_key: tuple[float, int],
    ) -> None:
        """The second step: set the numbers, with the key :meth:`rank_with` gave for them."""
        self.foreign_mb = foreign_mb
        self.reserved_mb = reserved_mb
        self.utilization_pct = utilization_pct
        free = self.memory_total_mb - foreign_mb - reserved_mb
        self.free_mb = free if free > 0 else 0
        self.rank_inputs = (foreign_mb, reserved_mb, utilization_pct)
        self.rank_key = rank_key

    def take_reserved(self, reserved_mb: int, rank_key: tuple[float, int]) -> None:
        """:meth:`take` for a change of the reservation alone (a shared grant, a release)."""
        self.reserved_mb = reserved_mb
        free = self.memory_total_mb - self.foreign_mb - reserved_mb
        self.free_mb = free if free > 0 else 0
        if rank_key is not self.rank_key:  # else rank_with found the inputs unchanged
            self.rank_inputs = (self.foreign_mb, reserved_mb, self.utilization_pct)
            self.rank_key = rank_key

    @property
    def grantable(self) -> bool:
        return self.healthy and self.settle is None

    @property
    def idle(self) -> bool:
        return self.exclusive_holder is None and not self.shared_holders

    def holder_ids(self) -> tuple[int, ...]:
        if self.exclusive_holder is not None:
            return (self.exclusive_holder,)
        return tuple(self.shared_holders)


def packed_first(gpu: GPUState) -> tuple[bool, tuple[float, int]]:
    """Shared requests pack onto GPUs that are shared already (best fit), keeping whole
    GPUs free for exclusive requests; within that, the best score, then the index."""
    return (gpu.idle, gpu.rank_key)


def settled(
    settle: Settle, stats: GPUStats, epoch: int | None, sessions: Mapping[int, int]
) -> bool:
    """True when a snapshot started after the release shows none of the job's processes."""
    if epoch is None or epoch < settle.epoch:
        return False
    return not any(
        p.pid in settle.pids or sessions.get(p.pid) in settle.pids for p in stats.processes
    )
