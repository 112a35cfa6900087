"""A Hypothesis state machine over the core: random submit / cancel / release /
update / mark_unhealthy sequences, with the pool's promises as invariants."""

from __future__ import annotations

from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

from gpupool import AllocationNotHeld, GPUAllocation, UnsatisfiableRequest
from gpupool._core.decisions import Failure, Grant, Outcome
from gpupool._core.policy import FifoPolicy
from gpupool._core.request import Resources, make_request
from gpupool._core.scheduler import Scheduler

from .strategies import MB, gpu, gpu_snapshots, request_kwargs

GPU_COUNT = 4


class SchedulerMachine(RuleBasedStateMachine):
    """The model: which tickets wait (with their requests) and which allocations are held."""

    def __init__(self) -> None:
        super().__init__()
        self.core = Scheduler(
            [gpu(i) for i in range(GPU_COUNT)], max_parallel=3, policy=FifoPolicy()
        )
        self.now = 0.0
        self.waiting: dict[int, Resources] = {}
        self.held: dict[int, GPUAllocation] = {}
        self.ended: set[int] = set()

    def tick(self) -> float:
        self.now += 1.0
        return self.now

    def apply(self, outcomes: list[Outcome], *, new_gpus: bool = False) -> None:
        stats = {g.index: g for g in self.core.statistics().gpus}
        for outcome in outcomes:
            assert outcome.ticket in self.waiting, "a decision for a ticket that was not waiting"
            request = self.waiting.pop(outcome.ticket)
            self.ended.add(outcome.ticket)
            if isinstance(outcome, Failure):
                assert isinstance(outcome.error, UnsatisfiableRequest)
                continue
            assert isinstance(outcome, Grant)
            self.check_grant(outcome, request)
            self.held[outcome.allocation.id] = outcome.allocation
            for index in outcome.allocation.gpu_indices:
                g = stats[index]
                # At the moment of a grant, reservations plus foreign use fit in the GPU.
                assert g.memory_reserved_mb + g.memory_foreign_mb <= g.memory_total_mb
                assert g.healthy

    def check_grant(self, grant: Grant, request: Resources) -> None:
        self.check_grant_fits(grant, request)
        # Strict FIFO among priorities: nobody still waiting was ahead of this one.
        for ticket, other in self.waiting.items():
            ahead = other.priority > request.priority or (
                other.priority == request.priority and ticket < grant.ticket
            )
            assert not ahead, f"ticket {grant.ticket} overtook waiting ticket {ticket}"

    def check_grant_fits(self, grant: Grant, request: Resources) -> None:
        """What a grant is under any policy: as many distinct GPUs as asked for, in the
        mode asked for, within ``allowed_gpus``."""
        alloc = grant.allocation
        assert len(alloc.gpu_indices) == request.required_gpus
        assert len(set(alloc.gpu_indices)) == request.required_gpus
        assert alloc.exclusive == request.exclusive
        if request.allowed_gpus is not None:
            assert set(alloc.gpu_indices) <= request.allowed_gpus

    def submit_request(self, request: Resources, nowait: bool) -> None:
        """Submit ``request`` now and apply what the core decided: an impossible one is
        refused at once and changes nothing; a ``nowait`` one that cannot start
        leaves no waiter behind."""
        now = self.tick()
        before = self.core.statistics()
        try:
            submission = self.core.submit(request, now, nowait=nowait)
        except UnsatisfiableRequest:
            assert self.core.statistics() == before
            return
        self.waiting[submission.ticket] = request
        if submission.allocation is not None:
            self.apply([Grant(submission.ticket, submission.allocation), *submission.outcomes])
        else:
            self.apply(submission.outcomes)
            if nowait:
                self.waiting.pop(submission.ticket)
                assert self.core.waiting == len(self.waiting)

    # ------------------------------------------------------------------ rules

    @rule(
        kwargs=request_kwargs(GPU_COUNT, memory_mb=MB),
        allowed=st.one_of(st.none(), st.sets(st.integers(0, GPU_COUNT - 1), min_size=1)),
        nowait=st.booleans(),
    )
    def submit(self, kwargs: dict[str, Any], allowed: set[int] | None, nowait: bool) -> None:
        try:
            request = make_request(allowed_gpus=allowed, **kwargs)
        except UnsatisfiableRequest:
            return
        self.submit_request(request, nowait)

    @precondition(lambda self: self.waiting)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        ticket = data.draw(st.sampled_from(sorted(self.waiting)))
        self.waiting.pop(ticket)
        self.apply(self.core.cancel(ticket, self.tick()))

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        alloc_id = data.draw(st.sampled_from(sorted(self.held)))
        alloc = self.held.pop(alloc_id)
        self.apply(self.core.release(alloc, self.tick()))

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def release_twice_is_refused_and_changes_nothing(self, data: st.DataObject) -> None:
        alloc_id = data.draw(st.sampled_from(sorted(self.held)))
        alloc = self.held.pop(alloc_id)
        self.apply(self.core.release(alloc, self.tick()))
        before = self.core.statistics()
        with pytest.raises(AllocationNotHeld):
            self.core.release(alloc, self.tick())
        assert self.core.statistics() == before

    @rule(snapshot=gpu_snapshots(GPU_COUNT, memory_mb=MB))
    def update(self, snapshot: list[Any]) -> None:
        self.apply(self.core.update(snapshot, self.tick()))

    @rule(index=st.integers(0, GPU_COUNT - 1))
    def mark_unhealthy(self, index: int) -> None:
        self.apply(self.core.mark_unhealthy(index, self.tick()))

    @rule(index=st.integers(0, GPU_COUNT - 1))
    def mark_healthy(self, index: int) -> None:
        self.apply(self.core.mark_healthy(index, self.tick()))

    # ------------------------------------------------------------------ invariants

    @invariant()
    def model_agrees_with_core(self) -> None:
        stats = self.core.statistics()
        assert stats.waiters == len(self.waiting)
        assert stats.holder_count == len(self.held)
        assert stats.holder_count <= 3  # max_parallel

    @invariant()
    def the_cores_shortcut_counts_are_exact(self) -> None:
        # What submit reads to skip the policy when a newcomer changes nothing.
        counts: dict[int, int] = {}
        for waiter in self.core.waiters():
            counts[waiter.request.priority] = counts.get(waiter.request.priority, 0) + 1
        assert self.core._waiting_priorities == counts
        whole = sum(1 for g in self.core.statistics().gpus if g.exclusive)
        assert self.core._held_whole == whole

    @invariant()
    def no_gpu_is_over_committed(self) -> None:
        holders_of: dict[int, list[GPUAllocation]] = {i: [] for i in range(GPU_COUNT)}
        for alloc in self.held.values():
            for index in alloc.gpu_indices:
                holders_of[index].append(alloc)
        for g in self.core.statistics().gpus:
            allocs = holders_of[g.index]
            assert sorted(g.holder_ids) == sorted(a.id for a in allocs)
            if any(a.exclusive for a in allocs):
                assert len(allocs) == 1
                assert g.exclusive
            assert g.memory_reserved_mb == sum(a.memory_mb for a in allocs)
            assert g.memory_reserved_mb <= g.memory_total_mb

    def teardown(self) -> None:
        """Every waiter is eventually granted or failed, and nothing leaks."""
        healthy = [gpu(i) for i in range(GPU_COUNT)]
        for index in range(GPU_COUNT):
            self.apply(self.core.mark_healthy(index, self.tick()))
        self.apply(self.core.update(healthy, self.tick()))
        for _ in range(10_000):
            if not self.held:
                break
            alloc_id = min(self.held)
            self.apply(self.core.release(self.held.pop(alloc_id), self.tick()))
        assert not self.waiting, f"waiters left unserved: {sorted(self.waiting)}"
        assert not self.held
        stats = self.core.statistics()
        assert stats.holder_count == 0
        assert stats.waiters == 0
        for g in stats.gpus:
            assert g.holder_ids == ()
            assert g.memory_reserved_mb == 0
            assert not g.exclusive


SchedulerMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestScheduler = SchedulerMachine.TestCase
