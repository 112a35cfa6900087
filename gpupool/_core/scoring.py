"""Pure GPU scoring: which of the GPUs that fit a request should it get?

A score is a pure function of one GPU's current numbers. The scheduler ranks
the GPUs that satisfy a request by score, highest first, and breaks ties by
the lower index so that the same state always yields the same choice.

A score must be a finite number. The scheduler keeps its idle GPUs in a list
sorted by score and finds them again by bisection, so one NaN (which compares
false with everything) corrupts the order: a GPU is left in the list while it
is held and handed to a second exclusive holder. Every score therefore enters
the core through :func:`checked_score`, which refuses anything else.
"""

from __future__ import annotations

import inspect
import math
from typing import Protocol

from .checks import is_number, shown

__all__ = [
    "MEMORY_WEIGHT",
    "UTILIZATION_WEIGHT",
    "ScoredGPU",
    "Scorer",
    "checked_score",
    "default_score",
    "scorer_name",
]

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


def scorer_name(scorer: object) -> str:
    """How error messages name a scorer: its qualified name, else its repr."""
    name = getattr(scorer, "__qualname__", None)
    return name if isinstance(name, str) else shown(scorer)


def checked_score(scorer: Scorer, gpu: ScoredGPU) -> float:
    """``scorer(gpu)`` as a float, or an error naming the scorer, the GPU and the value.

    ``TypeError`` when the scorer returns something that is not a number (a
    bool, a string, a coroutine from an ``async def`` scorer), ``ValueError``
    for NaN, an infinity or an int too large for a float. What the scorer
    itself raises propagates unchanged. The scheduler calls this before it
    changes anything, so a failing scorer leaves the pool as it was.
    """
    score: object = scorer(gpu)  # typed as what it may really be
    if type(score) is float and -math.inf < score < math.inf:
        return score  # (hot path H6, scheduler.py) two comparisons; NaN fails both
    if inspect.iscoroutine(score):
        score.close()  # never awaited: close it rather than leave a warning behind
        raise TypeError(
            f"scorer {scorer_name(scorer)} returned a coroutine for GPU {gpu.index}: "
            "a scorer must be a plain function returning a finite number"
        )
    if not is_number(score):
        raise TypeError(
            f"scorer {scorer_name(scorer)} must return a finite number for GPU {gpu.index}, "
            f"got {shown(score)}"
        )
    try:
        number = float(score)
    except OverflowError:
        number = math.nan  # an int beyond the float range: as unusable as NaN
    if not math.isfinite(number):
        raise ValueError(
            f"scorer {scorer_name(scorer)} returned {shown(score)} for GPU {gpu.index}: "
            "a score must be a finite number"
        )
    return number
