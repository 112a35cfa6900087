"""The simulator's own API, and Hypothesis properties of the policies over random traces."""

from __future__ import annotations

import math
from collections import defaultdict

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from gpupool import BackfillPolicy, FifoPolicy, UnsatisfiableRequest
from gpupool._core.request import make_request
from gpupool._core.scheduler import Scheduler
from gpupool.sim import GreedyPolicy, Job, SimResult, lower_bound, simulate

from .strategies import MB, gpus

GPU_COUNT = 4

# ------------------------------------------------------------ the API


def test_metrics_of_a_small_trace() -> None:
    jobs = [
        Job(arrival=0, gpus=2, duration=10),
        Job(arrival=0, gpus=2, duration=30),
        Job(arrival=5, gpus=4, duration=10),
        Job(arrival=5, gpus=1, duration=4),
    ]
    result = simulate(jobs, gpus=4, policy=FifoPolicy())
    assert [r.start for r in result.records] == [0, 0, 30, 40]
    assert [r.end for r in result.records] == [10, 30, 40, 44]
    assert result.makespan == 44
    assert result.lower_bound == (20 + 60 + 40 + 4) / 4 == 31
    assert result.ratio == pytest.approx(44 / 31)
    assert result.utilization == pytest.approx(124 / (4 * 44))
    assert result.sizes == (1, 2, 4)
    assert (result.wait(2).median, result.wait(2).max) == (0, 0)
    assert (result.wait(4).median, result.wait(4).p95, result.wait(4).count) == (25, 25, 1)
    assert result.wait(1).max == 35
    assert result.decisions == 8  # four submits, four releases
    with pytest.raises(KeyError, match="no job of 8 GPU"):
        result.wait(8)


def test_lower_bound_is_the_work_or_the_longest_job() -> None:
    assert lower_bound([], 4) == 0
    assert lower_bound([Job(arrival=10, duration=100), Job(arrival=0, duration=1)], 4) == 110
    assert lower_bound([Job(arrival=0, gpus=4, duration=10)] * 3, 4) == 30


def test_empty_trace() -> None:
    result = simulate([], gpus=2)
    assert (result.makespan, result.ratio, result.waits, result.records) == (0, 1.0, (), ())


def test_default_policy_is_backfill_and_gpu_snapshots_are_accepted() -> None:
    jobs = [
        Job(arrival=0, gpus=1, duration=10, memory_mb=MB // 2, exclusive=False),
        Job(arrival=0, gpus=1, duration=10, memory_mb=MB // 2, exclusive=False),
    ]
    result = simulate(jobs, gpus=gpus(1))
    assert [r.start for r in result.records] == [0, 0]


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: simulate([], gpus=0), ValueError, "gpus must be an int >= 1"),
        (lambda: simulate([], gpus=True), TypeError, "gpus must be an int >= 1"),  # type: ignore[arg-type]
        (lambda: simulate([(0, 1)]), TypeError, "must be gpupool.sim.Job"),  # type: ignore[list-item]
        (lambda: Job(arrival=-1, duration=1), ValueError, "arrival must be a finite number >= 0"),
        (lambda: Job(arrival=0, duration=math.nan), ValueError, "duration must be a finite"),
        (lambda: Job(arrival=0, duration=1, gpus=0), ValueError, "gpus must be an int >= 1"),
        (
            lambda: simulate([Job(arrival=0, duration=1, gpus=5)], gpus=4),
            UnsatisfiableRequest,
            "required_gpus=5",
        ),
        (
            lambda: simulate([Job(arrival=0, duration=1, hint=-1)]),
            ValueError,
            "expected_duration must be None or a finite number of seconds > 0",
        ),
    ],
)
def test_bad_input_is_refused(call: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        call()  # type: ignore[operator]


def test_a_policy_that_still_holds_waiters_is_refused() -> None:
    policy = BackfillPolicy()
    core = Scheduler(gpus(1), policy=policy)
    core.submit(make_request(1), 0)
    core.submit(make_request(1), 0)
    with pytest.raises(ValueError, match="fresh policy"):
        simulate([Job(arrival=0, duration=1)], gpus=1, policy=policy)


# ------------------------------------------------------------ properties


@st.composite
def traces(draw: st.DrawFn, *, hints: str, priorities: bool = False) -> list[Job]:
    """Random traces on 4 GPUs; arrivals on a coarse grid so that many coincide."""
    count = draw(st.integers(1, 25))
    jobs = []
    for _ in range(count):
        duration = float(draw(st.integers(1, 100)))
        mode = hints if hints != "mixed" else draw(st.sampled_from(["exact", "none"]))
        shared = draw(st.booleans()) and draw(st.booleans())
        size = 1 if shared else draw(st.sampled_from([1, 1, 2, 3, 4]))
        pinned = size <= 3 and not shared and draw(st.integers(0, 3)) == 0
        jobs.append(
            Job(
                arrival=float(draw(st.integers(0, 10)) * 10),
                gpus=size,
                duration=duration,
                memory_mb=draw(st.sampled_from([MB // 3, MB // 2])) if shared else 0,
                exclusive=not shared,
                hint=duration if mode == "exact" else None,
                priority=draw(st.integers(0, 1)) if priorities else 0,
                allowed_gpus=frozenset({0, 1, 2}) if pinned else None,
            )
        )
    return jobs


policies = st.one_of(
    st.builds(
        BackfillPolicy,
        patience=st.sampled_from([0.0, 25.0, 150.0, None]),
        batch_window=st.sampled_from([0.0, 30.0, None]),
        depth=st.sampled_from([1, 2, None]),
    ),
    st.builds(FifoPolicy),
    st.builds(GreedyPolicy),
)


def assert_never_overcommitted(result: SimResult) -> None:
    events: dict[int, list[tuple[float, int, int, bool]]] = defaultdict(list)
    for r in result.records:
        for gpu in r.gpu_indices:
            # At equal times, ends (0) before starts (1): a GPU freed at t is free at t.
            events[gpu].append((r.end, 0, r.job.memory_mb, r.job.exclusive))
            events[gpu].append((r.start, 1, r.job.memory_mb, r.job.exclusive))
    for gpu, timeline in events.items():
        exclusive = shared = memory = 0
        for _, starting, mb, is_exclusive in sorted(timeline):
            step = 1 if starting else -1
            if is_exclusive:
                exclusive += step
            else:
                shared += step
                memory += step * mb
            assert exclusive <= 1, f"GPU {gpu} held exclusively twice"
            assert not (exclusive and shared), f"GPU {gpu} exclusive and shared at once"
            assert memory <= MB, f"GPU {gpu} over-committed: {memory} MB reserved"


@settings(max_examples=150, deadline=None)
@given(jobs=traces(hints="mixed", priorities=True), policy=policies)
def test_no_policy_over_commits_and_every_job_starts(
    jobs: list[Job], policy: BackfillPolicy
) -> None:
    result = simulate(jobs, gpus=gpus(GPU_COUNT), policy=policy)
    assert len(result.records) == len(jobs)
    for record, job in zip(result.records, jobs, strict=True):
        assert record.start >= job.arrival
        assert len(record.gpu_indices) == job.gpus
        if job.allowed_gpus is not None:
            assert set(record.gpu_indices) <= job.allowed_gpus
    assert_never_overcommitted(result)
    if all(job.exclusive for job in jobs):  # shared jobs pack, beating a whole-GPU bound
        assert result.makespan >= result.lower_bound


@settings(max_examples=200, deadline=None)
@given(
    jobs=traces(hints="mixed"),
    patience=st.sampled_from([0.0, 20.0, 100.0]),
    window=st.sampled_from([0.0, 30.0, None]),
)
def test_a_job_at_the_front_starts_within_the_documented_bound(
    jobs: list[Job], patience: float, window: float | None
) -> None:
    """docs/scheduling.md: once at the front, a request starts within ``patience`` plus
    the longest job (hints, where given, are exact)."""
    policy = BackfillPolicy(patience=patience, batch_window=window)
    result = simulate(jobs, gpus=gpus(GPU_COUNT), policy=policy)
    longest = max(j.duration for j in jobs)
    for record in result.records:
        if record.reached_front_at is not None:
            assert record.start <= record.reached_front_at + patience + longest


@settings(max_examples=200, deadline=None)
@given(jobs=traces(hints="exact"))
def test_with_exact_hints_the_reserved_start_is_never_delayed(jobs: list[Job]) -> None:
    result = simulate(jobs, gpus=gpus(GPU_COUNT), policy=BackfillPolicy())
    for record in result.records:
        if record.reserved_start is not None:
            assert record.start <= record.reserved_start


@settings(max_examples=100, deadline=None)
@given(jobs=traces(hints="exact"))
def test_identical_requests_start_in_arrival_order(jobs: list[Job]) -> None:
    result = simulate(jobs, gpus=gpus(GPU_COUNT), policy=BackfillPolicy())
    by_shape: dict[object, list[float]] = defaultdict(list)
    for record in sorted(result.records, key=lambda r: (r.job.arrival, r.index)):
        job = record.job
        shape = (job.gpus, job.memory_mb, job.exclusive, job.allowed_gpus, job.duration)
        by_shape[shape].append(record.start)
    for starts in by_shape.values():
        assert starts == sorted(starts)


def test_a_policy_reused_after_a_finished_run_behaves_like_a_fresh_one() -> None:
    jobs = [
        Job(arrival=0, gpus=2, duration=100),
        Job(arrival=0, gpus=4, duration=50),
        Job(arrival=0, gpus=2, duration=100),
        Job(arrival=0, gpus=1, duration=100),
    ]
    policy = BackfillPolicy()
    first = simulate(jobs * 3, gpus=4, policy=policy)
    again = simulate(jobs, gpus=4, policy=policy)
    fresh = simulate(jobs, gpus=4, policy=BackfillPolicy())
    assert len(first.records) == 12
    assert [r.start for r in again.records] == [r.start for r in fresh.records]
