"""The scheduling core over the whole machine: built from the ledger's state for
one transaction, and read back into it.

Every process that changes the ledger runs the same pure core
(:class:`~gpupool._core.scheduler.Scheduler` with the default
:class:`~gpupool._core.backfill.BackfillPolicy`) over the same state, inside
the ledger's lock, so every process decides as one pool would: priority,
then machine-wide arrival (tickets come from the ledger's one counter),
with the same backfilling rule, planning with the same duration hints and
estimates (rows carry both). A grant made for another process's waiter is
written into the ledger for that process to collect. No I/O here.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import final

import attrs

from .._core.backfill import BackfillPolicy
from .._core.decisions import Failure, Grant, Outcome
from .._core.errors import PoolClosed, UnsatisfiableRequest
from .._core.gpus import Settle
from .._core.model import GPUAllocation, GPUProcess, GPUStats
from .._core.request import Resources
from .._core.scheduler import Scheduler
from .._core.waiters import Waiter
from .rows import Damaged, GPURow, HoldRow, LedgerState, SettleRow, WaiterRow

__all__ = ["Replica", "error_from_text", "error_to_text", "stats_of"]


@final
class _Ids(Iterator[int]):
    """Tickets and allocation ids from the ledger's one counter."""

    __slots__ = ("_state",)

    def __init__(self, state: LedgerState) -> None:
        self._state = state

    def __next__(self) -> int:
        return self._state.take_id()


@final
class Replica:
    """A :class:`Scheduler` holding the machine's state, for one transaction."""

    def __init__(
        self,
        state: LedgerState,
        now: float,
        *,
        settle_timeout: float,
        grants_allowed: bool = True,
    ) -> None:
        self.state = state
        self.now = now
        order = sorted(state.gpus.values(), key=lambda g: (g.index, g.uuid))
        self.index_of = {g.uuid: i for i, g in enumerate(order)}
        self.uuids = [g.uuid for g in order]
        self._order = tuple(self.uuids)
        snapshot = [stats_of(g, i) for i, g in enumerate(order)]
        self.policy = BackfillPolicy()
        self.core = Scheduler(
            snapshot,
            # While a rebuilt ledger waits for its live members to write themselves back,
            # nothing may be granted: a cap of zero allocations says exactly that.
            max_parallel=None if grants_allowed else 0,
            policy=self.policy,
            settle_timeout=settle_timeout,
            ids=_Ids(state),
        )
        core = self.core
        for (uuid, _), detail in state.marks.items():
            if uuid in self.index_of:
                core.mark_unhealthy(self.index_of[uuid], now, detail)
        try:
            for hold in state.holds.values():
                core.adopt(
                    self.allocation_of(hold),
                    _request(
                        len(hold.gpus),
                        hold.memory_mb,
                        hold.exclusive,
                        hold.priority,
                        None,
                        hold.expected_duration,
                        hold.estimated_duration,
                    ),
                    hold.granted_at,
                    ticket=hold.ticket,
                    pids=frozenset(pid for pid, _ in hold.jobs),
                )
            for settle in state.settles.values():
                if settle.uuid in self.index_of:
                    core.keep_settling(
                        self.index_of[settle.uuid],
                        Settle(settle.pids, settle.epoch, settle.deadline),
                    )
        except (ValueError, KeyError) as error:
            raise Damaged(f"inconsistent holdings: {error}") from None
        sessions = {pid: sid for g in order for pid, _, sid in g.processes if sid is not None}
        # Memory the holders' own processes use is theirs, not foreign (epoch=None: a
        # settle is ended here only by its deadline).
        core.update(snapshot, now, epoch=None, sessions=sessions)
        self.visible: dict[int, WaiterRow] = {}
        for waiter in self._serviceable():
            core.requeue(
                Waiter(
                    waiter.ticket,
                    self.request_of(waiter),
                    waiter.submitted_at,
                    waiter.experiment_id,
                )
            )
            if waiter.front_at is not None and waiter.front_last is not None:
                self.policy.keep(
                    waiter.ticket, waiter.front_at, waiter.front_last, waiter.reserved_start
                )
            self.visible[waiter.ticket] = waiter

    # ------------------------------------------------------------ reading rows

    def allocation_of(self, hold: HoldRow) -> GPUAllocation:
        indices = sorted(self.index_of[u] for u in hold.gpus)
        return GPUAllocation(
            hold.id,
            tuple(indices),
            tuple(self.uuids[i] for i in indices),
            hold.memory_mb,
            hold.exclusive,
            hold.experiment_id,
        )

    def request_of(self, waiter: WaiterRow) -> Resources:
        return _request(
            waiter.required_gpus,
            waiter.min_memory_mb,
            waiter.exclusive,
            waiter.priority,
            _indices(waiter.gpus, self._order),
            waiter.expected_duration,
            waiter.estimated_duration,
        )

    def _serviceable(self) -> list[WaiterRow]:
        """The waiting rows this pass may serve, in arrival order.

        A member's ``max_parallel`` caps its allocations, not the machine's: of a
        member holding ``h`` of its ``c``, only its first ``c - h`` waiters (in its
        order of service) take part, so no pass can grant it more than its cap.
        """
        held: dict[str, int] = {}
        for hold in self.state.holds.values():
            held[hold.member] = held.get(hold.member, 0) + 1
        by_member: dict[str, list[WaiterRow]] = {}
        for waiter in self.state.waiters.values():
            if waiter.state == "waiting":
                by_member.setdefault(waiter.member, []).append(waiter)
        chosen: list[WaiterRow] = []
        for member, waiting in by_member.items():
            row = self.state.members.get(member)
            cap = None if row is None else row.max_parallel
            if cap is not None:
                waiting.sort(key=lambda w: (-w.priority, w.ticket))
                waiting = waiting[: max(0, cap - held.get(member, 0))]
            chosen.extend(waiting)
        chosen.sort(key=lambda w: w.ticket)
        return chosen

    # ------------------------------------------------------------ writing rows

    def record(
        self,
        outcomes: list[Outcome],
        *,
        member: str,
        wall: float,
        new_waiters: dict[int, WaiterRow],
        member_epoch: int = 0,
        grant_kind: str = "allocation",
    ) -> tuple[dict[int, Outcome], set[str]]:
        """Write what the core now holds back into the state.

        ``member`` is the process running this transaction; ``new_waiters``
        the rows of its requests queued in it (by ticket). Returns the
        outcomes for ``member``'s own tickets, and the other members that
        had decisions made for them (to be woken).
        """
        state, core = self.state, self.core
        own: dict[int, Outcome] = {}
        woken: set[str] = set()
        decided = {o.ticket: o for o in outcomes}
        waiters_of = {**self.visible, **new_waiters}
        promises = self.policy.promises()
        # Holdings: drop the released, add the granted.
        for hold_id in [h for h in state.holds if core.holding(h) is None]:
            del state.holds[hold_id]
        for holding in core.holdings():
            allocation = holding.allocation
            if allocation.id in state.holds:
                continue
            ticket = holding.ticket
            waiter = None if ticket is None else waiters_of.get(ticket)
            owner = member if waiter is None else waiter.member
            request = holding.request
            state.holds[allocation.id] = HoldRow(
                id=allocation.id,
                member=owner,
                ticket=ticket,
                gpus=allocation.gpu_uuids,
                memory_mb=allocation.memory_mb,
                exclusive=allocation.exclusive,
                priority=request.priority,
                expected_duration=request.expected_duration,
                experiment_id=allocation.experiment_id,
                granted_at=holding.granted_at,
                since=wall,
                jobs=(),
                kind=grant_kind if owner == member else "allocation",
                until=None,
                orphaned=False,
                estimated_duration=request.estimated_duration,
            )
        # Waiters: decided ones leave the queue (a peer's stay until it collects them).
        for ticket, waiter in waiters_of.items():
            if core.queued(ticket):
                row = state.waiters.get(ticket, waiter)
                promise = promises.get(ticket)
                if promise is not None:
                    row = attrs.evolve(
                        row, front_at=promise[0], front_last=promise[1], reserved_start=promise[2]
                    )
                state.waiters[ticket] = row
                continue
            outcome = decided.get(ticket)
            if waiter.member == member:
                state.waiters.pop(ticket, None)
                if outcome is not None:
                    own[ticket] = outcome
            elif isinstance(outcome, Grant):
                state.waiters[ticket] = attrs.evolve(
                    waiter, state="granted", hold=outcome.allocation.id
                )
                woken.add(waiter.member)
            elif isinstance(outcome, Failure):
                state.waiters[ticket] = attrs.evolve(
                    waiter, state="failed", error=error_to_text(outcome.error)
                )
                woken.add(waiter.member)
            else:
                state.waiters.pop(ticket, None)
        # Outcomes for tickets granted in this very call (submit's own request).
        for outcome in outcomes:
            if outcome.ticket not in waiters_of:
                own[outcome.ticket] = outcome
        # Settles: the core's view, each kept with the member that released it.
        settling = core.settling()
        kept: dict[str, SettleRow] = {}
        for index, settle in settling.items():
            uuid = self.uuids[index]
            old = state.settles.get(uuid)
            if old is not None and (old.pids, old.deadline) == (settle.pids, settle.deadline):
                kept[uuid] = old
            else:  # released in this call, by ``member``: only its snapshots can end it early
                kept[uuid] = SettleRow(uuid, member, settle.pids, member_epoch, settle.deadline)
        state.settles = kept
        return own, woken


# Every transaction rebuilds the core from rows that mostly did not change since the
# last one: the values built from them are kept (they are frozen, so sharing is safe).
# Measured on a busy ledger (8 members, 4 GPUs, 4 holds, 4 waiters): the Replica
# took 97 us instead of 118.


@functools.lru_cache(maxsize=256)
def stats_of(row: GPURow, index: int) -> GPUStats:
    """The GPU as a snapshot gives it, from its row, under the index ``index``."""
    return GPUStats(
        index=index,
        uuid=row.uuid,
        name=row.name,
        memory_total_mb=row.memory_total_mb,
        memory_used_mb=row.memory_used_mb,
        utilization_pct=row.utilization_pct,
        healthy=row.healthy,
        health_detail=row.health_detail,
        processes=tuple(GPUProcess(pid, used) for pid, used, _ in row.processes),
    )


@functools.lru_cache(maxsize=1024)
def _request(
    required_gpus: int,
    min_memory_mb: int,
    exclusive: bool,
    priority: int,
    allowed_gpus: frozenset[int] | None,
    expected_duration: float | None,
    estimated_duration: float | None,
) -> Resources:
    return Resources(
        required_gpus,
        min_memory_mb=min_memory_mb,
        exclusive=exclusive,
        priority=priority,
        allowed_gpus=allowed_gpus,
        expected_duration=expected_duration,
        estimated_duration=estimated_duration,
    )


@functools.lru_cache(maxsize=256)
def _indices(uuids: tuple[str, ...], order: tuple[str, ...]) -> frozenset[int]:
    """The machine indices of ``uuids`` where ``order`` lists the machine's GPUs."""
    return frozenset(order.index(u) for u in uuids if u in order)


def error_to_text(error: Exception) -> str:
    """A decision's error, as the ledger stores it for the waiter's process."""
    kind = (
        "unsatisfiable"
        if isinstance(error, UnsatisfiableRequest)
        else "closed"
        if isinstance(error, PoolClosed)
        else "error"
    )
    return f"{kind}:{error}"


def error_from_text(text: str | None) -> Exception:
    kind, _, message = (text or "error:").partition(":")
    if kind == "unsatisfiable":
        return UnsatisfiableRequest(message)
    if kind == "closed":
        return PoolClosed(message)
    return RuntimeError(f"the machine-wide scheduler failed this request: {message}")
