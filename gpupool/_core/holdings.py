"""What the core knows of an allocation it has granted and not taken back."""

from __future__ import annotations

from typing import final

import attrs

from .model import GPUAllocation
from .request import Resources

__all__ = ["Holding"]


@final
@attrs.define(eq=False)
class Holding:
    """An allocation the pool has granted and not yet taken back.

    Policies read these through :meth:`SchedulerView.holdings` to plan ahead
    (when will the head's GPUs be free, by the holders' ``expected_duration``?).
    They are the core's own records, shown as they are rather than copied on
    every scheduling pass: read them, never change them. (Mutable, and not
    frozen, because the core adds ``pids`` as processes register, and a frozen
    attrs class costs more to make on every grant.)
    """

    allocation: GPUAllocation
    #: What was asked for (its ``expected_duration`` included).
    request: Resources
    #: The waiter's ticket; ``None`` for a grant made at once, which never waited.
    ticket: int | None
    #: When it was granted, on the clock the core is given (``now`` arguments).
    granted_at: float
    #: Processes registered as working for the allocation (memory attribution, settle).
    pids: frozenset[int] = frozenset()
