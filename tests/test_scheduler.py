"""The pure scheduling core, driven synchronously: tables of cases (the Hypothesis state
machine over it is test_scheduler_machine.py)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import gpupool._core.scheduler
from gpupool import AllocationNotHeld, GPUProcess, PoolClosed, UnsatisfiableRequest
from gpupool._core.decisions import Failure, Grant
from gpupool._core.policy import FifoPolicy
from gpupool._core.request import make_request
from gpupool._core.scheduler import Scheduler

from .strategies import MB, gpu, gpus


def core(count: int = 4, **kwargs: object) -> Scheduler:
    kwargs.setdefault("policy", FifoPolicy())
    return Scheduler(gpus(count), **kwargs)  # type: ignore[arg-type]


def req(required_gpus: int = 1, **kwargs: object) -> object:
    return make_request(required_gpus, **kwargs)


def granted(outcomes: list[object]) -> dict[int, tuple[int, ...]]:
    return {o.ticket: o.allocation.gpu_indices for o in outcomes if isinstance(o, Grant)}


# ---------------------------------------------------------------- selection


def test_exclusive_request_gets_distinct_whole_gpus() -> None:
    s = core(4)
    a = s.submit(req(2), 0).allocation
    b = s.submit(req(2), 0).allocation
    assert a is not None
    assert b is not None
    assert set(a.gpu_indices).isdisjoint(b.gpu_indices)
    assert s.submit(req(1), 0).allocation is None
    stats = s.statistics()
    assert all(g.exclusive and len(g.holder_ids) == 1 for g in stats.gpus)


def test_best_scored_gpu_wins_and_ties_break_by_lowest_index() -> None:
    snapshot = [gpu(0, used=MB // 2), gpu(1, utilization=50), gpu(2), gpu(3)]
    s = Scheduler(snapshot, policy=FifoPolicy())
    first = s.submit(req(1), 0).allocation
    second = s.submit(req(1), 0).allocation
    third = s.submit(req(1), 0).allocation
    assert first is not None
    assert second is not None
    assert third is not None
    # GPUs 2 and 3 are equally good: the lower index first; then the idle-but-busy GPU 1
    # (score 0.6 + 0.2) beats the half-full GPU 0 (0.3 + 0.4).
    assert (first.gpu_indices, second.gpu_indices, third.gpu_indices) == ((2,), (3,), (1,))


def test_multi_gpu_allocation_lists_indices_and_uuids_in_index_order() -> None:
    s = Scheduler([gpu(0, used=100), gpu(1), gpu(2, used=50)], policy=FifoPolicy())
    alloc = s.submit(req(2), 0).allocation
    assert alloc is not None
    assert alloc.gpu_indices == (1, 2)
    assert alloc.gpu_uuids == tuple(gpu(i).uuid for i in (1, 2))
    assert alloc.env["CUDA_VISIBLE_DEVICES"] == ",".join(alloc.gpu_uuids)
    assert alloc.env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"


def test_foreign_memory_counts_as_used() -> None:
    s = Scheduler([gpu(0, used=MB - 1000), gpu(1, used=MB - 5000)], policy=FifoPolicy())
    alloc = s.submit(req(1, min_memory_mb=4000), 0).allocation
    assert alloc is not None
    assert alloc.gpu_indices == (1,)
    assert s.submit(req(1, min_memory_mb=4000), 0).allocation is None


def test_memory_freed_outside_the_pool_is_granted_at_the_next_update() -> None:
    s = Scheduler([gpu(0, used=MB - 1000)], policy=FifoPolicy())
    queued = s.submit(req(1, min_memory_mb=8000), 0)
    assert queued.allocation is None
    assert s.update([gpu(0, used=MB - 4000)], 1) == []
    assert granted(s.update([gpu(0, used=2000)], 2)) == {queued.ticket: (0,)}


def test_shared_requests_pack_by_memory_and_reserve_from_the_grant() -> None:
    s = core(2)
    a = s.submit(req(1, exclusive=False, min_memory_mb=10_000), 0).allocation
    b = s.submit(req(1, exclusive=False, min_memory_mb=10_000), 0).allocation
    assert a is not None
    assert b is not None
    # Packed onto the same GPU (best fit), keeping GPU 1 whole for exclusive work.
    assert a.gpu_indices == b.gpu_indices == (0,)
    assert s.statistics().gpus[0].memory_reserved_mb == 20_000
    c = s.submit(req(1, exclusive=False, min_memory_mb=10_000), 0).allocation
    assert c is not None
    assert c.gpu_indices == (1,)
    whole = s.submit(req(1), 0)
    assert whole.allocation is None  # both GPUs are shared now


def test_exclusive_waits_for_shared_holders_to_leave() -> None:
    s = core(1)
    shared = s.submit(req(1, exclusive=False, min_memory_mb=1000), 0).allocation
    assert shared is not None
    waiting = s.submit(req(1), 0)
    assert waiting.allocation is None
    assert granted(s.release(shared, 1)) == {waiting.ticket: (0,)}


def test_shared_request_does_not_share_an_exclusively_held_gpu() -> None:
    s = core(1)
    assert s.submit(req(1), 0).allocation is not None
    assert s.submit(req(1, exclusive=False, min_memory_mb=1), 0).allocation is None


def test_allowed_gpus_restricts_the_choice() -> None:
    s = core(4)
    alloc = s.submit(req(2, allowed_gpus={1, 3}), 0).allocation
    assert alloc is not None
    assert alloc.gpu_indices == (1, 3)


def test_max_parallel_caps_allocations_not_gpus() -> None:
    s = core(4, max_parallel=2)
    assert s.submit(req(1), 0).allocation is not None
    second = s.submit(req(1), 0).allocation
    assert second is not None
    third = s.submit(req(1), 0)
    assert third.allocation is None
    assert granted(s.release(second, 1)) == {third.ticket: (1,)}


# ---------------------------------------------------------------- order


def test_fifo_head_is_never_overtaken() -> None:
    s = core(2)
    first = s.submit(req(1), 0).allocation
    assert first is not None
    big = s.submit(req(2), 0)  # needs both GPUs: waits
    small = s.submit(req(1), 0)  # would fit on GPU 1, but must not overtake the head
    assert big.allocation is None
    assert small.allocation is None
    outcomes = s.release(first, 1)
    assert granted(outcomes) == {big.ticket: (0, 1)}
    assert s.waiting == 1


def test_higher_priority_is_served_first_then_arrival_order() -> None:
    s = core(1)
    holder = s.submit(req(1), 0).allocation
    assert holder is not None
    low = s.submit(req(1, priority=0), 0)
    high_1 = s.submit(req(1, priority=5), 0)
    high_2 = s.submit(req(1, priority=5), 0)
    order = []
    current = holder
    for now in range(1, 4):
        (grant,) = s.release(current, now)
        assert isinstance(grant, Grant)
        order.append(grant.ticket)
        current = grant.allocation
    assert order == [high_1.ticket, high_2.ticket, low.ticket]


def test_nowait_never_jumps_the_queue() -> None:
    s = core(2)
    holder = s.submit(req(1), 0).allocation
    assert holder is not None
    head = s.submit(req(2), 0)
    assert head.allocation is None
    # GPU 1 is free, but taking it would delay the waiting head.
    nowait = s.submit(req(1), 0, nowait=True)
    assert nowait.allocation is None
    assert s.waiting == 1
    assert granted(s.release(holder, 1)) == {head.ticket: (0, 1)}


def test_nowait_grants_when_nobody_waits() -> None:
    s = core(1)
    assert s.submit(req(1), 0, nowait=True).allocation is not None
    assert s.submit(req(1), 0, nowait=True).allocation is None
    assert s.waiting == 0


# ---------------------------------------------------------------- impossible requests


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"required_gpus": 5}, "required_gpus=5 but the pool has 4 GPU(s)"),
        ({"required_gpus": 1, "min_memory_mb": MB + 1}, "the largest has 24576 MB"),
        ({"required_gpus": 1, "allowed_gpus": {7}}, "allowed_gpus names GPU(s) [7]"),
        ({"required_gpus": 3, "allowed_gpus": {0, 1, 2}, "min_memory_mb": MB * 2}, "MB"),
    ],
)
def test_impossible_requests_fail_at_once_and_change_nothing(
    kwargs: dict[str, object], message: str
) -> None:
    s = core(4)
    before = s.statistics()
    with pytest.raises(UnsatisfiableRequest, match=re.escape(message)):
        s.submit(req(**kwargs), 0)
    assert s.statistics() == before


def test_losing_a_gpu_fails_waiters_that_can_no_longer_be_served() -> None:
    s = core(2)
    holder = s.submit(req(1), 0).allocation
    assert holder is not None
    needs_two = s.submit(req(2), 0)
    outcomes = s.update([gpu(0), gpu(1, healthy=False)], 1)
    (failure,) = outcomes
    assert isinstance(failure, Failure)
    assert failure.ticket == needs_two.ticket
    assert isinstance(failure.error, UnsatisfiableRequest)
    with pytest.raises(UnsatisfiableRequest, match="only 1 GPU"):
        s.submit(req(2), 1)


def test_unhealthy_gpu_is_not_granted_but_others_keep_working() -> None:
    s = core(2)
    s.mark_unhealthy(0, 0, "Xid 79")
    a = s.submit(req(1), 0).allocation
    assert a is not None
    assert a.gpu_indices == (1,)
    b = s.submit(req(1), 0)
    assert b.allocation is None
    stats = s.statistics().gpus[0]
    assert not stats.healthy
    assert granted(s.mark_healthy(0, 1)) == {b.ticket: (0,)}


def test_holder_of_a_gpu_that_turns_unhealthy_can_still_release() -> None:
    s = core(1)
    alloc = s.submit(req(1), 0).allocation
    assert alloc is not None
    s.update([gpu(0, healthy=False)], 1)
    s.release(alloc, 2)
    assert s.statistics().gpus[0].holder_ids == ()
    assert s.statistics().free_gpus == ()  # free, but unhealthy: not offered


# ---------------------------------------------------------------- release and cancel


def test_release_twice_raises_and_changes_nothing() -> None:
    s = core(2)
    alloc = s.submit(req(1), 0).allocation
    assert alloc is not None
    s.release(alloc, 1)
    before = s.statistics()
    with pytest.raises(AllocationNotHeld, match="released already"):
        s.release(alloc, 2)
    assert s.statistics() == before


def test_release_of_another_pools_allocation_is_refused() -> None:
    mine = Scheduler(gpus(1), pool_id=1, policy=FifoPolicy())
    theirs = Scheduler(gpus(1), pool_id=2, policy=FifoPolicy())
    alloc = theirs.submit(req(1), 0).allocation
    assert alloc is not None
    held = mine.submit(req(1), 0).allocation
    assert held is not None
    assert held.id == alloc.id
    with pytest.raises(AllocationNotHeld):
        mine.release(alloc, 1)
    assert mine.holds(held)


def test_cancelling_a_waiter_behind_a_blocked_head_keeps_order() -> None:
    s = core(1)
    holder = s.submit(req(1), 0).allocation
    assert holder is not None
    a = s.submit(req(1), 0)
    b = s.submit(req(1), 0)
    assert s.cancel(a.ticket, 1) == []
    assert granted(s.release(holder, 2)) == {b.ticket: (0,)}


def test_cancelling_the_blocking_head_lets_the_next_ones_start() -> None:
    s = core(2)
    holder = s.submit(req(1), 0).allocation
    assert holder is not None
    head = s.submit(req(2), 0)
    small = s.submit(req(1), 0)
    assert granted(s.cancel(head.ticket, 1)) == {small.ticket: (1,)}


def test_cancel_after_a_raced_grant_hands_it_to_the_next_waiter() -> None:
    s = core(1)
    holder = s.submit(req(1), 0).allocation
    assert holder is not None
    a = s.submit(req(1), 0)
    b = s.submit(req(1), 0)
    assert granted(s.release(holder, 1)) == {a.ticket: (0,)}
    # a was woken, but its task was cancelled before it ran: the grant moves on.
    assert granted(s.cancel(a.ticket, 2)) == {b.ticket: (0,)}
    assert s.cancel(a.ticket, 3) == []  # idempotent


def test_close_fails_waiters_and_refuses_new_requests() -> None:
    s = core(1)
    holder = s.submit(req(1), 0).allocation
    assert holder is not None
    waiting = s.submit(req(1), 0)
    (failure,) = s.close()
    assert isinstance(failure, Failure)
    assert failure.ticket == waiting.ticket
    assert isinstance(failure.error, PoolClosed)
    with pytest.raises(PoolClosed):
        s.submit(req(1), 1)
    assert s.release(holder, 1) == []
    assert s.statistics().holder_count == 0


# ---------------------------------------------------------------- processes and settle


def test_memory_of_the_pools_own_processes_is_not_counted_twice() -> None:
    s = Scheduler(gpus(1), policy=FifoPolicy())
    alloc = s.submit(req(1, exclusive=False, min_memory_mb=8000), 0).allocation
    assert alloc is not None
    s.attach_process(alloc, 4242)
    child_of_job = GPUProcess(pid=4300, used_memory_mb=7000)
    stranger = GPUProcess(pid=999, used_memory_mb=3000)
    s.update([gpu(0, used=10_000, processes=(child_of_job, stranger))], 1, sessions={4300: 4242})
    stats = s.statistics().gpus[0]
    assert stats.memory_foreign_mb == 3000
    assert stats.memory_reserved_mb == 8000


def test_shared_job_using_more_than_it_reserved_counts_the_excess_as_used() -> None:
    s = Scheduler(gpus(1), policy=FifoPolicy())
    alloc = s.submit(req(1, exclusive=False, min_memory_mb=4000), 0).allocation
    assert alloc is not None
    s.attach_process(alloc, 77)
    s.update([gpu(0, used=10_000, processes=(GPUProcess(77, 10_000),))], 1)
    assert s.statistics().gpus[0].memory_foreign_mb == 6000
    assert s.statistics().gpus[0].memory_free_mb == MB - 10_000


def test_released_gpu_settles_until_a_later_snapshot_shows_the_job_gone() -> None:
    s = Scheduler(gpus(1), settle_timeout=60, policy=FifoPolicy())
    alloc = s.submit(req(1), 0).allocation
    assert alloc is not None
    s.attach_process(alloc, 500)
    epoch_before_release = s.epoch
    waiting = s.submit(req(1), 0)
    assert s.release(alloc, 10) == []  # settling: not re-granted yet
    assert s.statistics().gpus[0].settling
    assert s.wants_refresh
    job_still_there = [gpu(0, used=9000, processes=(GPUProcess(500, 9000),))]
    # A snapshot started before the release proves nothing, even if it shows the GPU empty.
    assert s.update([gpu(0)], 11, epoch=epoch_before_release) == []
    assert s.update(job_still_there, 12, epoch=s.epoch) == []
    assert granted(s.update([gpu(0)], 13, epoch=s.epoch)) == {waiting.ticket: (0,)}


def test_settle_gives_up_after_its_timeout_and_counts_leftovers_as_foreign() -> None:
    s = Scheduler(gpus(1), settle_timeout=5, policy=FifoPolicy())
    alloc = s.submit(req(1), 0).allocation
    assert alloc is not None
    s.attach_process(alloc, 500)
    waiting = s.submit(req(1, min_memory_mb=1000), 0)
    s.release(alloc, 10)
    stuck = [gpu(0, used=9000, processes=(GPUProcess(500, 9000),))]
    assert s.update(stuck, 14, epoch=s.epoch) == []
    assert granted(s.update(stuck, 15, epoch=s.epoch)) == {waiting.ticket: (0,)}
    assert s.statistics().gpus[0].memory_foreign_mb == 9000


def test_release_without_processes_does_not_settle() -> None:
    s = Scheduler(gpus(1), settle_timeout=60, policy=FifoPolicy())
    alloc = s.submit(req(1), 0).allocation
    assert alloc is not None
    waiting = s.submit(req(1), 0)
    assert granted(s.release(alloc, 1)) == {waiting.ticket: (0,)}


def test_attach_process_to_a_released_allocation_is_refused() -> None:
    s = core(1)
    alloc = s.submit(req(1), 0).allocation
    assert alloc is not None
    s.release(alloc, 1)
    with pytest.raises(AllocationNotHeld):
        s.attach_process(alloc, 1)


def test_scale_grant_under_contention_does_not_rescan_the_queue() -> None:
    """A grant with 100,000 waiters touches the head only (no quadratic rescans)."""
    s = core(8)
    held = [s.submit(req(1), 0).allocation for _ in range(8)]
    tickets = [s.submit(req(1), 0).ticket for _ in range(100_000)]
    calls = 0
    real_find = s.find_gpus

    def counting_find(request: object, avoid: object = ()) -> object:
        nonlocal calls
        calls += 1
        return real_find(request, avoid)  # type: ignore[arg-type]

    s.find_gpus = counting_find  # type: ignore[method-assign]
    (grant,) = s.release(held[0], 1)  # type: ignore[arg-type]
    assert isinstance(grant, Grant)
    assert grant.ticket == tickets[0]
    assert calls <= 2


def test_the_core_takes_its_policy_from_the_pool() -> None:
    """The scheduler has no default policy and imports no concrete one (the pool
    picks BackfillPolicy); a policy is typed against the value modules alone."""
    core_dir = Path(gpupool._core.scheduler.__file__).parent
    for module, forbidden in [
        ("scheduler.py", {"backfill", "reservation"}),
        ("policy.py", {"scheduler", "backfill"}),
    ]:
        tree = ast.parse((core_dir / module).read_text())
        imported = {
            (node.module or "").rsplit(".", 1)[-1]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom)
        }
        assert not imported & forbidden, (module, imported & forbidden)
