"""The scheduling core: a synchronous, I/O-free state machine.

Everything that decides who gets which GPU lives here. The core never awaits,
never reads a clock (time is an argument), never calls a provider and never
starts a thread. Every input is a method call, and every call returns the
decisions it produced: the waiters to wake with a grant (:class:`Grant`) or
with an error (:class:`Failure`). The async pool around it only waits and
wakes. This is what lets Hypothesis drive it through millions of steps and a
simulator replay hours of GPU work in milliseconds (the shape follows h11's
``_state.py``: a pure machine, with the I/O somewhere else).

Invariants, each checked by the state-machine tests:

* A GPU held exclusively has exactly one holder; a shared GPU's reservations
  plus the memory used outside the pool never exceed its total at the moment
  of a grant (foreign memory that grows *after* a grant cannot be undone).
* Reserved memory counts as used from the grant on, before the job has
  touched the GPU, so two jobs starting together cannot both see it free.
* A call that raises changes nothing (an illegal release, a bad submit, a
  scorer that fails: every score is computed, and checked to be a finite
  number, before the call changes anything).
* Nothing leaks: when every allocation is released, every GPU is free.
* Which waiter goes next is the policy's business (:mod:`gpupool._core.policy`),
  behind one small interface: the core only answers "would this fit now?" and
  "grant it".

A grant that races with its waiter's cancellation (the waiter was woken, but
cancelled before it ran) is handed back with :meth:`Scheduler.cancel`, which
releases it and re-grants to the next in line, as anyio's
``CapacityLimiter`` does with ``_notify_next_waiter``.

Decisions are values. A scheduling pass hands the policy a fresh view
(:class:`_Pass`) that records what ``try_grant`` decided; the call that ran
the pass returns those decisions. The scheduler keeps no decisions, and no
"now", in its own state between calls.

Hot paths
---------

``benchmarks/bench_pool.py`` holds the pool to at most 1.5x an
``anyio.CapacityLimiter``, uncontended and under 10,000 contending tasks, so
the code an acquire and a release run is specialised. Every specialisation
is listed here, tagged where it lives with ``(hot path Hn)``, with what it
saves. Measured on the core alone (2-core Xeon, CPython 3.11, process time,
best of many interleaved runs, against the same code without it); an
uncontended core ``grant_at_once`` + ``release`` of one whole GPU costs about
2.3 us, a contended cycle (a release that grants the head, then a new waiter
joining 1,000 queued) about 8.5 us.

H1  ``grant_at_once`` serves the commonest request (one whole GPU, any of
    them) from the head of the idle list without :meth:`find_gpus`:
    5-7% of an uncontended pair.
H2  The idle list: rank keys of the grantable GPUs with no holder, sorted,
    kept up to date on every change, so an exclusive request looks only at
    idle GPUs, best first, and takes the first that fit. On 64 GPUs with 48
    held, a 2-GPU grant + release costs 3.9 us instead of 11 us; it is what
    keeps bench_pool's scale rows flat.
H3  :meth:`_refresh_idle` spells out ``gpu.idle and gpu.grantable`` (five
    property calls on every grant and release): 5-6% of an uncontended pair.
H4  :class:`GPUState` keeps free memory and the rank key, computed once per
    change, and ``rank_with`` does not ask the scorer again for numbers it
    has scored (``rank_inputs``): ``update`` with unchanged numbers on 8 GPUs
    takes 5.7 us instead of 9.1 us; an exclusive grant with memory and its
    release 2.8 us instead of 3.5 us.
H5  A GPU held whole is not scored at the grant (it is rescored when
    released): 0.2 us per exclusive grant, 8% of an uncontended pair.
H6  ``checked_score`` (``scoring.py``) accepts a finite float in two
    comparisons before any other check: 7-8% of a shared grant + release.
    The scorer reads a :class:`ScoreInputs`, a slotted class: 150 ns to
    make instead of 440 ns for a frozen attrs class.
H7  :meth:`submit` does not run a pass for a newcomer that cannot change it
    (:meth:`_nothing_can_start`): 15-30% of a contended cycle.
H8  :class:`Submission` is a named tuple: 0.28 us to make instead of
    0.48 us for a frozen attrs class, on every contended acquire.
H9  The view hands the policy the core's own ``find_gpus`` rather than a
    method that forwards to it: a backfilling pass asks it about 8 times per
    decision in bench_policy's batch trace, and the forwarding calls were
    7,600 of 318,000 function calls there (2%).

What the clearer design costs, measured the same way: the view made for each
pass (about 0.15 us), the check that the waiter given to ``try_grant`` still
waits (20 ns), and one more call for the policy's queue and for each question
to the view. Together, 1-6% of a contended core cycle (8.34 us before, 8.46 us
after, best of 160 runs each), and nothing bench_pool can tell from noise;
the uncontended pair did not change.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import final

from .decisions import Failure, Grant, Outcome, Submission
from .errors import AllocationNotHeld, PoolClosed, UnsatisfiableRequest
from .gpus import GPUState, Settle, packed_first, settled
from .holdings import Holding
from .model import GPUAllocation, GPUStatistics, GPUStats, OnProcessStarted, PoolStatistics
from .policy import SchedulingPolicy
from .request import Resources
from .scoring import Scorer, default_score
from .waiters import Waiter

__all__ = ["Scheduler"]


@final
class Scheduler:
    """The pure state machine behind :class:`gpupool.GPUResourcePool`.

    ``gpus`` is the provider's first snapshot; it fixes the set of GPUs the
    pool manages. ``now`` arguments are seconds on any monotonic clock the
    caller likes (the pool uses anyio's, tests use plain numbers).
    ``policy`` orders the waiters; the core has no default and knows no
    concrete policy (the pool picks :class:`BackfillPolicy` when the user
    does not), so the core depends only on the protocol in ``policy.py``.
    ``ids`` hands out tickets and allocation ids (default 1, 2, ...).

    A shell may also keep the state outside the core and rebuild a scheduler
    from it for each decision (the machine-wide ledger does, so that every
    process decides over the same state): :meth:`adopt`, :meth:`requeue`
    and :meth:`keep_settling` take the kept state back in without deciding
    anything, and :meth:`holding` and :meth:`settling` read it out again.
    """

    def __init__(
        self,
        gpus: Sequence[GPUStats],
        *,
        max_parallel: int | None = None,
        scorer: Scorer = default_score,
        policy: SchedulingPolicy,
        settle_timeout: float = 30.0,
        pool_id: int = 0,
        on_process_started: OnProcessStarted | None = None,
        ids: Iterator[int] | None = None,
    ) -> None:
        indices = [g.index for g in gpus]
        if len(set(indices)) != len(indices):
            raise ValueError(f"GPU indices must be unique, got {indices}")
        self._gpus: dict[int, GPUState] = {
            g.index: GPUState(
                index=g.index,
                uuid=g.uuid,
                memory_total_mb=g.memory_total_mb,
                utilization_pct=g.utilization_pct,
                reported_healthy=g.healthy,
                health_detail=g.health_detail,
                foreign_mb=g.memory_used_mb,
            )
            for g in sorted(gpus, key=lambda g: g.index)
        }
        self._max_parallel = max_parallel
        self._scorer = scorer
        for gpu in self._gpus.values():
            numbers = (gpu.foreign_mb, gpu.reserved_mb, gpu.utilization_pct)
            gpu.take(*numbers, gpu.rank_with(scorer, *numbers))
        # Whether a request shape could ever be served; only health changes alter the answer.
        self._impossible_cache: dict[tuple[int, int, frozenset[int] | None], str | None] = {}
        self._policy = policy
        # hosts() answers, by (allowed_gpus, min_memory_mb); cleared when health or
        # foreign memory may have changed.
        self._hosts: dict[tuple[frozenset[int] | None, int], dict[int, int]] = {}
        self._settle_timeout = settle_timeout
        self._pool_id = pool_id
        # Carried by every allocation granted (GPUAllocation.on_process_started).
        self._on_process_started = on_process_started
        # Tickets and allocation ids; a shell that keeps the state elsewhere and
        # rebuilds a scheduler from it (the machine ledger) passes its own counter.
        self._tickets = itertools.count(1) if ids is None else ids
        self._allocation_ids = itertools.count(1) if ids is None else ids
        self._waiters: dict[int, Waiter] = {}
        # (hot path H7) How many waiters wait at each priority, and how many GPUs are
        # held whole: what submit needs to see, in O(1), that a newcomer changes nothing.
        self._waiting_priorities: dict[int, int] = {}
        self._held_whole = 0
        self._holdings: dict[int, Holding] = {}
        self._ticket_to_allocation: dict[int, int] = {}
        # (hot path H2) Rank keys of the GPUs with no holder that may be granted now,
        # best first. Exclusive requests look only here and usually take the first
        # entries, so a grant costs O(GPUs it takes), not O(all GPUs).
        self._idle: list[tuple[float, int]] = []
        for gpu in self._gpus.values():
            self._refresh_idle(gpu)
        self._settling: set[int] = set()  # indices of GPUs whose settle is not None
        self._epoch = 0
        self._grants_total = 0
        self._closed = False

    # ------------------------------------------------------------------ queries

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def max_parallel(self) -> int | None:
        return self._max_parallel

    @property
    def epoch(self) -> int:
        """Read this just before starting a snapshot and pass it to :meth:`update`."""
        return self._epoch

    @property
    def wants_refresh(self) -> bool:
        """True while fresh provider data could change a decision (waiters, settling GPUs)."""
        return bool(self._waiters) or bool(self._settling)

    def holds(self, allocation: GPUAllocation) -> bool:
        holding = self._holdings.get(allocation.id)
        return holding is not None and self._same(holding, allocation)

    def _same(self, holding: Holding, allocation: GPUAllocation) -> bool:
        # An equal copy counts too (one that went through pickling, say), but
        # only from this pool: another pool's allocation may carry the same id.
        return holding.allocation is allocation or (
            allocation.pool_id == self._pool_id and holding.allocation == allocation
        )

    def holdings(self) -> Iterator[Holding]:
        """The live allocations, oldest first (for policies that plan ahead)."""
        return iter(self._holdings.values())

    def waiters(self) -> Iterator[Waiter]:
        """Queued waiters in the policy's order of service."""
        return iter(self._policy)

    def statistics(self) -> PoolStatistics:
        return PoolStatistics(
            gpus=tuple(
                GPUStatistics(
                    index=g.index,
                    uuid=g.uuid,
                    healthy=g.healthy,
                    memory_total_mb=g.memory_total_mb,
                    memory_reserved_mb=g.reserved_mb,
                    memory_foreign_mb=g.foreign_mb,
                    memory_free_mb=g.memory_free_mb,
                    utilization_pct=g.utilization_pct,
                    holder_ids=g.holder_ids(),
                    exclusive=g.exclusive_holder is not None,
                    settling=g.settle is not None,
                )
                for g in self._gpus.values()
            ),
            holder_count=len(self._holdings),
            waiters=len(self._waiters),
            max_parallel=self._max_parallel,
            grants_total=self._grants_total,
        )

    # ------------------------------------------------------------------ inputs

    def submit(
        self,
        request: Resources,
        now: float,
        *,
        nowait: bool = False,
        experiment_id: str | None = None,
    ) -> Submission:
        """Queue ``request`` and schedule.

        Raises :class:`UnsatisfiableRequest` (and changes nothing) when no GPU
        could ever satisfy it. With ``nowait``, a request that is not granted
        at once is withdrawn again: it never jumps the queue. ``experiment_id``
        labels the allocation it is granted.
        """
        allocation = self.grant_at_once(request, now, experiment_id)
        ticket = next(self._tickets)
        if allocation is not None:
            return Submission(ticket, allocation, [])
        waiter = Waiter(ticket, request, now, experiment_id)
        futile = bool(self._waiters) and self._nothing_can_start(request.priority)
        self._queue(waiter)
        # (hot path H7) When nobody could start, the policy has nothing to decide
        # (see _nothing_can_start); the queue grows by one and that is all.
        outcomes = [] if futile else self._schedule(now)
        allocation = None
        error = None
        others: list[Outcome] = []
        for outcome in outcomes:
            if outcome.ticket != waiter.ticket:
                others.append(outcome)
            elif isinstance(outcome, Grant):
                allocation = outcome.allocation
            else:
                error = outcome.error  # a scorer that failed on the GPUs it was to get
        if allocation is None and error is None and nowait:
            others.extend(self.cancel(waiter.ticket, now))
        return Submission(waiter.ticket, allocation, others, error)

    def grant_at_once(
        self, request: Resources, now: float, experiment_id: str | None = None
    ) -> GPUAllocation | None:
        """Grant ``request`` now if nobody waits and it fits; else ``None``, changing nothing.

        Nobody waits, so there is nobody to be fair to: this is the
        uncontended path, which must stay cheap (no ticket, no queue). Raises
        like :meth:`submit`, so a shell may try it first and submit only when
        it returns ``None``.
        """
        if self._closed:
            raise PoolClosed("the pool is closed")
        idle = self._idle
        if (
            idle
            and request.required_gpus == 1
            and request.exclusive
            and request.allowed_gpus is None
            and not self._waiters
            and (self._max_parallel is None or len(self._holdings) < self._max_parallel)
            and self._gpus[idle[0][1]].free_mb >= request.min_memory_mb
        ):
            # (hot path H1) The commonest request: one whole GPU, any of them. The best
            # idle GPU is the first of the idle list, which is what find_gpus would return;
            # and a request that fits now is not impossible, so that check (a cache
            # lookup) is left for the other paths: the core's share of a trio
            # acquire/release pair went from 3.3 to 3.1 us.
            chosen: tuple[int, ...] | None = (idle[0][1],)
        else:
            reason = self._impossible(request)
            if reason is not None:
                raise UnsatisfiableRequest(reason)
            if self._waiters or not self.can_grant_more():
                return None
            chosen = self.find_gpus(request)
        if chosen is None:
            return None
        # The scorer may raise here, before anything has changed (see _try_grant);
        # only a shared grant asks it (hot path H5).
        ranks = (
            None if request.exclusive else self._ranks_with_reserved(chosen, request.min_memory_mb)
        )
        return self._grant(None, request, experiment_id, chosen, ranks, now)

    def cancel(self, ticket: int, now: float) -> list[Outcome]:
        """Withdraw waiter ``ticket`` (cancelled, timed out).

        If a grant had already been made to it, that grant is taken back and
        handed to the next in line. Unknown or finished tickets are ignored, so
        a shell may call this on every interrupted wait without bookkeeping.
        """
        waiter = self._unqueue(ticket)
        if waiter is not None:
            self._policy.remove(waiter)
            # Under FIFO the withdrawn waiter may have been the head that blocked others.
            return self._schedule(now)
        allocation_id = self._ticket_to_allocation.get(ticket)
        if allocation_id is not None:
            return self.release(self._holdings[allocation_id].allocation, now)
        return []

    def release(self, allocation: GPUAllocation, now: float) -> list[Outcome]:
        """Take ``allocation`` back and hand its GPUs on."""
        if not isinstance(allocation, GPUAllocation):
            raise TypeError(f"release takes a GPUAllocation, got {allocation!r}")
        holding = self._holdings.get(allocation.id)
        if holding is None or not self._same(holding, allocation):
            raise AllocationNotHeld(
                f"allocation {allocation.id} (GPUs {list(allocation.gpu_indices)}) is not held "
                "by this pool: it was released already, or another pool granted it"
            )
        memory = allocation.memory_mb
        # The score depends on memory alone: with none reserved, it stands. With some,
        # the new scores are worked out (and checked) before anything changes.
        ranks = self._ranks_with_reserved(allocation.gpu_indices, -memory) if memory else None
        del self._holdings[allocation.id]
        if holding.ticket is not None:
            del self._ticket_to_allocation[holding.ticket]
        self._epoch += 1
        settle = None
        if holding.pids and self._settle_timeout > 0:
            settle = Settle(holding.pids, self._epoch, now + self._settle_timeout)
        for position, index in enumerate(allocation.gpu_indices):
            gpu = self._gpus[index]
            if allocation.exclusive:
                gpu.exclusive_holder = None
                self._held_whole -= 1
            else:
                del gpu.shared_holders[allocation.id]
            if settle is not None:
                gpu.settle = settle
                self._settling.add(index)
            if ranks is not None:
                gpu.take_reserved(gpu.reserved_mb - memory, ranks[position])
            self._refresh_idle(gpu)
        return self._schedule(now)

    def attach_process(self, allocation: GPUAllocation, pid: int) -> None:
        """Record that process ``pid`` (and its session) works for ``allocation``."""
        if not self.holds(allocation):
            raise AllocationNotHeld(f"allocation {allocation.id} is not held by this pool")
        holding = self._holdings[allocation.id]
        holding.pids = holding.pids | {pid}

    def update(
        self,
        snapshot: Sequence[GPUStats],
        now: float,
        *,
        epoch: int | None = None,
        sessions: Mapping[int, int] | None = None,
    ) -> list[Outcome]:
        """Take in a provider snapshot.

        ``epoch`` is :attr:`epoch` as read just before the snapshot started
        (``None``: the snapshot cannot end any settle). ``sessions`` maps a
        listed process id to its session id, so that a job's children (which
        share the session ``run_process`` started) are attributed to its
        allocation. Memory that processes of the pool's allocations use is
        covered by their reservations; everything else the provider reports
        as used counts as foreign.
        """
        by_index = {s.index: s for s in snapshot}
        sessions = sessions or {}
        # Every GPU's new numbers and score first: a scorer that fails on them
        # leaves the core as it was (the pool then keeps the last good snapshot).
        reported: list[tuple[GPUState, GPUStats | None, int, tuple[float, int]]] = []
        for gpu in self._gpus.values():
            stats = by_index.get(gpu.index)
            if stats is None:
                reported.append((gpu, None, gpu.foreign_mb, gpu.rank_key))
                continue
            foreign = self._foreign_memory(gpu, stats, sessions)
            rank = gpu.rank_with(self._scorer, foreign, gpu.reserved_mb, stats.utilization_pct)
            reported.append((gpu, stats, foreign, rank))
        self._hosts.clear()
        lost_health = health_changed = False
        for gpu, stats, foreign, rank in reported:
            was_healthy = gpu.healthy
            if stats is None:
                gpu.reported_healthy = False
                gpu.health_detail = "missing from the provider's snapshot"
            else:
                gpu.reported_healthy = stats.healthy
                gpu.health_detail = stats.health_detail
                gpu.take(foreign, gpu.reserved_mb, stats.utilization_pct, rank)
                if gpu.settle is not None and settled(gpu.settle, stats, epoch, sessions):
                    gpu.settle = None
            if gpu.settle is not None and now >= gpu.settle.deadline:
                gpu.settle = None
            if gpu.settle is None:
                self._settling.discard(gpu.index)
            lost_health |= was_healthy and not gpu.healthy
            health_changed |= was_healthy != gpu.healthy
            self._refresh_idle(gpu)
        if health_changed:
            self._impossible_cache.clear()
        failures = self._fail_impossible() if lost_health else []
        return failures + self._schedule(now)

    def expire(self, now: float) -> list[Outcome]:
        """End the settles whose ``settle_timeout`` has passed, without a snapshot.

        :meth:`update` does this too; this is for when no snapshot arrives (a
        failing or hung provider), so that the deadline still holds.
        """
        ended = [
            gpu
            for gpu in map(self._gpus.__getitem__, self._settling)
            if gpu.settle is not None and now >= gpu.settle.deadline
        ]
        if not ended:
            return []
        for gpu in ended:
            gpu.settle = None
            self._settling.discard(gpu.index)
            self._refresh_idle(gpu)
        return self._schedule(now)

    def mark_unhealthy(
        self, index: int, now: float, detail: str = "marked unhealthy"
    ) -> list[Outcome]:
        """Stop granting GPU ``index`` (it stays unhealthy until :meth:`mark_healthy`)."""
        gpu = self._gpu(index)
        gpu.marked_unhealthy = True
        gpu.health_detail = detail
        self._impossible_cache.clear()
        self._hosts.clear()
        self._refresh_idle(gpu)
        return self._fail_impossible() + self._schedule(now)

    def mark_healthy(self, index: int, now: float) -> list[Outcome]:
        """Undo :meth:`mark_unhealthy`; the provider's own report still applies."""
        gpu = self._gpu(index)
        gpu.marked_unhealthy = False
        self._impossible_cache.clear()
        self._hosts.clear()
        self._refresh_idle(gpu)
        return self._schedule(now)

    def close(self) -> list[Outcome]:
        """Refuse new requests and fail every waiter with :class:`PoolClosed`.

        Holders keep their GPUs until they release them.
        """
        self._closed = True
        failures: list[Outcome] = []
        for waiter in list(self._policy):
            failures.append(Failure(waiter.ticket, PoolClosed("the pool was closed while waiting")))
            self._policy.remove(waiter)
        self._waiters.clear()
        self._waiting_priorities.clear()
        return failures

    # ------------------------------------------------- state kept elsewhere

    def adopt(
        self,
        allocation: GPUAllocation,
        request: Resources,
        granted_at: float,
        *,
        ticket: int | None = None,
        pids: frozenset[int] = frozenset(),
    ) -> None:
        """Take in ``allocation``, granted earlier, as held (no decision is made).

        For a shell that rebuilds the scheduler from state kept elsewhere. Its
        fit is not checked again (memory used outside the pool may have grown
        since the grant), but a holding that contradicts the others (an
        exclusive GPU held twice, an unknown GPU, an id in use) is a
        ``ValueError``, and the call then changes nothing.
        """
        if allocation.id in self._holdings:
            raise ValueError(f"allocation id {allocation.id} is held already")
        for index in allocation.gpu_indices:
            gpu = self._gpu(index)
            if gpu.exclusive_holder is not None or (allocation.exclusive and gpu.shared_holders):
                raise ValueError(
                    f"allocation {allocation.id} holds GPU {index}, which is held whole by "
                    f"allocation {gpu.holder_ids()[0]}"
                    if gpu.exclusive_holder is not None
                    else f"allocation {allocation.id} holds GPU {index} whole, but it is shared"
                )
        ranks = (
            None
            if allocation.exclusive
            else self._ranks_with_reserved(allocation.gpu_indices, allocation.memory_mb)
        )
        memory = allocation.memory_mb
        for position, index in enumerate(allocation.gpu_indices):
            gpu = self._gpus[index]
            if ranks is None:
                gpu.reserved_mb += memory
                gpu.exclusive_holder = allocation.id
                self._held_whole += 1
                gpu.free_mb = max(0, gpu.free_mb - memory)
            else:
                gpu.shared_holders[allocation.id] = memory
                gpu.take_reserved(gpu.reserved_mb + memory, ranks[position])
            self._refresh_idle(gpu)
        self._holdings[allocation.id] = Holding(allocation, request, ticket, granted_at, pids)
        if ticket is not None:
            self._ticket_to_allocation[ticket] = allocation.id

    def requeue(self, waiter: Waiter) -> None:
        """Queue ``waiter``, which was waiting before, without a scheduling pass.

        Waiters go in the order they arrived (tickets grow with arrival).
        """
        if waiter.ticket in self._waiters or waiter.ticket in self._ticket_to_allocation:
            raise ValueError(f"ticket {waiter.ticket} is in use already")
        self._queue(waiter)

    def keep_settling(self, index: int, settle: Settle) -> None:
        """GPU ``index`` waits for a released job's processes to leave it (``settle``)."""
        gpu = self._gpu(index)
        gpu.settle = settle
        self._settling.add(index)
        self._refresh_idle(gpu)

    def settling(self) -> dict[int, Settle]:
        """The GPUs that wait for a released job's processes, by index."""
        return {i: s for i in self._settling if (s := self._gpus[i].settle) is not None}

    def holding(self, allocation_id: int) -> Holding | None:
        """The live allocation with this id, or ``None``."""
        return self._holdings.get(allocation_id)

    def reschedule(self, now: float) -> list[Outcome]:
        """Fail the waiters no GPU could ever serve now, then run a scheduling pass.

        For a shell that changed the state through the calls above (a rebuilt
        scheduler, whose waiters were requeued without a pass).
        """
        self._impossible_cache.clear()
        return self._fail_impossible() + self._schedule(now)

    def queued(self, ticket: int) -> bool:
        """Whether ticket ``ticket`` still waits."""
        return ticket in self._waiters

    # -------------------------------------- queries a policy makes (see _Pass)

    def find_gpus(self, request: Resources, avoid: Collection[int] = ()) -> tuple[int, ...] | None:
        """The best-scored GPUs that satisfy ``request`` right now, or ``None``.

        GPUs in ``avoid`` are not considered (a policy keeping them for someone else).
        """
        memory = request.min_memory_mb
        allowed = request.allowed_gpus
        needed = request.required_gpus
        gpus = self._gpus
        if request.exclusive:
            chosen: list[int] = []
            for _, index in self._idle:  # best first
                if (
                    gpus[index].free_mb >= memory
                    and (allowed is None or index in allowed)
                    and index not in avoid
                ):
                    if needed == 1:
                        return (index,)
                    chosen.append(index)
                    if len(chosen) == needed:
                        return tuple(sorted(chosen))
            return None
        candidates = [
            g
            for g in gpus.values()
            if g.grantable
            and g.exclusive_holder is None
            and g.free_mb >= memory
            and (allowed is None or g.index in allowed)
            and g.index not in avoid
        ]
        if len(candidates) < needed:
            return None
        if needed == 1:
            return (min(candidates, key=packed_first).index,)
        candidates.sort(key=packed_first)
        return tuple(sorted(g.index for g in candidates[:needed]))

    def hosts(self, request: Resources) -> dict[int, int]:
        """The GPUs that could host ``request`` once this pool's holders leave them.

        Healthy GPUs (settling ones included) that ``request`` allows and
        whose memory, less what processes outside the pool use, is enough;
        each mapped to that memory (what the pool's holders share). For
        policies that plan ahead; do not modify the answer.
        """
        key = (request.allowed_gpus, request.min_memory_mb)
        found = self._hosts.get(key)
        if found is None:
            allowed, memory = key
            found = self._hosts[key] = {
                g.index: g.memory_total_mb - g.foreign_mb
                for g in self._gpus.values()
                if g.healthy
                and (allowed is None or g.index in allowed)
                and g.memory_total_mb - g.foreign_mb >= memory
            }
        return found

    def can_grant_more(self) -> bool:
        """False while ``max_parallel`` allocations are held."""
        return self._max_parallel is None or len(self._holdings) < self._max_parallel

    # ------------------------------------------------------------------ internals

    def _schedule(self, now: float) -> list[Outcome]:
        """One scheduling pass: the policy's decisions, as the view recorded them."""
        if not self._waiters:
            return []
        view = _Pass(self, now)
        self._policy.schedule(view, now)
        decisions = view.decisions
        assert decisions is not None
        view.decisions = None  # the pass is over: the view makes no more grants
        return decisions

    def _try_grant(
        self, waiter: Waiter, avoid: Collection[int], now: float, decisions: list[Outcome]
    ) -> bool:
        """Grant ``waiter`` now if its request fits, adding the decision to ``decisions``
        (:meth:`_Pass.try_grant`)."""
        if self._waiters.get(waiter.ticket) is not waiter:
            # A policy that kept a waiter it was told is gone would grant it twice.
            raise RuntimeError(
                f"try_grant was given waiter {waiter.ticket}, which no longer waits (it was "
                "granted, failed or withdrawn): a policy must drop every waiter that "
                "try_grant returned True for, and every waiter the core removes"
            )
        limit = self._max_parallel
        if limit is not None and len(self._holdings) >= limit:
            return False
        request = waiter.request
        chosen = self.find_gpus(request, avoid)
        if chosen is None:
            return False
        try:
            # (hot path H5) A GPU held whole is not ranked while held (it is
            # rescored when released), so only a shared grant asks the scorer.
            ranks = (
                None
                if request.exclusive
                else self._ranks_with_reserved(chosen, request.min_memory_mb)
            )
        except Exception as error:
            # The scorer failed on the GPUs this waiter was about to get. It is in the
            # middle of a scheduling pass whose other decisions must still be delivered,
            # so the error goes to this waiter (its acquire raises it), not up the stack.
            self._unqueue(waiter.ticket)
            decisions.append(Failure(waiter.ticket, error))
            return True
        decisions.append(
            Grant(
                waiter.ticket,
                self._grant(waiter.ticket, request, waiter.experiment_id, chosen, ranks, now),
            )
        )
        return True

    def _ranks_with_reserved(
        self, indices: tuple[int, ...], delta_mb: int
    ) -> list[tuple[float, int]]:
        """The rank keys GPUs ``indices`` would have with ``delta_mb`` more reserved on each.

        Runs the scorer (which may raise) and changes nothing: the first step
        of a shared grant or of a release that frees memory.
        """
        scorer, gpus = self._scorer, self._gpus
        ranks = []
        for index in indices:
            gpu = gpus[index]
            reserved = gpu.reserved_mb + delta_mb
            ranks.append(gpu.rank_with(scorer, gpu.foreign_mb, reserved, gpu.utilization_pct))
        return ranks

    def _grant(
        self,
        ticket: int | None,
        request: Resources,
        experiment_id: str | None,
        chosen: tuple[int, ...],
        ranks: list[tuple[float, int]] | None,
        now: float,
    ) -> GPUAllocation:
        """Grant ``chosen`` to ``request``; ``ranks`` are what :meth:`_ranks_with_reserved`
        gave for a shared grant, ``None`` for an exclusive one."""
        gpus = self._gpus
        memory = request.min_memory_mb
        exclusive = request.exclusive
        allocation = GPUAllocation(
            next(self._allocation_ids),
            chosen,
            (gpus[chosen[0]].uuid,) if len(chosen) == 1 else tuple(gpus[i].uuid for i in chosen),
            memory,
            exclusive,
            experiment_id,
            self._pool_id,
            self._on_process_started,
            (gpus[chosen[0]].memory_total_mb,)
            if len(chosen) == 1
            else tuple(gpus[i].memory_total_mb for i in chosen),
        )
        for position, index in enumerate(chosen):
            gpu = gpus[index]
            if ranks is None:
                # Held whole: its score matters again only once released (rescored then).
                gpu.reserved_mb += memory
                gpu.exclusive_holder = allocation.id
                self._held_whole += 1
                gpu.free_mb -= memory  # the grant checked that it fits
            else:
                gpu.shared_holders[allocation.id] = memory
                gpu.take_reserved(gpu.reserved_mb + memory, ranks[position])
            if gpu.idle_key is not None:
                # It has a holder now, so it leaves the idle list (what
                # _refresh_idle would decide, without asking).
                del self._idle[bisect.bisect_left(self._idle, gpu.idle_key)]
                gpu.idle_key = None
        self._holdings[allocation.id] = Holding(allocation, request, ticket, now)
        if ticket is not None:
            self._unqueue(ticket)
            self._ticket_to_allocation[ticket] = allocation.id
        self._grants_total += 1
        return allocation

    def _queue(self, waiter: Waiter) -> None:
        self._waiters[waiter.ticket] = waiter
        priority = waiter.request.priority
        self._waiting_priorities[priority] = self._waiting_priorities.get(priority, 0) + 1
        self._policy.push(waiter)

    def _unqueue(self, ticket: int) -> Waiter | None:
        """Drop ``ticket`` from the waiters (the caller updates the policy)."""
        waiter = self._waiters.pop(ticket, None)
        if waiter is not None:
            priority = waiter.request.priority
            left = self._waiting_priorities[priority] - 1
            if left:
                self._waiting_priorities[priority] = left
            else:
                del self._waiting_priorities[priority]
        return waiter

    def _nothing_can_start(self, priority: int) -> bool:
        """True when a newcomer at ``priority`` joining a non-empty queue cannot
        change anything the policy decides.

        The policy ran to a fixed point after the last change to the GPUs or the
        queue. A newcomer changes that only if it could start, or if it becomes
        the head of the queue (which BackfillPolicy starts a patience clock
        for). It cannot start while ``max_parallel`` allocations are held or
        every GPU is held whole, and it does not become the head while someone
        waits at its priority or above.
        """
        full = not self.can_grant_more() or (not self._idle and self._held_whole == len(self._gpus))
        return full and max(self._waiting_priorities) >= priority

    def _refresh_idle(self, gpu: GPUState) -> None:
        """Put ``gpu`` in the idle list under its current key, or take it out."""
        # (hot path H3) gpu.idle and gpu.grantable, spelled out.
        idle_and_grantable = (
            gpu.exclusive_holder is None
            and not gpu.shared_holders
            and gpu.reported_healthy
            and not gpu.marked_unhealthy
            and gpu.settle is None
        )
        want = gpu.rank_key if idle_and_grantable else None
        if want == gpu.idle_key:
            return
        if gpu.idle_key is not None:
            del self._idle[bisect.bisect_left(self._idle, gpu.idle_key)]
        if want is not None:
            bisect.insort(self._idle, want)
        gpu.idle_key = want

    def _gpu(self, index: int) -> GPUState:
        gpu = self._gpus.get(index)
        if gpu is None:
            raise ValueError(f"no GPU with index {index!r}; the pool has {sorted(self._gpus)}")
        return gpu

    def _impossible(self, request: Resources) -> str | None:
        """Why no state of the pool could ever grant ``request``, or ``None``."""
        shape = (request.required_gpus, request.min_memory_mb, request.allowed_gpus)
        try:
            return self._impossible_cache[shape]
        except KeyError:
            reason = self._impossible_cache[shape] = self._why_impossible(request)
            return reason

    def _why_impossible(self, request: Resources) -> str | None:
        allowed = request.allowed_gpus
        if allowed is not None:
            unknown = sorted(allowed - self._gpus.keys())
            if unknown:
                return (
                    f"allowed_gpus names GPU(s) {unknown} that this pool does not have "
                    f"(it has {sorted(self._gpus)})"
                )
        pool = [g for g in self._gpus.values() if allowed is None or g.index in allowed]
        healthy = [g for g in pool if g.healthy]
        big_enough = [g for g in healthy if g.memory_total_mb >= request.min_memory_mb]
        if len(big_enough) >= request.required_gpus:
            return None
        where = "" if allowed is None else f" among allowed_gpus {sorted(allowed)}"
        if len(pool) < request.required_gpus:
            return (
                f"required_gpus={request.required_gpus} but the pool has {len(pool)} GPU(s){where}"
            )
        if len(healthy) < request.required_gpus:
            return (
                f"required_gpus={request.required_gpus} but only {len(healthy)} GPU(s){where} "
                "are healthy"
            )
        largest = max((g.memory_total_mb for g in healthy), default=0)
        return (
            f"min_memory_mb={request.min_memory_mb} on {request.required_gpus} GPU(s), but only "
            f"{len(big_enough)} healthy GPU(s){where} have that much memory in total "
            f"(the largest has {largest} MB)"
        )

    def _fail_impossible(self) -> list[Outcome]:
        failures: list[Outcome] = []
        for waiter in list(self._policy):
            reason = self._impossible(waiter.request)
            if reason is not None:
                self._policy.remove(waiter)
                self._unqueue(waiter.ticket)
                failures.append(Failure(waiter.ticket, UnsatisfiableRequest(reason)))
        return failures

    def _foreign_memory(self, gpu: GPUState, stats: GPUStats, sessions: Mapping[int, int]) -> int:
        """Used memory that no allocation of this pool accounts for."""
        if not stats.processes or gpu.idle:
            return stats.memory_used_mb
        holders = [self._holdings[a] for a in gpu.holder_ids()]
        attributed = 0
        overuse = 0
        for holding in holders:
            if not holding.pids:
                continue
            used = sum(
                p.used_memory_mb or 0
                for p in stats.processes
                if p.pid in holding.pids or sessions.get(p.pid) in holding.pids
            )
            attributed += used
            if not holding.allocation.exclusive:
                overuse += max(0, used - holding.allocation.memory_mb)
        return max(0, stats.memory_used_mb - attributed) + overuse


@final
class _Pass:
    """The policy's :class:`SchedulerView` for one scheduling pass.

    It answers queries from the core and records every decision
    :meth:`try_grant` makes; :meth:`Scheduler._schedule` returns them when
    the policy's ``schedule()`` is done. One per pass, so the scheduler keeps
    no decisions (and no "now") in its own state between calls, and a policy
    that kept the view past its pass gets an error instead of grants that
    would reach nobody.
    """

    __slots__ = ("_core", "_now", "decisions", "find_gpus")

    def __init__(self, core: Scheduler, now: float) -> None:
        self._core = core
        self._now = now
        #: What try_grant decided, in order; None once the pass is over.
        self.decisions: list[Outcome] | None = []
        self.find_gpus = core.find_gpus  # hot path H9

    def try_grant(self, waiter: Waiter, avoid: Collection[int] = ()) -> bool:
        decisions = self.decisions
        if decisions is None:
            raise RuntimeError(
                "this SchedulerView belongs to a scheduling pass that has ended: use the "
                "view given to the current schedule() call"
            )
        return self._core._try_grant(waiter, avoid, self._now, decisions)

    def hosts(self, request: Resources) -> dict[int, int]:
        return self._core.hosts(request)

    def can_grant_more(self) -> bool:
        return self._core.can_grant_more()

    @property
    def max_parallel(self) -> int | None:
        return self._core.max_parallel

    def holdings(self) -> Iterator[Holding]:
        return self._core.holdings()
