"""Pure GPU scoring: which of the GPUs that fit a request should it get?

A score is a pure function of one GPU's current numbers. The scheduler ranks
the GPUs that satisfy a request by score, highest first, and breaks ties by
the lower index so that the same state always yields the same choice.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["MEMORY_WEIGHT", "UTILIZATION_WEIGHT", "ScoredGPU", "Scorer", "default_score"]

MEMORY_WEIGHT = 0.6
UTILIZATION_WEIGHT = 0.4


class ScoredGPU(Protocol):
    """What a scorer may read of a GPU (the scheduler's live view, read-only)."""

    @property
    def index(self) -> int: ...
    @property
    def memory_total_mb(self) -> int: ...
    @property
    def memory_free_mb(self) -> int: ...
    @property
    def utilization_pct(self) -> float | None: ...


class Scorer(Protocol):
    """Higher is better. Must be pure and cheap: it runs on every grant."""

    def __call__(self, gpu: ScoredGPU, /) -> float: ...


def default_score(gpu: ScoredGPU, /) -> float:
    """``0.6 * free_memory_fraction + 0.4 * (1 - utilization)``.

    Free memory counts what the pool has reserved and what processes outside
    the pool use. A GPU that cannot report utilization (a MIG instance) is
    scored as half busy: neither preferred nor avoided for lack of a number.
    """
    total = gpu.memory_total_mb
    free_fraction = gpu.memory_free_mb / total if total > 0 else 0.0
    utilization = gpu.utilization_pct
    busy = 0.5 if utilization is None else utilization / 100.0
    return MEMORY_WEIGHT * free_fraction + UTILIZATION_WEIGHT * (1.0 - busy)
