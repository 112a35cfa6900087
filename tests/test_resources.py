"""One request value, ``gpupool.Resources``: validated once, taken by every entry point.

The keyword forms (``pool.acquire(required_gpus=2, ...)``, ``runner.map(...,
required_gpus=2)``) are spellings of the value: the scheduler sees the same
request either way, and the same bad input raises the same exception from
the pool and from the runner. ``expected_duration``, the hint rule 1 of
``BackfillPolicy`` uses, reaches the scheduler from the runner (a number or
a function of the item) and from the jobs file (``[est=2h]``).
"""

from __future__ import annotations

import math
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from gpupool import (
    FakeGPUProvider,
    GPUAllocation,
    GPUResourcePool,
    ParallelRunner,
    Resources,
    TaskStatus,
    UnsatisfiableRequest,
)
from gpupool._cli.jobs_file import JobsFileError, parse_jobs
from gpupool._cli.main import main as cli_main
from gpupool._core.scheduler import Scheduler

pytestmark = pytest.mark.anyio

HUGE = 10**400


@pytest.fixture
async def pool() -> AsyncIterator[GPUResourcePool]:
    async with GPUResourcePool(FakeGPUProvider(count=4, memory_mb=16_000)) as opened:
        yield opened


@pytest.fixture
def asked(monkeypatch: pytest.MonkeyPatch) -> tuple[list[Resources], list[str | None]]:
    """Every request the scheduler is asked to grant, in order (the pool tries
    ``grant_at_once`` first, then ``submit``, which tries it again), and the
    experiment id its allocation was to carry."""
    seen: list[Resources] = []
    labels: list[str | None] = []
    grant_at_once = Scheduler.grant_at_once

    def spy(
        self: Scheduler, request: Resources, now: float, experiment_id: str | None = None
    ) -> GPUAllocation | None:
        seen.append(request)
        labels.append(experiment_id)
        return grant_at_once(self, request, now, experiment_id)

    monkeypatch.setattr(Scheduler, "grant_at_once", spy)
    return seen, labels


@pytest.fixture
def requests_seen(asked: tuple[list[Resources], list[str | None]]) -> list[Resources]:
    return asked[0]


@pytest.fixture
def labels_seen(asked: tuple[list[Resources], list[str | None]]) -> list[str | None]:
    return asked[1]


# ---------------------------------------------------------------- the value


def test_resources_defaults_and_normal_form() -> None:
    assert Resources() == Resources(
        required_gpus=1,
        min_memory_mb=0,
        exclusive=True,
        priority=0,
        allowed_gpus=None,
        expected_duration=None,
    )
    shaped = Resources(2, min_memory_mb=1000.2, allowed_gpus=[3, 1], expected_duration=60)
    assert shaped.min_memory_mb == 1001  # one type: whole MB, rounded up
    assert shaped.allowed_gpus == frozenset({1, 3})
    assert shaped.expected_duration == 60.0
    assert Resources(0).required_gpus == 0  # a CPU-only runner task
    assert Resources(0, exclusive=False).exclusive is False  # no GPU, nothing to share


def test_resources_is_frozen_and_hashable() -> None:
    request = Resources(2, min_memory_mb=100)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        request.required_gpus = 3  # type: ignore[misc]
    assert {request, Resources(2, min_memory_mb=100)} == {request}
    assert attrs.evolve(request, priority=2).priority == 2


BAD_RESOURCES: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"required_gpus": -1}, ValueError, "required_gpus must be an int >= 0, got -1"),
    ({"required_gpus": 1.0}, TypeError, "required_gpus must be an int >= 0, got 1.0"),
    ({"required_gpus": True}, TypeError, "required_gpus must be an int >= 0, got True"),
    ({"required_gpus": "2"}, TypeError, "required_gpus must be an int >= 0, got '2'"),
    ({"min_memory_mb": -1}, ValueError, "min_memory_mb must be a finite number >= 0, got -1"),
    ({"min_memory_mb": math.nan}, ValueError, "min_memory_mb must be a finite number >= 0"),
    ({"min_memory_mb": "8G"}, TypeError, "min_memory_mb must be a finite number >= 0, got '8G'"),
    ({"min_memory_mb": HUGE}, ValueError, "got 1.000e+400 (an int too large for a float)"),
    ({"exclusive": "no"}, TypeError, "exclusive must be True or False, got 'no'"),
    ({"exclusive": False}, ValueError, "exclusive=False needs min_memory_mb > 0"),
    ({"priority": 1.5}, TypeError, "priority must be an int, got 1.5"),
    ({"allowed_gpus": "01"}, TypeError, "allowed_gpus must be None or a collection"),
    ({"allowed_gpus": [0, "1"]}, TypeError, "allowed_gpus entry must be an int >= 0, got '1'"),
    ({"allowed_gpus": [-1]}, ValueError, "allowed_gpus entry must be an int >= 0, got -1"),
    ({"allowed_gpus": []}, UnsatisfiableRequest, "allowed_gpus is empty"),
    ({"required_gpus": 2, "allowed_gpus": [0]}, UnsatisfiableRequest, "names only 1 GPU(s)"),
    (
        {"expected_duration": 0},
        ValueError,
        "expected_duration must be None or a finite number of seconds > 0, got 0",
    ),
    ({"expected_duration": math.inf}, ValueError, "expected_duration must be None or a finite"),
    ({"expected_duration": "1h"}, TypeError, "expected_duration must be None or a finite"),
]


@pytest.mark.parametrize(("kwargs", "error", "message"), BAD_RESOURCES)
def test_resources_are_validated_when_made(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=re.escape(message)):
        Resources(**kwargs)


# ---------------------------------------------------------------- every entry point


async def test_the_pool_takes_the_value_at_every_entry_point(
    pool: GPUResourcePool, requests_seen: list[Resources]
) -> None:
    two = Resources(2, min_memory_mb=1000, expected_duration=30)
    alloc = await pool.acquire(two)
    assert (len(alloc.gpu_indices), alloc.memory_mb) == (2, 1000)
    await pool.release(alloc)
    alloc = pool.acquire_nowait(two)
    assert len(alloc.gpu_indices) == 2
    await pool.release(alloc)
    async with pool.allocation(two, timeout=5) as held:
        assert len(held.gpu_indices) == 2
    alloc = await pool.acquire(resources=two)  # by keyword too
    await pool.release(alloc)
    assert requests_seen == [two] * 4


async def test_keyword_spellings_are_the_value(
    pool: GPUResourcePool, requests_seen: list[Resources], labels_seen: list[str | None]
) -> None:
    options: dict[str, Any] = {
        "min_memory_mb": 1000.5,
        "priority": 3,
        "allowed_gpus": [0, 1, 2],
        "expected_duration": 90,
    }
    value = Resources(2, **options)
    label = {"experiment_id": "exp"}  # labels the allocation, not part of the request
    await pool.release(await pool.acquire(required_gpus=2, **options, **label))
    await pool.release(await pool.acquire(2, **options, **label))
    await pool.release(pool.acquire_nowait(required_gpus=2, **options, **label))
    async with pool.allocation(required_gpus=2, **options, **label):
        pass
    await pool.release(await pool.acquire(value, **label))  # with the value too
    await pool.release(await pool.acquire())  # nothing given: one whole GPU
    assert requests_seen == [value] * 5 + [Resources()]
    assert labels_seen == ["exp"] * 5 + [None]


async def test_runner_entry_points_take_the_value(
    pool: GPUResourcePool, requests_seen: list[Resources], labels_seen: list[str | None]
) -> None:
    async def gpus(item: int, allocation: GPUAllocation | None) -> int:
        return 0 if allocation is None else len(allocation.gpu_indices)

    two = Resources(2, min_memory_mb=500)
    # Without learned durations: with them, a task after the first finished ones asks
    # for the value with an estimated_duration (tests/test_runner_durations.py).
    async with ParallelRunner(pool, max_parallel=2, learn_durations=False) as runner:
        handle = runner.submit(gpus, 0, resources=two, key="one")
        mapped = await runner.map(gpus, [1, 2], resources=two)
        per_item = await runner.map(gpus, [1, 2], resources=lambda n: Resources(n))
        cpu = await runner.map(gpus, [1])  # the runner's default: no GPU
        assert (await handle.wait()).value == 2
    assert [r.value for r in mapped] == [2, 2]
    assert [r.value for r in per_item] == [1, 2]
    assert [r.value for r in cpu] == [0]
    # The runner labels each task's allocation with its key and asks for the value
    # as given (the submitted task and the first map's may start in either order).
    assert "one" in labels_seen[:3]
    assert requests_seen[:3] == [two] * 3
    assert sorted(r.required_gpus for r in requests_seen[3:]) == [1, 2]


async def test_optimize_takes_the_value(
    pool: GPUResourcePool, requests_seen: list[Resources]
) -> None:
    class Counting:
        def __init__(self) -> None:
            self.asked = 0

        def ask(self) -> int:
            self.asked += 1
            return self.asked

        def tell(self, suggestion: int, result: Any) -> None:
            pass

    async def objective(suggestion: int, allocation: GPUAllocation | None) -> float:
        assert allocation is not None
        return float(len(allocation.gpu_indices))

    async with ParallelRunner(pool, max_parallel=2) as runner:
        by_value = await runner.optimize(
            Counting(), objective, n_trials=2, resources=Resources(2), key_prefix="a"
        )
        by_keywords = await runner.optimize(
            Counting(), objective, n_trials=1, required_gpus=3, expected_duration=5, key_prefix="b"
        )
    assert by_value.best is not None
    assert by_value.best.value == 2.0
    assert by_keywords.best is not None
    assert by_keywords.best.value == 3.0
    assert [r.required_gpus for r in requests_seen] == [2, 2, 3]
    assert requests_seen[-1].expected_duration == 5.0


# ---------------------------------------------------------------- one form at a time


async def test_a_value_and_keywords_together_are_a_type_error(pool: GPUResourcePool) -> None:
    before = pool.statistics()
    with pytest.raises(TypeError, match=r"as a gpupool.Resources or as keywords, not both"):
        await pool.acquire(Resources(1), min_memory_mb=10)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="not both"):
        pool.allocation(Resources(1), priority=2)
    with pytest.raises(TypeError, match="required_gpus is given twice"):
        await pool.acquire(2, required_gpus=3)
    with pytest.raises(TypeError, match=r"unknown request keyword.*min_memory"):
        await pool.acquire(min_memory=10)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match=r"must be a gpupool.Resources, an int"):
        await pool.acquire("2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="required_gpus must be an int >= 1, got 0"):
        await pool.acquire(Resources(0))
    assert pool.statistics() == before
    async with ParallelRunner(pool, max_parallel=2) as runner:

        async def nap(item: int, allocation: GPUAllocation | None) -> None:
            pass

        with pytest.raises(TypeError, match="not both"):
            runner.submit(nap, 1, resources=Resources(1), required_gpus=1)
        with pytest.raises(TypeError, match="not both"):
            await runner.map(nap, [1], resources=Resources(1), min_memory_mb=5)
        with pytest.raises(TypeError, match=r"unknown request keyword.*experiment_id"):
            runner.submit(nap, 1, experiment_id="x")  # type: ignore[call-arg]
        with pytest.raises(TypeError, match="experiment_id"):
            Resources(1, experiment_id="x")  # type: ignore[call-arg]  # the key labels
        with pytest.raises(TypeError, match=r"resources\(item\) must return a gpupool.Resources"):
            await runner.map(nap, [1], resources=lambda item: 1)  # type: ignore[arg-type,return-value]
        assert runner.statistics().submitted == 0


# ---------------------------------------------------------------- one set of errors


SHARED_BAD: list[dict[str, Any]] = [
    {"required_gpus": 1, "exclusive": "no"},
    {"required_gpus": 1, "exclusive": 0},
    {"required_gpus": 1, "exclusive": False},
    {"required_gpus": 1, "min_memory_mb": "8G"},
    {"required_gpus": 1, "min_memory_mb": -1},
    {"required_gpus": 1, "min_memory_mb": math.inf},
    {"required_gpus": 1, "priority": "high"},
    {"required_gpus": 1, "allowed_gpus": "0"},
    {"required_gpus": 1, "allowed_gpus": []},
    {"required_gpus": 1, "expected_duration": -5},
    {"required_gpus": 1, "expected_duration": "1h"},
    {"required_gpus": -1},
    {"required_gpus": 1.5},
]


@pytest.mark.parametrize("kwargs", SHARED_BAD)
async def test_the_pool_and_the_runner_raise_the_same_error(
    pool: GPUResourcePool, kwargs: dict[str, Any]
) -> None:
    """Regression: a bad ``exclusive`` was a ValueError from the pool and a
    TypeError from the runner; ``min_memory_mb`` was a float in one and an int
    in the other."""

    async def nap(item: int, allocation: GPUAllocation | None) -> None:
        pass

    with pytest.raises((TypeError, ValueError)) as from_pool:
        await pool.acquire(**kwargs)
    async with ParallelRunner(pool, max_parallel=2) as runner:
        with pytest.raises((TypeError, ValueError)) as from_submit:
            runner.submit(nap, 1, **kwargs)
        with pytest.raises((TypeError, ValueError)) as from_map:
            await runner.map(nap, [1], **kwargs)
    with pytest.raises((TypeError, ValueError)) as from_value:
        Resources(**kwargs)
    assert type(from_pool.value) is type(from_submit.value) is type(from_map.value)
    assert type(from_map.value) is type(from_value.value)
    assert isinstance(from_pool.value, (TypeError, ValueError))
    if "required_gpus" not in kwargs or kwargs["required_gpus"] == 1:
        # Beyond the GPU count's floor (1 for the pool, 0 for the runner), one message.
        assert str(from_pool.value) == str(from_submit.value) == str(from_value.value)


# ---------------------------------------------------------------- expected_duration


async def test_runner_estimates_reach_the_scheduler(
    pool: GPUResourcePool, requests_seen: list[Resources], labels_seen: list[str | None]
) -> None:
    async def nap(item: int, allocation: GPUAllocation | None) -> int:
        return item

    async with ParallelRunner(pool, max_parallel=1) as runner:
        await runner.map(nap, [1, 2], required_gpus=1, expected_duration=lambda n: 60.0 * n)
        await runner.map(nap, [3], required_gpus=1, expected_duration=7)
        handle = runner.submit(nap, 4, required_gpus=1, expected_duration=0.5, key="four")
        await handle.wait()
    estimates = {
        label: r.expected_duration for r, label in zip(requests_seen, labels_seen, strict=True)
    }
    assert sorted(estimates.values()) == [0.5, 7.0, 60.0, 120.0]
    assert estimates["four"] == 0.5
    with pytest.raises(ValueError, match="expected_duration must be None or a finite"):
        async with ParallelRunner(pool, max_parallel=1) as runner:
            await runner.map(nap, [1], required_gpus=1, expected_duration=lambda n: -1)


def test_the_jobs_file_est_key_builds_the_request() -> None:
    jobs = parse_jobs(
        "[est=2h gpus=2 mem=1G priority=3] python a.py\n[estimate=1h30m] python b.py\npython c.py\n"
    )
    assert [job.resources for job in jobs] == [
        Resources(2, min_memory_mb=1024, priority=3, expected_duration=7200),
        Resources(1, expected_duration=5400),
        Resources(1),
    ]


def test_bad_estimates_are_reported_with_the_other_bad_lines() -> None:
    with pytest.raises(JobsFileError) as info:
        parse_jobs("[est=soon] a\n[est=0] b\n[gpus=x] c\n[est=1h est=2h] d\n", source="jobs.txt")
    assert list(info.value.problems) == [
        "jobs.txt:1: est must be a duration like 90, 90s, 30m, 2h or 1h30m, got 'soon'",
        "jobs.txt:2: est must be > 0, got '0'",
        "jobs.txt:3: gpus must be an int >= 0, got 'x'",
        "jobs.txt:4: resource 'est' is given twice",
    ]


def test_gpupool_run_passes_the_estimates_to_the_scheduler(
    tmp_path: Path, requests_seen: list[Resources], labels_seen: list[str | None]
) -> None:
    jobs = tmp_path / "jobs.txt"
    jobs.write_text(
        "[est=20m name=short] true\n[gpus=2 est=2h name=long] true\n[name=plain] true\n"
    )
    assert cli_main(["run", str(jobs), "--fake-gpus", "2"]) == 0
    estimates = {
        label: r.expected_duration for r, label in zip(requests_seen, labels_seen, strict=True)
    }
    assert estimates == {"short": 1200.0, "long": 7200.0, "plain": None}


async def test_a_cpu_task_never_asks_the_pool(
    pool: GPUResourcePool, requests_seen: list[Resources]
) -> None:
    async def nap(item: int, allocation: GPUAllocation | None) -> bool:
        return allocation is None

    async with ParallelRunner(pool, max_parallel=2) as runner:
        results = await runner.map(nap, [1, 2], resources=Resources(0))
    assert [r.status for r in results] == [TaskStatus.SUCCEEDED] * 2
    assert all(r.value for r in results)
    assert requests_seen == []
