"""BackfillPolicy: hand-built traces with known schedules, core-level rules, the async pool."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import rule
from trio.testing import MockClock

from gpupool import (
    BackfillPolicy,
    FakeGPUProvider,
    FifoPolicy,
    GPUResourcePool,
    SchedulerView,
    Waiter,
    WouldBlock,
)
from gpupool._core.decisions import Grant
from gpupool._core.request import Resources, make_request
from gpupool._core.scheduler import Scheduler
from gpupool.sim import GreedyPolicy, Job, simulate
from gpupool.testing import request_kwargs

from .example_policy import ShortestFirstPolicy, coolest_first
from .strategies import MB, gpu, gpus
from .test_scheduler_machine import GPU_COUNT, SchedulerMachine


def starts(jobs: list[Job], count: int, policy: object = None) -> list[float]:
    result = simulate(jobs, gpus=count, policy=policy)  # type: ignore[arg-type]
    return [r.start for r in result.records]


# ------------------------------------------------------------ known schedules


def test_exact_hints_backfill_a_job_that_ends_by_the_heads_reserved_start() -> None:
    # J1 needs all 4 GPUs; J0 holds 2 until t=100. J2 ends exactly at 100: it backfills,
    # and the optimum (makespan 150 = the work bound) is reached. FIFO needs 250.
    jobs = [
        Job(arrival=0, gpus=2, duration=100, hint=100),
        Job(arrival=0, gpus=4, duration=50, hint=50),
        Job(arrival=0, gpus=2, duration=100, hint=100),
    ]
    assert starts(jobs, 4, BackfillPolicy()) == [0, 100, 0]
    assert starts(jobs, 4, FifoPolicy()) == [0, 100, 150]
    result = simulate(jobs, gpus=4)
    assert result.makespan == result.lower_bound == 150
    assert result.records[1].reserved_start == 100


def test_exact_hints_keep_a_job_that_would_end_late_off_the_reserved_gpus() -> None:
    # J2 would end at 200, after J1's reserved start (100): EASY does not backfill it,
    # although greedy would (and delay J1 to 200).
    jobs = [
        Job(arrival=0, gpus=2, duration=100, hint=100),
        Job(arrival=0, gpus=4, duration=10, hint=10),
        Job(arrival=0, gpus=2, duration=200, hint=200),
    ]
    assert starts(jobs, 4, BackfillPolicy()) == [0, 100, 110]
    assert starts(jobs, 4, GreedyPolicy()) == [0, 200, 0]


def test_a_job_without_hint_may_take_a_gpu_the_head_will_not_need() -> None:
    # J1 needs 3 of 4 GPUs at t=100, when all 4 are free: one is spare, so J2 (no hint,
    # runs long) starts at once, on a GPU the head can do without.
    jobs = [
        Job(arrival=0, gpus=2, duration=100, hint=100),
        Job(arrival=0, gpus=3, duration=10, hint=10),
        Job(arrival=0, gpus=1, duration=500),
        Job(arrival=0, gpus=1, duration=500),
    ]
    result = simulate(jobs, gpus=4, policy=BackfillPolicy(patience=0))
    assert [r.start for r in result.records] == [0, 100, 0, 110]
    assert set(result.records[1].gpu_indices).isdisjoint(result.records[2].gpu_indices)


def test_without_hints_batch_mates_overtake_the_head_within_patience() -> None:
    # Nothing hinted. J2 reaches the front at t=100 (when J1 starts); J3 was waiting
    # then, so it overtakes J2 at once and the GPUs do not idle. With patience=0 the
    # schedule is strict FIFO's.
    jobs = [
        Job(arrival=0, gpus=4, duration=100),
        Job(arrival=0, gpus=2, duration=100),
        Job(arrival=0, gpus=4, duration=50),
        Job(arrival=0, gpus=2, duration=100),
    ]
    assert starts(jobs, 4, BackfillPolicy()) == [0, 100, 200, 100]
    assert starts(jobs, 4, BackfillPolicy(patience=0)) == [0, 100, 200, 250]


def test_requests_submitted_after_the_head_reached_the_front_are_not_batch_mates() -> None:
    # J1 reached the front the moment it was submitted; J2 came after (if only just).
    jobs = [
        Job(arrival=0, gpus=2, duration=100),
        Job(arrival=0, gpus=4, duration=50),
        Job(arrival=0, gpus=2, duration=100),
    ]
    assert starts(jobs, 4, BackfillPolicy()) == [0, 100, 150]


def test_patience_runs_out_then_the_head_gets_the_next_free_gpus() -> None:
    # J0 holds both GPUs until t=10, so the others queue up together. At t=10 J1 starts
    # and J2 (2 GPUs) reaches the front, with patience 100: J3 overtakes it at t=10 and
    # J4 at t=70; at t=110 patience is over, so J5 may not take GPU 0 when J1 ends. J2
    # starts at 130 when J4 ends, J5 after it.
    jobs = [
        Job(arrival=0, gpus=2, duration=10),
        Job(arrival=0, gpus=1, duration=100),
        Job(arrival=0, gpus=2, duration=10),
        Job(arrival=0, gpus=1, duration=60),
        Job(arrival=0, gpus=1, duration=60),
        Job(arrival=0, gpus=1, duration=60),
    ]
    result = simulate(jobs, gpus=2, policy=BackfillPolicy(patience=100))
    assert [r.start for r in result.records] == [0, 10, 130, 10, 70, 140]
    assert result.records[2].reached_front_at == 10


def test_requests_arriving_after_the_head_reached_the_front_never_overtake_it() -> None:
    # A steady stream behind a 2-GPU request: later arrivals wait even though a GPU is
    # free, so the 2-GPU request starts as soon as J0 ends. Greedy starves it instead.
    jobs = [Job(arrival=0, gpus=1, duration=100), Job(arrival=1, gpus=2, duration=10)]
    jobs += [Job(arrival=2 + 30 * i, gpus=1, duration=50) for i in range(10)]
    backfill = starts(jobs, 2, BackfillPolicy(patience=None))
    assert backfill[1] == 100
    assert backfill[2] == 110
    greedy = starts(jobs, 2, GreedyPolicy())
    assert greedy[1] > 300


def test_batch_window_limits_who_counts_as_a_batch_mate() -> None:
    # J2 reaches the front at t=50. J3 was waiting then, but was submitted 10 s after
    # J2: with batch_window=5 it may not overtake, with batch_window=60 it may.
    jobs = [
        Job(arrival=0, gpus=2, duration=50),
        Job(arrival=0, gpus=1, duration=100),
        Job(arrival=0, gpus=2, duration=10),
        Job(arrival=10, gpus=1, duration=30),
    ]
    assert starts(jobs, 2, BackfillPolicy(batch_window=5)) == [0, 50, 150, 160]
    assert starts(jobs, 2, BackfillPolicy(batch_window=60)) == [0, 50, 150, 50]


def test_a_holder_outliving_its_hint_delays_the_head_only_by_its_overrun() -> None:
    # J1 says 50 s but runs 200. From t=10 J2 is at the front with a reserved start of
    # 60: J3 (ends at 50) backfills, J4 (would end at 100 after J3) does not. When J5
    # arrives at t=70 the pool schedules again and sees the overrun: no reservation now.
    # With patience spent (0) nothing takes J2's GPUs and it starts when J1 ends; with
    # patience left, J4 (a batch-mate) overtakes, J5 (later) does not.
    jobs = [
        Job(arrival=0, gpus=2, duration=10, hint=10),
        Job(arrival=0, gpus=1, duration=200, hint=50),
        Job(arrival=0, gpus=2, duration=10, hint=10),
        Job(arrival=0, gpus=1, duration=40, hint=40),
        Job(arrival=0, gpus=1, duration=50, hint=50),
        Job(arrival=70, gpus=1, duration=10),
    ]
    result = simulate(jobs, gpus=2, policy=BackfillPolicy(patience=0))
    assert [r.start for r in result.records] == [0, 10, 210, 10, 220, 220]
    assert result.records[2].reserved_start == 60
    assert starts(jobs, 2, BackfillPolicy(patience=3600)) == [0, 10, 210, 10, 70, 220]


def test_priority_comes_first_and_backfilling_respects_it() -> None:
    jobs = [
        Job(arrival=0, gpus=2, duration=100, hint=100),
        Job(arrival=1, gpus=2, duration=10, hint=10),
        Job(arrival=2, gpus=2, duration=10, hint=10, priority=5),
    ]
    assert starts(jobs, 2, BackfillPolicy()) == [0, 110, 100]


def test_allowed_gpus_and_shared_requests_keep_working() -> None:
    # The head may only use GPUs 0-1; a request pinned to GPUs 2-3 never delays it.
    jobs = [
        Job(arrival=0, gpus=1, duration=100, allowed_gpus=frozenset({0})),
        Job(arrival=0, gpus=2, duration=10, allowed_gpus=frozenset({0, 1})),
        Job(arrival=5, gpus=2, duration=500, allowed_gpus=frozenset({2, 3})),
        Job(arrival=5, gpus=1, duration=30, memory_mb=1000, exclusive=False),
        Job(arrival=5, gpus=1, duration=30, memory_mb=1000, exclusive=False),
    ]
    result = simulate(jobs, gpus=4, policy=BackfillPolicy(patience=0))
    assert [r.start for r in result.records] == [0, 100, 5, 110, 110]
    # The shared ones waited for the head (they could use its GPUs), then packed together.
    assert result.records[3].gpu_indices == result.records[4].gpu_indices


def test_max_parallel_slot_is_kept_for_the_head() -> None:
    # Two slots: J0 holds one, J1 (2 GPUs) waits for J0's GPU. J2 fits on a free GPU,
    # but would take the last slot past J1's reserved start: it must wait.
    jobs = [
        Job(arrival=0, gpus=2, duration=100, hint=100),
        Job(arrival=0, gpus=3, duration=10, hint=10),
        Job(arrival=0, gpus=1, duration=500, hint=500),
    ]
    result = simulate(jobs, gpus=3, policy=BackfillPolicy(), max_parallel=1)
    assert [r.start for r in result.records] == [0, 100, 110]
    jobs[2] = Job(arrival=0, gpus=1, duration=50, hint=50)
    result = simulate(jobs, gpus=4, policy=BackfillPolicy(), max_parallel=2)
    assert [r.start for r in result.records] == [0, 100, 0]


# ------------------------------------------------------------ core-level rules


def test_nowait_never_overtakes_a_head_it_would_delay() -> None:
    s = Scheduler(gpus(4), policy=BackfillPolicy())
    held = s.submit(make_request(2), 0).allocation
    head = s.submit(make_request(4), 0)
    assert held is not None
    assert head.allocation is None
    # A GPU is free, but a nowait request arrived after the head reached the front.
    with_no_hint = s.submit(make_request(1), 1, nowait=True)
    assert with_no_hint.allocation is None
    assert s.waiting == 1
    # The holder said nothing about its end, so no hint can prove it will not delay.
    hinted = s.submit(make_request(1, expected_duration=5), 1, nowait=True)
    assert hinted.allocation is None
    assert s.waiting == 1


def test_nowait_may_backfill_when_its_hint_proves_it_cannot_delay_the_head() -> None:
    s = Scheduler(gpus(4), policy=BackfillPolicy())
    held = s.submit(make_request(2, expected_duration=100), 0).allocation
    s.submit(make_request(4), 0)
    assert held is not None
    late = s.submit(make_request(1, expected_duration=200), 1, nowait=True)
    assert late.allocation is None
    quick = s.submit(make_request(1, expected_duration=50), 1, nowait=True)
    assert quick.allocation is not None
    assert s.release(quick.allocation, 51) == []
    outcomes = s.release(held, 100)
    assert [o.ticket for o in outcomes if isinstance(o, Grant)] == [2]


def test_front_info_reports_the_promise() -> None:
    policy = BackfillPolicy(patience=60)
    s = Scheduler(gpus(2), policy=policy)
    s.submit(make_request(1, expected_duration=30), 5)
    head = s.submit(make_request(2), 7)
    assert policy.front() is not None
    s.submit(make_request(1), 8)  # would fit: the policy plans the head's start
    front = policy.front()
    assert front is not None
    assert (front.ticket, front.reached_front_at, front.patience_ends_at) == (head.ticket, 7, 67)
    assert front.reserved_start == 35
    assert front.last_ticket_waiting == head.ticket


def test_a_newcomer_that_can_start_nothing_still_starts_its_patience_clock_as_head() -> None:
    """Joining a queue while every GPU is held changes no grant, and the core
    then skips the policy; but a newcomer of higher priority becomes the head,
    and its patience clock must start when it arrives, not at the next release."""
    policy = BackfillPolicy(patience=60)
    s = Scheduler(gpus(2), policy=policy)
    held = s.submit(make_request(2), 0).allocation
    assert held is not None
    first = s.submit(make_request(1), 1)
    same_priority = s.submit(make_request(1), 2)  # behind the head: nothing to decide
    front = policy.front()
    assert front is not None
    assert (front.ticket, front.reached_front_at) == (first.ticket, 1)
    urgent = s.submit(make_request(1, priority=5), 10)
    front = policy.front()
    assert front is not None
    assert (front.ticket, front.reached_front_at, front.patience_ends_at) == (urgent.ticket, 10, 70)
    outcomes = s.release(held, 20)
    granted = [o.ticket for o in outcomes if isinstance(o, Grant)]
    assert granted == [urgent.ticket, first.ticket]
    assert same_priority.ticket in [w.ticket for w in s.waiters()]


def test_identical_requests_stay_in_arrival_order() -> None:
    s = Scheduler(gpus(2), policy=BackfillPolicy())
    first = s.submit(make_request(2), 0).allocation
    assert first is not None
    tickets = [s.submit(make_request(1, expected_duration=d), 0).ticket for d in (9, 8, 7, 6)]
    order = [w.ticket for w in s.waiters()]
    assert order == tickets
    granted = [o.ticket for o in s.release(first, 10) if isinstance(o, Grant)]
    assert granted == tickets[:2]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"patience": -1}, ValueError, "patience must be None or a number of seconds >= 0, got -1"),
        ({"batch_window": "x"}, TypeError, "batch_window must be None or a number of seconds"),
        ({"depth": 0}, ValueError, "depth must be an int >= 1, got 0"),
    ],
)
def test_bad_knobs_are_refused(
    kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        BackfillPolicy(**kwargs)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_the_pool_picks_the_default_policy_and_repr() -> None:
    """The core takes the policy it is given (it has no default and does not import
    BackfillPolicy); the pool picks BackfillPolicy when the user does not."""
    async with GPUResourcePool(FakeGPUProvider(count=1)) as pool:
        assert pool._core is not None
        assert "BackfillPolicy" in repr(pool._core._policy)
    with pytest.raises(TypeError, match="policy"):
        Scheduler(gpus(1))  # type: ignore[call-arg]
    assert repr(BackfillPolicy(patience=None, batch_window=None, depth=None)) == (
        "BackfillPolicy(patience=None, batch_window=None, depth=None)"
    )
    assert repr(FifoPolicy()) == "FifoPolicy()"


# ------------------------------------------------------------ the async pool


MOCK_TRIO = [
    pytest.param(("trio", {"clock": MockClock(autojump_threshold=0)}), id="trio-mockclock")
]


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", MOCK_TRIO)
@pytest.mark.parametrize("policy", ["backfill", "greedy"])
async def test_pool_grants_a_4_gpu_request_inside_a_stream_of_1_gpu_jobs(policy: str) -> None:
    """The documented bound: a request at the front starts within ``patience`` plus
    the longest running job; since nobody who arrives after it may overtake it, here
    that is one job's length. Greedy, the control, starves it."""
    hold = 60.0
    chosen = BackfillPolicy() if policy == "backfill" else GreedyPolicy()
    # The default refresh_interval: a fake provider is asked on the event loop, so
    # autojump cannot run virtual time ahead while a snapshot is taken.
    pool = GPUResourcePool(FakeGPUProvider(count=4), policy=chosen)
    async with pool:
        stop = anyio.Event()

        async def stream(offset: float) -> None:
            await anyio.sleep(offset)
            while not stop.is_set():
                async with pool.allocation(1):
                    await anyio.sleep(hold)

        waited: list[float] = []
        async with anyio.create_task_group() as tg:
            for worker in range(6):  # more workers than GPUs: someone always waits
                tg.start_soon(stream, worker * 10.0)
            await anyio.sleep(125)
            asked = anyio.current_time()
            with anyio.move_on_after(1000):
                async with pool.allocation(4):
                    waited.append(anyio.current_time() - asked)
            stop.set()
        if policy == "greedy":
            assert waited == []
        else:
            assert len(waited) == 1
            # Two 1-GPU requests were queued ahead of it: they start first, then it.
            assert waited[0] <= 2 * hold


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", MOCK_TRIO)
async def test_pool_acquire_nowait_does_not_jump_a_blocked_head() -> None:
    async with GPUResourcePool(FakeGPUProvider(count=2)) as pool:
        first = await pool.acquire(1)
        async with anyio.create_task_group() as tg:
            tg.start_soon(pool.acquire, 2)
            await anyio.wait_all_tasks_blocked()
            with pytest.raises(WouldBlock):
                pool.acquire_nowait(1)
            await pool.release(first)
            await anyio.wait_all_tasks_blocked()
            assert pool.statistics().waiters == 0
            tg.cancel_scope.cancel()


# ------------------------------------------------------------ the core's state machine


#: How long the policies' state machines run: as long as each other.
MACHINE_SETTINGS = settings(
    max_examples=100,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


class BackfillMachine(SchedulerMachine):
    """The core's state machine (random submit / cancel / release / update /
    mark_unhealthy, nowait included) run under BackfillPolicy, with duration hints.

    Strict FIFO does not hold here by design; what does: no GPU over-committed,
    nothing leaked, every waiter eventually served (the parent's invariants and
    teardown), and identical requests in arrival order.
    """

    def __init__(self) -> None:
        super().__init__()
        self.core = Scheduler(
            [gpu(i) for i in range(GPU_COUNT)],
            max_parallel=3,
            policy=BackfillPolicy(patience=5, batch_window=3, depth=2),
        )

    def check_grant(self, grant: Grant, request: Resources) -> None:
        self.check_grant_fits(grant, request)
        for ticket, other in self.waiting.items():
            same = other == request
            assert not (same and ticket < grant.ticket), (
                f"ticket {grant.ticket} overtook the identical waiting ticket {ticket}"
            )

    @rule(
        kwargs=st.one_of(
            request_kwargs(GPU_COUNT, memory_mb=MB, max_priority=1),
            # A few shapes, often repeated: queues of identical requests.
            st.fixed_dictionaries(
                {"required_gpus": st.integers(1, 2), "priority": st.integers(0, 1)}
            ),
        ),
        hint=st.sampled_from([None, 2.0, 20.0]),
        nowait=st.booleans(),
    )
    def submit_with_hint(self, kwargs: dict[str, Any], hint: float | None, nowait: bool) -> None:
        self.submit_request(make_request(expected_duration=hint, **kwargs), nowait)


BackfillMachine.TestCase.settings = MACHINE_SETTINGS
TestBackfillMachine = BackfillMachine.TestCase


def test_unhealthy_gpu_drops_out_of_the_heads_plan() -> None:
    # 4 GPUs, GPU 3 unhealthy: the 3-GPU head waits for GPUs 0-2. A 1-GPU request with a
    # long hint may not take GPU 2 (free now, needed at t=50) but nothing else is free.
    s = Scheduler(gpus(4), policy=BackfillPolicy(patience=0))
    s.mark_unhealthy(3, 0)
    held = s.submit(make_request(2, expected_duration=50), 0).allocation
    assert held is not None
    head = s.submit(make_request(3), 0)
    late = s.submit(make_request(1, expected_duration=500), 1)
    assert s.waiting == 2
    quick = s.submit(make_request(1, expected_duration=40), 2)
    assert quick.allocation is not None
    assert quick.allocation.gpu_indices == (2,)
    assert s.release(quick.allocation, 42) == []
    granted = [o.ticket for o in s.release(held, 50) if isinstance(o, Grant)]
    assert granted == [head.ticket]
    # GPU 3 healthy again: the late request, now at the front, gets it.
    outcomes = s.mark_healthy(3, 51)
    assert [o.ticket for o in outcomes if isinstance(o, Grant)] == [late.ticket]


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", MOCK_TRIO)
async def test_pool_passes_hints_through_to_backfilling() -> None:
    async with GPUResourcePool(FakeGPUProvider(count=2)) as pool:
        start = anyio.current_time()
        first = await pool.acquire(1, expected_duration=100)
        granted: list[float] = []

        async def head() -> None:
            allocation = await pool.acquire(2, expected_duration=10)
            granted.append(anyio.current_time() - start)
            await pool.release(allocation)

        async with anyio.create_task_group() as tg:
            tg.start_soon(head)
            await anyio.wait_all_tasks_blocked()
            # The 2-GPU head may start at t=100: a 1-GPU job that says 500 s would delay
            # it, one that says 50 s would not.
            with pytest.raises(WouldBlock):
                pool.acquire_nowait(1, expected_duration=500)
            quick = pool.acquire_nowait(1, expected_duration=50)
            await anyio.sleep(50)
            await pool.release(quick)
            await anyio.sleep(50)
            await pool.release(first)
        assert granted == [pytest.approx(100)]


# ------------------------------------------------------------ a custom policy and scorer


def _service_key(request: Resources, ticket: int) -> tuple[int, float, int]:
    """ShortestFirstPolicy's order, restated independently of its code."""
    hint = request.expected_duration
    return (-request.priority, float("inf") if hint is None else hint, ticket)


def test_the_example_policy_serves_shortest_expected_duration_first() -> None:
    s = Scheduler(gpus(1), policy=ShortestFirstPolicy(), scorer=coolest_first)
    held = s.submit(make_request(1), 0).allocation
    assert held is not None
    hints = {"none": None, "long": 30.0, "short": 10.0, "middle": 20.0, "short-again": 10.0}
    tickets = {
        name: s.submit(make_request(1, expected_duration=hint), 1).ticket
        for name, hint in hints.items()
    }
    urgent = s.submit(make_request(1, priority=1, expected_duration=100.0), 2).ticket
    assert [w.ticket for w in s.waiters()] == [
        urgent,
        *(tickets[n] for n in ["short", "short-again", "middle", "long", "none"]),
    ]
    served = []
    allocation = held
    for now in range(3, 9):
        (grant,) = s.release(allocation, now)
        assert isinstance(grant, Grant)
        served.append(grant.ticket)
        allocation = grant.allocation
    assert served == [
        urgent,
        *(tickets[n] for n in ["short", "short-again", "middle", "long", "none"]),
    ]
    assert s.release(allocation, 9) == []
    assert s.statistics().gpus[0].memory_reserved_mb == 0


def test_the_example_scorer_prefers_the_least_busy_gpu() -> None:
    snapshot = [gpu(0, utilization=80.0), gpu(1, utilization=None), gpu(2, utilization=20.0)]
    s = Scheduler(snapshot, policy=ShortestFirstPolicy(), scorer=coolest_first)
    order = []
    for now in range(3):
        allocation = s.submit(make_request(1), now).allocation
        assert allocation is not None
        order.append(allocation.gpu_indices)
    assert order == [(2,), (1,), (0,)]


def test_the_documented_example_is_the_tested_one() -> None:
    """docs/policies.md shows tests/example_policy.py verbatim."""
    root = Path(__file__).resolve().parents[1]
    docs = (root / "docs" / "policies.md").read_text()
    source = (root / "tests" / "example_policy.py").read_text()
    assert f"```python\n{source}```" in docs


class _KeepsTheView:
    """A faulty policy: it keeps the view of one pass and grants through it later."""

    def __init__(self) -> None:
        self.queue = FifoPolicy()
        self.view: SchedulerView | None = None

    def push(self, waiter: Waiter) -> None:
        self.queue.push(waiter)

    def remove(self, waiter: Waiter) -> None:
        self.queue.remove(waiter)

    def schedule(self, view: SchedulerView, now: float) -> None:
        if self.view is None:
            self.view = view
        self.queue.schedule(self.view, now)

    def __iter__(self) -> Iterator[Waiter]:
        return iter(self.queue)

    def __len__(self) -> int:
        return len(self.queue)


def test_a_view_kept_past_its_pass_refuses_to_grant() -> None:
    """Decisions are returned by the call whose pass made them; a grant through an
    old view would reach nobody (and leak its GPUs), so it is refused."""
    policy = _KeepsTheView()
    s = Scheduler(gpus(1), policy=policy)
    held = s.submit(make_request(1), 0).allocation
    assert held is not None
    s.submit(make_request(1), 1)  # joins the queue: a pass that grants nothing
    before = s.statistics()
    with pytest.raises(RuntimeError, match="scheduling pass that has ended"):
        s.release(held, 2)
    assert s.statistics().waiters == before.waiters == 1


class ShortestFirstMachine(SchedulerMachine):
    """The core's state machine run under the example policy and scorer, with hints:
    no GPU over-committed, nothing leaked, every waiter served (the parent's
    invariants and teardown), and nobody overtaken in the policy's own order."""

    def __init__(self) -> None:
        super().__init__()
        self.core = Scheduler(
            [gpu(i) for i in range(GPU_COUNT)],
            max_parallel=3,
            policy=ShortestFirstPolicy(),
            scorer=coolest_first,
        )

    def check_grant(self, grant: Grant, request: Resources) -> None:
        self.check_grant_fits(grant, request)
        mine = _service_key(request, grant.ticket)
        for ticket, other in self.waiting.items():
            if ticket != grant.ticket:
                assert _service_key(other, ticket) > mine, (
                    f"ticket {grant.ticket} overtook waiting ticket {ticket}"
                )

    @rule(
        kwargs=request_kwargs(GPU_COUNT, memory_mb=MB, max_priority=1),
        hint=st.sampled_from([None, 1.0, 2.0, 20.0]),
        nowait=st.booleans(),
    )
    def submit_with_hint(self, kwargs: dict[str, Any], hint: float | None, nowait: bool) -> None:
        self.submit_request(make_request(expected_duration=hint, **kwargs), nowait)


ShortestFirstMachine.TestCase.settings = MACHINE_SETTINGS
TestShortestFirstMachine = ShortestFirstMachine.TestCase


@pytest.mark.anyio
async def test_the_pool_runs_the_example_policy() -> None:
    async with GPUResourcePool(
        FakeGPUProvider(count=1), policy=ShortestFirstPolicy(), scorer=coolest_first
    ) as pool:
        held = await pool.acquire(1)
        served: list[float] = []

        async def job(hint: float) -> None:
            async with pool.allocation(1, expected_duration=hint):
                served.append(hint)

        async with anyio.create_task_group() as tg:
            for hint in (30.0, 10.0, 20.0):
                tg.start_soon(job, hint)
                await anyio.wait_all_tasks_blocked()
            await pool.release(held)
        assert served == [10.0, 20.0, 30.0]


class _ForgetsToRemove(_KeepsTheView):
    """A faulty policy: it tries its head but never drops the waiters it granted."""

    def schedule(self, view: SchedulerView, now: float) -> None:
        head = self.queue.head()
        if head is not None:
            view.try_grant(head)


def test_a_waiter_granted_twice_is_refused() -> None:
    """A policy that keeps a granted waiter in its queue would hand it a second grant
    (and leak the first); the core refuses the second try instead."""
    policy = _ForgetsToRemove()
    s = Scheduler(gpus(2), policy=policy)
    held = s.submit(make_request(2), 0).allocation
    assert held is not None
    waiting = s.submit(make_request(1), 1)
    s.submit(make_request(2), 1)
    (grant,) = s.release(held, 2)
    assert isinstance(grant, Grant)
    assert grant.ticket == waiting.ticket
    with pytest.raises(RuntimeError, match=f"waiter {waiting.ticket}, which no longer waits"):
        s.release(grant.allocation, 3)
    assert s.statistics().waiters == 1
