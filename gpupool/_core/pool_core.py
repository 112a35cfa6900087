"""The calls a pool makes on whatever decides for it: :class:`PoolCore`.

A :class:`~gpupool.GPUResourcePool` is driven by one of two cores: its own
:class:`~gpupool._core.scheduler.Scheduler` (``ledger=None``), or the
ledger's ``MachineCore`` (``gpupool/_ledger/machine.py``), which runs the same
scheduler over the machine's state, one ledger transaction per call. The pool
waits and wakes around either one through exactly the calls below, and must
not care which it has.

This Protocol is that contract, written down once. It lives in the core
because the core defines the shape and the ledger layer implements it: the
ledger may import the core, never the reverse (the import-linter layers in
``pyproject.toml``). It is structural, so neither class inherits from it or
imports it; mypy checks each of them against it where the pool assigns its
core. A call that only the ledger has (``hold_id``, ``set_until``,
``collect``) is not part of it: the pool reaches those through an
``isinstance`` check on ``MachineCore``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from .decisions import Outcome, Submission
from .model import GPUAllocation, GPUStats, PoolStatistics
from .request import Resources

__all__ = ["PoolCore"]


class PoolCore(Protocol):
    """What decides for a pool: the scheduler's calls, each returning its decisions.

    Every method is synchronous and takes the time as an argument; the
    outcomes it returns are the waiters the pool must wake
    (:mod:`gpupool._core.decisions`).
    """

    @property
    def epoch(self) -> int:
        """Read just before a snapshot starts, and passed back to :meth:`update` with it."""
        ...

    @property
    def wants_refresh(self) -> bool:
        """Whether fresh provider data could change a decision (waiters, settling GPUs)."""
        ...

    @property
    def waiting(self) -> int:
        """How many of this pool's requests are queued (for ``WouldBlock``'s message)."""
        ...

    def grant_at_once(
        self, request: Resources, now: float, experiment_id: str | None = None
    ) -> GPUAllocation | None:
        """The fast path: an allocation if nobody is queued and it fits now, else None."""
        ...

    def submit(
        self,
        request: Resources,
        now: float,
        *,
        nowait: bool = False,
        experiment_id: str | None = None,
    ) -> Submission:
        """Grant ``request`` now, queue it under a ticket, or say why it never can be."""
        ...

    def cancel(self, ticket: int, now: float) -> Sequence[Outcome]:
        """Withdraw waiter ``ticket``, handing back a grant that raced with it."""
        ...

    def release(self, allocation: GPUAllocation, now: float) -> Sequence[Outcome]:
        """Give ``allocation``'s GPUs back (``AllocationNotHeld`` if it is not held)."""
        ...

    def attach_process(self, allocation: GPUAllocation, pid: int) -> None:
        """Record that process ``pid`` (and its session) works for ``allocation``."""
        ...

    def update(
        self,
        snapshot: Sequence[GPUStats],
        now: float,
        *,
        epoch: int | None = None,
        sessions: Mapping[int, int] | None = None,
    ) -> Sequence[Outcome]:
        """Take in a provider's snapshot, started at ``now`` when :attr:`epoch` was ``epoch``."""
        ...

    def expire(self, now: float) -> Sequence[Outcome]:
        """End the settles whose ``settle_timeout`` has passed, when no snapshot arrives."""
        ...

    def mark_unhealthy(
        self, index: int, now: float, detail: str = "marked unhealthy"
    ) -> Sequence[Outcome]:
        """Stop granting GPU ``index``; waiters it leaves unsatisfiable fail."""
        ...

    def mark_healthy(self, index: int, now: float) -> Sequence[Outcome]:
        """Undo :meth:`mark_unhealthy`."""
        ...

    def close(self) -> Sequence[Outcome]:
        """Fail every waiter with ``PoolClosed`` and grant nothing more."""
        ...

    def statistics(self) -> PoolStatistics:
        """GPUs, holders and waiters as this core accounts for them."""
        ...
