"""MachineCore: what a pool with a ledger decides with, in place of its own scheduler.

It offers the shell the calls of :class:`~gpupool._core.scheduler.Scheduler`
(``submit``, ``cancel``, ``release``, ``update``, ...), and runs each as one
ledger transaction: read the machine's state, rebuild the core over it
(``replica.py``), make the call, write the result back, and wake the other
processes it decided something for. Grants made for this pool by others
arrive as wake-ups and are picked up by :meth:`collect`.

Ids. The ledger numbers tickets and allocations machine-wide; the pool sees
ids of its own (a rebuilt ledger renumbers what it holds, and the
allocations a user holds must not change under them).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar, final

import attrs

from .._core.decisions import Failure, Grant, Outcome, Submission
from .._core.errors import AllocationNotHeld, PoolClosed
from .._core.model import (
    GPUAllocation,
    GPUStatistics,
    GPUStats,
    OnProcessStarted,
    PoolStatistics,
)
from .._core.request import Resources
from .._system import procfs
from .._system.groups import LeftoverProcessGroup, still_running
from . import wakeup
from .members import Liveness, Membership, live_members, remove_files, remove_orphans
from .replica import Replica, error_from_text
from .rows import GPURow, HoldRow, LedgerState, MemberRow, WaiterRow
from .store import LedgerStore

__all__ = ["KEEPALIVE_INTERVAL", "POLL_INTERVAL", "MachineCore"]

#: How often a pool with waiters reads the ledger without being woken: what bounds
#: a lost wake-up, and how soon a dead member nobody else noticed is freed.
POLL_INTERVAL = 0.5
#: How often an idle member checks that its lock file is still in place (``Membership.ensure``).
KEEPALIVE_INTERVAL = 10.0

T = TypeVar("T")


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


@final
@attrs.define
class _Mine:
    """One of this pool's allocations, as the ledger knows it."""

    allocation: GPUAllocation
    hold_id: int
    request: Resources
    ticket: int | None
    jobs: tuple[tuple[int, int | None], ...] = ()
    #: When a reservation ends (wall clock), as its hold row says.
    until: float | None = None


@final
@attrs.define
class _Waiting:
    """One of this pool's requests in the machine-wide queue."""

    request: Resources
    experiment_id: str | None
    machine_ticket: int
    submitted_at: float
    since: float


@final
class MachineCore:
    """The machine-wide scheduler, as one pool of one process uses it."""

    def __init__(
        self,
        directory: Path,
        snapshot: Sequence[GPUStats],
        *,
        max_parallel: int | None,
        settle_timeout: float,
        pool_id: int,
        on_process_started: OnProcessStarted | None,
        kind: str = "allocation",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = directory
        self._clock = clock
        self._max_parallel = max_parallel
        self._settle_timeout = settle_timeout
        self._pool_id = pool_id
        self._hook = on_process_started
        self._kind = kind
        self._local_index = {g.uuid: g.index for g in snapshot}
        self._snapshot: list[GPUStats] = list(snapshot)
        self._sessions: Mapping[int, int] = {}
        self._tickets = itertools.count(1)
        self._allocation_ids = itertools.count(1)
        self._mine: dict[int, _Mine] = {}  # by local allocation id
        self._waiting: dict[int, _Waiting] = {}  # by local ticket
        self._granted_tickets: dict[int, int] = {}  # local ticket -> local allocation id
        #: Machine tickets whose decisions collect() read without the lock: their rows
        #: go in this pool's next transaction.
        self._collected: set[int] = set()
        self._epoch = 0
        self._settling = False
        self._next_deadline: float | None = None
        self._grants_total = 0
        self._closed = False
        #: True while the pool's listener waits on the membership's socket: leaving
        #: the ledger (which closes it) then waits for the listener to end.
        self.listening = False
        self._replica_cache: Replica | None = None
        self._store = LedgerStore(directory, clock=clock)
        self.membership = Membership(directory)
        self._liveness = Liveness(directory)
        uid = os.getuid()
        self._member = MemberRow(
            self.membership.id, os.getpid(), procfs.pid_namespace(), uid, _user(uid), (procfs.cmdline("self") or "?"),
            time.time(), max_parallel,
        )  # fmt: skip
        self._store.on_rebuilt = self._write_myself
        self._store.member = self.membership.id
        try:
            self._store.check_boot()
            self._write(lambda state: self._reap(state) and None)
        except BaseException:
            self.membership.leave()
            self._liveness.close()
            self._store.close()
            raise

    # ------------------------------------------------------------ queries

    @property
    def member_id(self) -> str:
        return self.membership.id

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def max_parallel(self) -> int | None:
        return self._max_parallel

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def wants_refresh(self) -> bool:
        return bool(self._waiting) or self._settling

    def holds(self, allocation: GPUAllocation) -> bool:
        mine = self._mine.get(allocation.id)
        return mine is not None and (mine.allocation is allocation or mine.allocation == allocation)

    def statistics(self) -> PoolStatistics:
        state = self._store.read()
        replica = Replica(state, self._clock(), settle_timeout=self._settle_timeout)
        machine = {g.uuid: g for g in replica.core.statistics().gpus}
        by_hold = {m.hold_id: m.allocation for m in self._mine.values()}
        gpus = []
        for stats in sorted(self._snapshot, key=lambda g: g.index):
            seen = machine.get(stats.uuid)
            mine = [a for a in by_hold.values() if stats.uuid in a.gpu_uuids]
            reserved = sum(a.memory_mb for a in mine)
            if seen is None:
                continue
            gpus.append(
                GPUStatistics(
                    index=stats.index,
                    uuid=stats.uuid,
                    healthy=seen.healthy,
                    memory_total_mb=seen.memory_total_mb,
                    memory_reserved_mb=reserved,
                    # Everything not this pool's: other processes' reservations too.
                    memory_foreign_mb=seen.memory_total_mb - seen.memory_free_mb - reserved,
                    memory_free_mb=seen.memory_free_mb,
                    utilization_pct=seen.utilization_pct,
                    holder_ids=tuple(a.id for a in mine),
                    exclusive=any(a.exclusive for a in mine),
                    settling=seen.settling,
                )
            )
        return PoolStatistics(
            gpus=tuple(gpus),
            holder_count=len(self._mine),
            waiters=len(self._waiting),
            max_parallel=self._max_parallel,
            grants_total=self._grants_total,
        )

    # ------------------------------------------------------------ inputs

    def grant_at_once(
        self, request: Resources, now: float, experiment_id: str | None = None
    ) -> GPUAllocation | None:
        """Always ``None``: every request is one :meth:`submit` (one transaction)."""
        if self._closed:
            raise PoolClosed("the pool is closed")
        return None

    def submit(
        self,
        request: Resources,
        now: float,
        *,
        nowait: bool = False,
        experiment_id: str | None = None,
    ) -> Submission:
        if self._closed:
            raise PoolClosed("the pool is closed")
        ticket = next(self._tickets)
        allowed = self._allowed(request)
        wall = time.time()

        def change(state: LedgerState) -> tuple[int, bool, dict[int, Outcome], set[str]]:
            t = self._clock()
            reaped = self._reap(state)
            # The core caps the machine's allocations, not this pool's: while this pool's
            # holdings and waiters fill its max_parallel, the request may only queue.
            replica = self._replica(
                state, t, reuse=not reaped, grants_allowed=self._has_room(state)
            )
            asked = attrs.evolve(
                request,
                allowed_gpus=frozenset(
                    replica.index_of[u] for u in allowed if u in replica.index_of
                ),
            )
            submission = replica.core.submit(asked, t, nowait=nowait, experiment_id=experiment_id)
            outcomes = list(submission.outcomes)
            if submission.allocation is not None:
                outcomes.append(Grant(submission.ticket, submission.allocation))
            elif submission.error is not None:
                outcomes.append(Failure(submission.ticket, submission.error))
            new = {}
            if replica.core.queued(submission.ticket):
                new[submission.ticket] = WaiterRow(
                    submission.ticket, self.member_id, request.required_gpus,
                    request.min_memory_mb, request.exclusive, request.priority, allowed,
                    request.expected_duration, experiment_id, t, wall, None, None, None,
                    "waiting", None, None, estimated_duration=request.estimated_duration,
                )  # fmt: skip
            own, woken = self._record(replica, outcomes, new)
            return submission.ticket, bool(new), own, woken

        machine_ticket, queued, own, woken = self._write(change)
        wakeup.wake(self.directory, woken)
        outcome = own.pop(machine_ticket, None)
        if queued:
            self._waiting[ticket] = _Waiting(
                request, experiment_id, machine_ticket, self._clock(), wall
            )
        others = self._localize(own)
        if isinstance(outcome, Grant):
            allocation = self._take(outcome.allocation, request, machine_ticket=None)
            return Submission(ticket, allocation, others)
        if isinstance(outcome, Failure):
            return Submission(ticket, None, others, outcome.error)
        return Submission(ticket, None, others)

    def cancel(self, ticket: int, now: float) -> list[Outcome]:
        waiting = self._waiting.pop(ticket, None)
        if waiting is None:
            allocation_id = self._granted_tickets.pop(ticket, None)
            if allocation_id is not None and allocation_id in self._mine:
                return self.release(self._mine[allocation_id].allocation, now)
            return []
        machine_ticket = waiting.machine_ticket

        def change(state: LedgerState) -> tuple[dict[int, Outcome], set[str]]:
            t = self._clock()
            replica = self._replica(state, t, reuse=True)
            # A grant another process made for it and this one has not collected yet is
            # taken back by the core's cancel (its hold carries the ticket); a failure
            # decided for it goes with its row.
            outcomes = replica.core.cancel(machine_ticket, t)
            state.waiters.pop(machine_ticket, None)
            return self._record_freed(replica, outcomes, state, t)

        own, woken = self._write(change)
        wakeup.wake(self.directory, woken)
        return self._localize(own)

    def release(self, allocation: GPUAllocation, now: float) -> list[Outcome]:
        if not isinstance(allocation, GPUAllocation):
            raise TypeError(f"release takes a GPUAllocation, got {allocation!r}")
        if not self.holds(allocation):
            raise AllocationNotHeld(
                f"allocation {allocation.id} (GPUs {list(allocation.gpu_indices)}) is not held "
                "by this pool: it was released already, or another pool granted it"
            )
        mine = self._mine[allocation.id]
        self._epoch += 1

        def change(state: LedgerState) -> tuple[dict[int, Outcome], set[str]]:
            t = self._clock()
            replica = self._replica(state, t, reuse=True)
            holding = replica.core.holding(mine.hold_id)
            outcomes = [] if holding is None else replica.core.release(holding.allocation, t)
            return self._record_freed(replica, outcomes, state, t)

        # Forgotten only once the ledger has it: a release that cannot reach the ledger
        # (LedgerError) leaves the allocation held, to be released again.
        own, woken = self._write(change)
        del self._mine[allocation.id]
        if mine.ticket is not None:
            self._granted_tickets.pop(mine.ticket, None)
        wakeup.wake(self.directory, woken)
        outcomes = self._localize(own)
        self.leave_if_done()
        return outcomes

    def attach_process(self, allocation: GPUAllocation, pid: int) -> None:
        if not self.holds(allocation):
            raise AllocationNotHeld(f"allocation {allocation.id} is not held by this pool")
        mine = self._mine[allocation.id]
        mine.jobs = (*mine.jobs, (pid, procfs.start_time(pid)))

        def change(state: LedgerState) -> None:
            hold = state.holds.get(mine.hold_id)
            if hold is not None:
                state.holds[mine.hold_id] = attrs.evolve(hold, jobs=mine.jobs)

        self._write(change)

    def hold_id(self, allocation: GPUAllocation) -> int:
        """The machine-wide id of ``allocation``'s hold: what ``gpupool status`` shows
        and ``gpupool release`` takes (a rebuilt ledger renumbers it)."""
        if not self.holds(allocation):
            raise AllocationNotHeld(f"allocation {allocation.id} is not held by this pool")
        return self._mine[allocation.id].hold_id

    def set_until(self, allocation: GPUAllocation, until: float | None) -> None:
        """Record in ``allocation``'s hold when it ends (wall clock; ``gpupool reserve --for``).

        Only shown to people (``gpupool status``); the reservation's own
        process ends it. Kept across a rebuild of the ledger.
        """
        if not self.holds(allocation):
            raise AllocationNotHeld(f"allocation {allocation.id} is not held by this pool")
        mine = self._mine[allocation.id]
        mine.until = until

        def change(state: LedgerState) -> None:
            hold = state.holds.get(mine.hold_id)
            if hold is not None:
                state.holds[mine.hold_id] = attrs.evolve(hold, until=until)

        self._write(change)

    def update(
        self,
        snapshot: Sequence[GPUStats],
        now: float,
        *,
        epoch: int | None = None,
        sessions: Mapping[int, int] | None = None,
    ) -> list[Outcome]:
        self._snapshot = list(snapshot)
        self._sessions = dict(sessions or {})
        wall = time.time()

        def change(state: LedgerState) -> tuple[dict[int, Outcome], set[str]]:
            t = self._clock()
            self._report(state, wall)
            for uuid, settle in list(state.settles.items()):
                stats = next((g for g in snapshot if g.uuid == uuid), None)
                ours = settle.member == self.member_id
                if stats is None or not (ours or settle.member not in state.members):
                    continue
                if ours and (epoch is None or epoch < settle.epoch):
                    continue  # a snapshot started before the release cannot end it
                pids = settle.pids
                if not any(
                    p.pid in pids or self._sessions.get(p.pid) in pids for p in stats.processes
                ):
                    del state.settles[uuid]
            return self._pass(state, t)

        return self._decide(change)

    def expire(self, now: float) -> list[Outcome]:
        deadline = self._next_deadline
        if deadline is None or self._clock() < deadline:
            return []
        return self._decide(lambda state: self._pass(state, self._clock()))

    def mark_unhealthy(
        self, index: int, now: float, detail: str = "marked unhealthy"
    ) -> list[Outcome]:
        uuid = self._uuid_of(index)

        def change(state: LedgerState) -> tuple[dict[int, Outcome], set[str]]:
            state.marks[(uuid, self.member_id)] = detail
            return self._pass(state, self._clock())

        return self._decide(change)

    def mark_healthy(self, index: int, now: float) -> list[Outcome]:
        uuid = self._uuid_of(index)

        def change(state: LedgerState) -> tuple[dict[int, Outcome], set[str]]:
            state.marks.pop((uuid, self.member_id), None)
            return self._pass(state, self._clock())

        return self._decide(change)

    def close(self) -> list[Outcome]:
        """Fail this pool's waiters with :class:`PoolClosed`; holders keep their GPUs."""
        self._closed = True
        failures: list[Outcome] = [
            Failure(ticket, PoolClosed("the pool was closed while waiting"))
            for ticket in self._waiting
        ]
        tickets = {w.machine_ticket for w in self._waiting.values()}
        self._waiting.clear()

        def change(state: LedgerState) -> tuple[dict[int, Outcome], set[str]]:
            for ticket in tickets:
                row = state.waiters.pop(ticket, None)
                if row is not None and row.hold is not None:
                    state.holds.pop(row.hold, None)  # granted to us, never collected
            return self._pass(state, self._clock())

        self._decide(change)
        self.leave_if_done()
        return failures

    def collect(self, *, poll: bool) -> list[Outcome]:
        """The decisions other processes made for this pool's waiters.

        ``poll``: also free what dead members held and run a pass (the slow
        poll that bounds a lost wake-up), in a transaction. Without it, the
        decisions are read without the lock: the grant is in the ledger
        already (the granter wrote the hold), so only the waiter's row is
        left to remove, and that waits for this pool's next transaction
        (``_write``). With 8 processes contending for 4 GPUs, this took a
        third of the transactions off the lock (12,084 for 4,000 grants
        before, 8,208 after).
        """
        if self.membership.joined is False:
            return []
        self.membership.ensure()
        if not poll:
            state = self._store.read()
            if state.generation == self._store.generation:
                decided = self._decided(state)
                if decided is not None:
                    self._collected.update(t for t, _ in decided)
                    return self._localize(dict(decided))

        def change(state: LedgerState) -> tuple[dict[int, Outcome], set[str]]:
            t = self._clock()
            if poll:
                self._reap(state)
                return self._pass(state, t)
            return {}, set()

        return self._decide(change)

    def _decided(self, state: LedgerState) -> list[tuple[int, Outcome]] | None:
        """This pool's decided waiters in ``state``, read without the lock; ``None`` when
        one needs a transaction (its hold needs this pool's kind, or nobody waits for it)."""
        by_machine = {w.machine_ticket for w in self._waiting.values()}
        decided: list[tuple[int, Outcome]] = []
        for ticket, row in state.waiters.items():
            if row.member != self.member_id or row.state == "waiting":
                continue
            if ticket in self._collected:
                continue
            if ticket not in by_machine:
                return None
            hold = (
                state.holds.get(row.hold)
                if row.hold is not None and row.state == "granted"
                else None
            )
            if hold is not None and hold.kind != self._kind:
                return None
            decided.append((ticket, _outcome_of(row, hold)))
        return decided

    # ------------------------------------------------------------ internals

    def _write(self, change: Callable[[LedgerState], T]) -> T:
        """Run ``change`` in a transaction, which first removes the rows of the decisions
        :meth:`collect` read without the lock."""
        self.membership.ensure()
        collected = self._collected

        def run(state: LedgerState) -> T:
            for ticket in collected:
                state.waiters.pop(ticket, None)
            return change(state)

        result = self._store.write(run)
        self._collected = set()
        return result

    def _decide(
        self, change: Callable[[LedgerState], tuple[dict[int, Outcome], set[str]]]
    ) -> list[Outcome]:
        """Run ``change`` in a transaction that also collects this pool's decided waiters."""
        collected: list[tuple[int, Outcome]] = []

        def run(state: LedgerState) -> tuple[dict[int, Outcome], set[str]]:
            own, woken = change(state)
            collected.clear()
            by_machine = {w.machine_ticket: t for t, w in self._waiting.items()}
            for ticket, row in list(state.waiters.items()):
                if row.member != self.member_id or row.state == "waiting":
                    continue
                del state.waiters[ticket]
                local = by_machine.get(ticket)
                if local is None:
                    if row.hold is not None:
                        state.holds.pop(row.hold, None)  # nobody waits for it any more
                    continue
                hold = (
                    state.holds.get(row.hold)
                    if row.hold is not None and row.state == "granted"
                    else None
                )
                if hold is not None and hold.kind != self._kind:
                    # Granted by another process, which wrote its own kind of grant.
                    hold = state.holds[hold.id] = attrs.evolve(hold, kind=self._kind)
                collected.append((ticket, _outcome_of(row, hold)))
            return own, woken

        own, woken = self._write(run)
        wakeup.wake(self.directory, woken)
        for ticket, outcome in collected:
            own[ticket] = outcome
        return self._localize(own)

    def _pass(self, state: LedgerState, now: float) -> tuple[dict[int, Outcome], set[str]]:
        replica = self._replica(state, now)
        return self._record(replica, replica.core.reschedule(now), {})

    def _has_room(self, state: LedgerState) -> bool:
        """Whether a new request of this pool may be granted without passing its cap.

        Its waiting requests come first (``Replica._serviceable`` serves a member's
        waiters up to its cap), so they count against the cap as its holdings do.
        """
        cap = self._max_parallel
        if cap is None:
            return True
        mine = self.member_id
        held = sum(1 for h in state.holds.values() if h.member == mine)
        waiting = sum(
            1 for w in state.waiters.values() if w.member == mine and w.state == "waiting"
        )
        return held + waiting < cap

    def _replica(
        self, state: LedgerState, now: float, *, reuse: bool = False, grants_allowed: bool = True
    ) -> Replica:
        """The core over ``state``; ``reuse``: the caller has not changed ``state`` yet.

        While no other process has written since this one's last transaction
        and nobody waits, the store hands back the state this process left
        (``rows.load`` given the state it committed last), and the core built
        for it then is still its exact image: it is used again rather than
        rebuilt. Measured on an uncontended acquire + release pair: see
        docs/benchmarks.md.
        """
        cached = self._replica_cache
        if (
            reuse
            and grants_allowed
            and cached is not None
            and cached.state is state
            and not state.waiters
            and not state.settles
            and state.rebuild_until is None
        ):
            cached.visible = {}
            return cached
        if state.rebuild_until is not None:
            if now >= state.rebuild_until or live_members(self.directory) <= state.members.keys():
                state.rebuild_until = None
            else:
                grants_allowed = False
        replica = Replica(
            state, now, settle_timeout=self._settle_timeout, grants_allowed=grants_allowed
        )
        # Only a core that may grant is worth keeping (its cap is the machine's).
        self._replica_cache = replica if grants_allowed else None
        return replica

    def _record(
        self, replica: Replica, outcomes: list[Outcome], new: dict[int, WaiterRow]
    ) -> tuple[dict[int, Outcome], set[str]]:
        own, woken = replica.record(
            outcomes,
            member=self.member_id,
            wall=time.time(),
            new_waiters=new,
            member_epoch=self._epoch,
            grant_kind=self._kind,
        )
        settles = replica.state.settles.values()
        self._settling = any(s.member == self.member_id for s in settles)
        self._next_deadline = min((s.deadline for s in settles), default=None)
        return own, woken

    def _record_freed(
        self, replica: Replica, outcomes: list[Outcome], state: LedgerState, now: float
    ) -> tuple[dict[int, Outcome], set[str]]:
        """:meth:`_record` after a holding of this pool ended (a release, a grant taken back).

        ``replica`` was built while the holding still counted against this pool's
        ``max_parallel``, so it left out the waiters of this pool that the cap
        held back (``Replica._serviceable``): a pass over the state as it is now
        serves them, rather than the next wake-up or poll.
        """
        own, woken = self._record(replica, outcomes, {})
        if self._max_parallel is not None:
            more, also = self._pass(state, now)
            own.update(more)
            woken |= also
        return own, woken

    def _localize(self, own: dict[int, Outcome]) -> list[Outcome]:
        """This pool's outcomes, from machine tickets to its own tickets and allocations."""
        by_machine = {w.machine_ticket: t for t, w in self._waiting.items()}
        local: list[Outcome] = []
        for machine_ticket, outcome in own.items():
            ticket = by_machine.get(machine_ticket)
            if ticket is None:
                continue
            waiting = self._waiting.pop(ticket)
            if isinstance(outcome, Grant):
                allocation = self._take(outcome.allocation, waiting.request, machine_ticket, ticket)
                local.append(Grant(ticket, allocation))
            else:
                local.append(Failure(ticket, outcome.error))
        return local

    def _take(
        self,
        granted: GPUAllocation,
        request: Resources,
        machine_ticket: int | None,
        ticket: int | None = None,
    ) -> GPUAllocation:
        """Make this pool's allocation for a machine grant."""
        indices = sorted(self._local_index[u] for u in granted.gpu_uuids)
        uuid_of = {i: u for u, i in self._local_index.items()}
        total_of = {g.uuid: g.memory_total_mb for g in self._snapshot}
        allocation = GPUAllocation(
            next(self._allocation_ids),
            tuple(indices),
            tuple(uuid_of[i] for i in indices),
            granted.memory_mb,
            granted.exclusive,
            granted.experiment_id,
            self._pool_id,
            self._hook,
            tuple(total_of.get(uuid_of[i], 0) for i in indices),
        )
        self._mine[allocation.id] = _Mine(allocation, granted.id, request, ticket)
        if ticket is not None:
            self._granted_tickets[ticket] = allocation.id
        self._grants_total += 1
        return allocation

    def _allowed(self, request: Resources) -> tuple[str, ...]:
        """The UUIDs ``request`` may take: this pool's GPUs, within its ``allowed_gpus``."""
        allowed = request.allowed_gpus
        return tuple(
            sorted(u for u, i in self._local_index.items() if allowed is None or i in allowed)
        )

    def _uuid_of(self, index: int) -> str:
        for uuid, local in self._local_index.items():
            if local == index:
                return uuid
        raise ValueError(
            f"no GPU with index {index!r}; the pool has {sorted(self._local_index.values())}"
        )

    def _report(self, state: LedgerState, wall: float) -> None:
        """Write this pool's latest snapshot into the ledger's GPU table."""
        sessions = self._sessions
        for g in self._snapshot:
            state.gpus[g.uuid] = GPURow(
                g.uuid, g.index, g.name, g.memory_total_mb, g.memory_used_mb, g.utilization_pct,
                g.healthy, g.health_detail,
                tuple((p.pid, p.used_memory_mb, sessions.get(p.pid)) for p in g.processes), wall,
            )  # fmt: skip

    def _write_myself(self, state: LedgerState) -> None:
        """Join a ledger this pool is not in yet: the first, a rebuilt one, or one that
        lost this member's row (written from what the pool itself knows it holds)."""
        me = self.member_id
        for hold_id in [h for h, row in state.holds.items() if row.member == me]:
            del state.holds[hold_id]
        for ticket in [t for t, row in state.waiters.items() if row.member == me]:
            del state.waiters[ticket]
        state.members[me] = self._member
        # Once per join, not per transaction: a directory scan.
        remove_orphans(self.directory, state.members.keys())
        self._report(state, time.time())
        now = self._clock()
        for mine in self._mine.values():
            hold_id = state.take_id()
            mine.hold_id = hold_id
            a, r = mine.allocation, mine.request
            state.holds[hold_id] = HoldRow(
                hold_id, self.member_id, None, a.gpu_uuids, a.memory_mb, a.exclusive, r.priority,
                r.expected_duration, a.experiment_id, now, time.time(), mine.jobs, self._kind,
                mine.until, False, estimated_duration=r.estimated_duration,
            )  # fmt: skip
        for waiting in sorted(self._waiting.values(), key=lambda w: w.submitted_at):
            machine_ticket = state.take_id()
            waiting.machine_ticket = machine_ticket
            r = waiting.request
            state.waiters[machine_ticket] = WaiterRow(
                machine_ticket, self.member_id, r.required_gpus, r.min_memory_mb, r.exclusive,
                r.priority, self._allowed(r), r.expected_duration, waiting.experiment_id,
                waiting.submitted_at, waiting.since, None, None, None, "waiting", None, None,
                estimated_duration=r.estimated_duration,
            )  # fmt: skip

    def _reap(self, state: LedgerState) -> bool:
        """Free what dead members held; True if anything changed.

        A member is dead when its lock is free (``members.py``). Its waiters
        go; its allocations go too, unless jobs it started still run: those
        are killed first, as the journal's takeover kills a dead run's jobs
        (their GPUs stay held, flagged orphaned, until the jobs are gone).
        Jobs in another PID namespace cannot be seen from here, so a dead
        member there frees its allocations at once (what its jobs still use
        shows as foreign memory through NVML).
        """
        changed = False
        alive = self._liveness.is_alive
        dead = [m for m in state.members if m != self.member_id and not alive(m)]
        here = procfs.pid_namespace()
        for member in dead:
            row = state.members.pop(member)
            remove_files(self.directory, member)
            changed = True
            for ticket in [t for t, w in state.waiters.items() if w.member == member]:
                del state.waiters[ticket]
            for key in [k for k in state.marks if k[1] == member]:
                del state.marks[key]
            for hold_id, hold in list(state.holds.items()):
                if hold.member != member:
                    continue
                if hold.jobs and row.pid_namespace == here and _kill_jobs(hold):
                    state.holds[hold_id] = attrs.evolve(hold, orphaned=True)
                else:
                    del state.holds[hold_id]
        for hold_id, hold in list(state.holds.items()):
            if hold.orphaned and not _kill_jobs(hold):
                del state.holds[hold_id]
                changed = True
        self._liveness.keep_only(state.members)
        return changed

    def leave_if_done(self) -> None:
        """Leave the ledger once the pool is closed, holds nothing and stopped listening."""
        if not self._closed or self._mine or self.listening or not self.membership.joined:
            return

        def change(state: LedgerState) -> None:
            state.members.pop(self.member_id, None)
            for key in [k for k in state.marks if k[1] == self.member_id]:
                del state.marks[key]

        try:
            self._write(change)
        finally:
            self.membership.leave()
            self._liveness.close()
            self._store.close()


def _outcome_of(row: WaiterRow, hold: HoldRow | None) -> Outcome:
    """What another process decided for waiter ``row``: its grant (``hold``), or its failure."""
    if hold is not None:
        return Grant(row.ticket, _allocation_of(hold))
    return Failure(row.ticket, error_from_text(row.error))


def _allocation_of(hold: HoldRow) -> GPUAllocation:
    return GPUAllocation(
        hold.id, tuple(range(len(hold.gpus))), hold.gpus, hold.memory_mb, hold.exclusive,
        hold.experiment_id,
    )  # fmt: skip


def _kill_jobs(hold: HoldRow) -> bool:
    """SIGKILL the process groups of a dead member's jobs, without waiting; True while
    any still has processes (another user's cannot be killed from here: they count
    until they end).

    A job is recorded as (pid, start time); ``run_process`` makes it a session and
    process group leader, so its pid is its group's id, and the group is judged as
    the journal's takeover judges a dead run's (``gpupool._system.groups``): a
    reused pid is left alone, survivors of a leader that exited are not.
    """
    running = [
        group
        for pid, started in hold.jobs
        if still_running(
            group := LeftoverProcessGroup(f"allocation {hold.id}", pid, started, procfs.boot_id())
        )
    ]
    for group in running:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group.pgid, signal.SIGKILL)
    return bool(running)
