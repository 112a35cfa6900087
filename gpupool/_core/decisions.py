"""What the scheduling core decides: the values its calls return.

Every call into :class:`~gpupool._core.scheduler.Scheduler` that can change
who holds what returns the decisions it made, as a list of :data:`Outcome`:
wake this waiter with a grant (:class:`Grant`), or with an error
(:class:`Failure`). Nothing is kept back in the core for the caller to fetch
later, so the async pool delivers exactly what the call returned (h11's
events, in the same spirit).
"""

from __future__ import annotations

from typing import NamedTuple, TypeAlias, final

import attrs

from .model import GPUAllocation

__all__ = ["Failure", "Grant", "Outcome", "Submission"]


@final
@attrs.frozen
class Grant:
    """Wake waiter ``ticket``: it now holds ``allocation``."""

    ticket: int
    allocation: GPUAllocation


@final
@attrs.frozen
class Failure:
    """Wake waiter ``ticket`` with ``error``: it will never be granted.

    ``error`` is a :class:`GPUPoolError` (``UnsatisfiableRequest``,
    ``PoolClosed``), or the error of a scorer that failed on the GPUs the
    waiter was about to be granted.
    """

    ticket: int
    error: Exception


#: One decision about one waiter.
Outcome: TypeAlias = Grant | Failure


class Submission(NamedTuple):
    """What :meth:`Scheduler.submit` decided for the submitted request itself.

    ``allocation`` is set when it was granted at once, ``None`` when it waits.
    ``outcomes`` are decisions for *other* waiters made in the same step.
    ``error`` is set when the request itself failed in that step (the scorer
    failed on the GPUs it was about to get): raise it once the outcomes are
    delivered. (A named tuple rather than an attrs class: it is made on every
    contended acquire: hot path H8 in scheduler.py.)
    """

    ticket: int
    allocation: GPUAllocation | None
    outcomes: list[Outcome]
    error: Exception | None = None
