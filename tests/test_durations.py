"""Durations learned from history: the pure estimator, and what the policy does with estimates.

The estimator (``gpupool._core.durations``) against a reference model; the
request's two durations (a user's hint, the system's estimate); and the
backfill policy in the simulator: estimates pack like hints while the head
is patient, and estimates that are too short never delay the head past the
documented bound (docs/scheduling.md, "Durations learned from history").
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Hashable

import attrs
import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from gpupool import BackfillPolicy, Resources
from gpupool._core.durations import DEFAULT_RECENT, DurationEstimator, task_shape
from gpupool._core.request import planned_duration, with_estimate
from gpupool.sim import Job, simulate

from .strategies import gpus

# ------------------------------------------------------------ the estimator

keys = st.sampled_from(["a", "b", "c"])
shapes = st.sampled_from([("f", 1), ("f", 2), ("g", 1)])
seconds = st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(
    history=st.dictionaries(keys, st.lists(seconds, max_size=4), max_size=3),
    observed=st.lists(st.tuples(keys, shapes, seconds), max_size=12),
    recent=st.integers(1, 4),
    asked=st.tuples(st.sampled_from(["a", "b", "c", "new"]), shapes),
)
def test_the_estimate_is_the_mean_of_the_latest_samples_of_the_key_else_of_the_shape(
    history: dict[str, list[float]],
    observed: list[tuple[str, Hashable, float]],
    recent: int,
    asked: tuple[str, Hashable],
) -> None:
    estimator = DurationEstimator(history, recent=recent)
    by_key = {key: list(values) for key, values in history.items()}
    by_shape: dict[Hashable, list[float]] = {}
    for key, shape, duration in observed:
        estimator.observe(key, shape, duration)
        by_key.setdefault(key, []).append(duration)
        by_shape.setdefault(shape, []).append(duration)
    key, shape = asked
    samples = by_key.get(key) or by_shape.get(shape)
    got = estimator.estimate(key, shape)
    if not samples:
        assert got is None
    else:
        expected = max(statistics.fmean(samples[-recent:]), 1e-3)
        assert got == pytest.approx(expected, rel=1e-9)
        assert got is not None
        assert 0 < got < math.inf


def test_tsafrir_default_averages_the_last_two() -> None:
    estimator = DurationEstimator({"k": [1000.0, 10.0, 30.0]})
    assert DEFAULT_RECENT == estimator.recent == 2
    assert estimator.estimate("k", "any shape") == 20.0
    estimator.observe("k", "s", 50.0)  # this run's own attempt is the latest sample
    assert estimator.estimate("k", "s") == 40.0


def test_a_known_key_wins_over_its_shape_and_an_unknown_one_falls_back() -> None:
    estimator = DurationEstimator({"seen": [100.0]})
    shape = task_shape("mod.train", Resources(2))
    estimator.observe("other", shape, 10.0)
    assert estimator.estimate("seen", shape) == 100.0
    assert estimator.estimate("unseen", shape) == 10.0
    assert estimator.estimate("unseen", task_shape("mod.train", Resources(1))) is None
    assert estimator.known_keys() == 2


def test_instant_tasks_give_the_smallest_estimate_not_zero() -> None:
    estimator = DurationEstimator({"k": [0.0]})
    estimate = estimator.estimate("k", None)
    assert estimate is not None
    assert estimate > 0
    Resources(estimated_duration=estimate)  # a valid estimate for a request


def test_the_shape_is_the_function_and_what_the_request_needs() -> None:
    base = Resources(2, min_memory_mb=1000)
    same = Resources(2, min_memory_mb=1000, priority=5, expected_duration=60)
    assert task_shape("f", base) == task_shape("f", same)
    assert task_shape("f", base) != task_shape("g", base)
    assert task_shape("f", base) != task_shape("f", Resources(2, min_memory_mb=2000))
    assert task_shape("f", base) != task_shape("f", Resources(2, allowed_gpus=[0, 1]))


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: DurationEstimator(recent=0), ValueError, "recent must be an int >= 1"),
        (lambda: DurationEstimator(recent=1.5), TypeError, "recent"),  # type: ignore[arg-type]
        (lambda: DurationEstimator([1.0]), TypeError, "history must be a mapping"),  # type: ignore[arg-type]
        (lambda: DurationEstimator({1: [1.0]}), TypeError, "history keys must be"),  # type: ignore[dict-item]
        (lambda: DurationEstimator({"k": 5.0}), TypeError, r"history\['k'\] must be an iterable"),  # type: ignore[dict-item]
        (lambda: DurationEstimator({"k": [-1.0]}), ValueError, r"history\['k'\] entry"),
        (lambda: DurationEstimator({"k": [math.nan]}), ValueError, r"history\['k'\] entry"),
        (lambda: DurationEstimator({"k": ["1"]}), TypeError, r"history\['k'\] entry"),  # type: ignore[list-item]
        (lambda: DurationEstimator().observe("k", "s", math.inf), ValueError, "duration must be"),
    ],
)
def test_bad_input_is_refused(call: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        call()  # type: ignore[operator]


# ------------------------------------------------------------ the request's two durations


def test_the_users_hint_wins_over_an_estimate_and_estimates_can_be_ignored() -> None:
    both = Resources(expected_duration=60, estimated_duration=5)
    estimated = Resources(estimated_duration=5)
    assert planned_duration(both) == planned_duration(both, estimates=False) == 60
    assert planned_duration(estimated) == 5
    assert planned_duration(estimated, estimates=False) is None
    assert planned_duration(Resources()) is None
    assert estimated != Resources()  # the estimate is part of the value


@pytest.mark.parametrize(
    ("value", "error"),
    [(0, ValueError), (-1, ValueError), (math.inf, ValueError), ("5", TypeError)],
)
def test_an_estimate_is_checked_like_a_hint(value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="estimated_duration"):
        Resources(estimated_duration=value)  # type: ignore[arg-type]


# ------------------------------------------------------------ the policy with estimates


def _backfill_case(**head_and_small: float | None) -> list[Job]:
    """A 4-GPU head behind a 2-GPU job of 100 s, and a 1-GPU job of 30 s that could
    finish before the head can start, with the given hints and estimates."""
    return [
        Job(arrival=0, gpus=2, duration=100, **_durations(head_and_small, "holder")),
        Job(arrival=1, gpus=4, duration=10),
        Job(arrival=2, gpus=1, duration=30, **_durations(head_and_small, "small")),
    ]


def _durations(given: dict[str, float | None], who: str) -> dict[str, float | None]:
    return {
        "hint": given.get(f"{who}_hint"),
        "estimate": given.get(f"{who}_estimate"),
    }


def test_an_estimate_backfills_like_a_hint_while_the_head_is_patient() -> None:
    """The 1-GPU job arrived after the head reached the front (not a batch-mate), so
    only rule 1 lets it start early: by the hints, or by the estimates alike."""
    policy = BackfillPolicy(batch_window=0)
    by_hints = simulate(_backfill_case(holder_hint=100, small_hint=30), gpus=4, policy=policy)
    by_estimates = simulate(
        _backfill_case(holder_estimate=100, small_estimate=30),
        gpus=4,
        policy=BackfillPolicy(batch_window=0),
    )
    neither = simulate(_backfill_case(), gpus=4, policy=BackfillPolicy(batch_window=0))
    assert [r.start for r in by_hints.records] == [0, 100, 2]
    assert [r.start for r in by_estimates.records] == [0, 100, 2]
    assert by_estimates.records[1].reserved_start == 100
    assert [r.start for r in neither.records] == [0, 100, 110]  # strict order


def test_once_the_heads_patience_is_spent_estimates_no_longer_count() -> None:
    """The same case with patience 0: a user's hints still backfill, estimates do not."""
    by_hints = simulate(
        _backfill_case(holder_hint=100, small_hint=30),
        gpus=4,
        policy=BackfillPolicy(patience=0, batch_window=0),
    )
    by_estimates = simulate(
        _backfill_case(holder_estimate=100, small_estimate=30),
        gpus=4,
        policy=BackfillPolicy(patience=0, batch_window=0),
    )
    assert [r.start for r in by_hints.records] == [0, 100, 2]
    assert [r.start for r in by_estimates.records] == [0, 100, 110]


def test_an_estimate_cannot_overtake_a_head_whose_patience_is_spent() -> None:
    """Regression (found by the property below when estimates were trusted for good):
    the 3-GPU head is at the front from 0 with patience 0. At t=1, as the 1-GPU jobs
    end one by one, the 2-GPU job's estimate (2 s) looks as if it ended before the
    head's reserved start (6 s, by job 0's estimate, which is too long): admitted,
    it delayed the head to 3, past patience plus the longest job (2)."""
    jobs = [
        Job(arrival=0, gpus=1, duration=2, estimate=6),
        Job(arrival=0, gpus=1, duration=1),
        Job(arrival=0, gpus=1, duration=1),
        Job(arrival=0, gpus=1, duration=1),
        Job(arrival=10, gpus=1, duration=1),
        Job(arrival=0, gpus=3, duration=1),
        Job(arrival=0, gpus=2, duration=2, estimate=2),
    ]
    result = simulate(jobs, gpus=4, policy=BackfillPolicy(patience=0, batch_window=0))
    head = result.records[5]
    assert head.reached_front_at == 0
    assert head.start == 1  # when GPUs 1-3 are free: the estimated job waits
    assert result.records[6].start >= head.end


def test_an_outlived_estimate_is_extended_an_outlived_hint_is_not() -> None:
    """Job A says (or is estimated) 10 s and runs 100 s. At t=20 it has outlived that:
    an estimate is doubled until it lies ahead (40), so the head still has a reserved
    start and a short newcomer backfills; an outlived hint leaves the end unknown, and
    the newcomer (not a batch-mate) waits behind the head."""

    def trace(**a_duration: float) -> list[Job]:
        return [
            Job(arrival=0, gpus=1, duration=100, **a_duration),
            Job(arrival=1, gpus=2, duration=10),
            Job(arrival=20, gpus=1, duration=5, estimate=5),
        ]

    estimated = simulate(trace(estimate=10), gpus=2, policy=BackfillPolicy(batch_window=0))
    hinted = simulate(trace(hint=10), gpus=2, policy=BackfillPolicy(batch_window=0))
    assert estimated.records[2].start == 20
    assert hinted.records[2].start == hinted.records[1].end == 110


@st.composite
def estimated_traces(draw: st.DrawFn) -> list[Job]:
    """Random traces on 4 GPUs whose jobs give no hint, but estimates that may be right,
    too short or too long."""
    jobs = []
    for _ in range(draw(st.integers(1, 25))):
        duration = float(draw(st.integers(1, 100)))
        estimate = draw(st.sampled_from([None, duration, duration / 10, duration * 3, 1.0]))
        jobs.append(
            Job(
                arrival=float(draw(st.integers(0, 10)) * 10),
                gpus=draw(st.sampled_from([1, 1, 2, 3, 4])),
                duration=duration,
                estimate=estimate,
            )
        )
    return jobs


@settings(max_examples=200, deadline=None)
@given(
    jobs=estimated_traces(),
    patience=st.sampled_from([0.0, 20.0, 100.0]),
    window=st.sampled_from([0.0, 30.0, None]),
)
def test_wrong_estimates_keep_the_documented_bound(
    jobs: list[Job], patience: float, window: float | None
) -> None:
    """docs/scheduling.md: a request at the front starts within ``patience`` plus the
    longest job, whatever the estimates (only users' hints must hold, and there are none)."""
    result = simulate(
        jobs, gpus=gpus(4), policy=BackfillPolicy(patience=patience, batch_window=window)
    )
    longest = max(j.duration for j in jobs)
    for record in result.records:
        if record.reached_front_at is not None:
            assert record.start <= record.reached_front_at + patience + longest


@given(
    request=st.builds(
        Resources,
        required_gpus=st.integers(0, 4),
        min_memory_mb=st.integers(1, 10_000),
        exclusive=st.just(True),
        priority=st.integers(-2, 2),
        expected_duration=st.none() | st.floats(1, 1e4),
    ),
    seconds=st.floats(1e-3, 1e6),
)
def test_with_estimate_is_evolve_with_only_the_estimate_checked(
    request: Resources, seconds: float
) -> None:
    made = with_estimate(request, seconds)
    assert made == attrs.evolve(request, estimated_duration=seconds)
    assert hash(made) == hash(attrs.evolve(request, estimated_duration=seconds))
    with pytest.raises(ValueError, match="estimated_duration"):
        with_estimate(request, 0)
