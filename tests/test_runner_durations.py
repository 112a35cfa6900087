"""ParallelRunner learns tasks' durations: from the journal of an earlier run (``history=``),
from tasks of the same shape that finished in this run, and from the run a journal resumes.

What reaches the scheduler is spied on (``Scheduler.grant_at_once``, which the pool
tries for every request first). On trio the clock is virtual (MockClock), so the
durations are exact; on asyncio the tasks sleep a few milliseconds of real time and
the tests compare estimates with what the journal recorded, never with the clock.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from trio.testing import MockClock

from gpupool import (
    BackfillPolicy,
    FakeGPUProvider,
    GPUAllocation,
    GPUResourcePool,
    JournalError,
    ParallelRunner,
    Resources,
    TaskStatus,
)
from gpupool._core.scheduler import Scheduler
from gpupool._journal.history import read_durations

from .marks import trio_mockclock

pytestmark = pytest.mark.anyio

both_clocks = pytest.mark.parametrize(
    "anyio_backend",
    [
        pytest.param(("trio", {"clock": MockClock(autojump_threshold=0)}), id="trio-mockclock"),
        pytest.param("asyncio", id="asyncio"),
    ],
)


@pytest.fixture
def asked(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Resources]]:
    """The requests the scheduler was asked for, by the allocation's label (the task key)."""
    seen: dict[str, list[Resources]] = {}
    grant_at_once = Scheduler.grant_at_once

    def spy(
        self: Scheduler, request: Resources, now: float, experiment_id: str | None = None
    ) -> GPUAllocation | None:
        seen.setdefault(experiment_id or "", []).append(request)
        return grant_at_once(self, request, now, experiment_id)

    monkeypatch.setattr(Scheduler, "grant_at_once", spy)
    return seen


def _seconds(anyio_backend: object) -> Callable[[int], float]:
    """How long task ``i`` sleeps: whole minutes in virtual time, milliseconds in real time."""
    if anyio_backend == "asyncio":
        return lambda i: 0.002 * (1 + i % 3)
    return lambda i: 60.0 * (1 + i % 3)


async def _sweep(
    seconds: Callable[[int], float], items: range, **runner_options: object
) -> list[TaskStatus]:
    async def train(item: int, allocation: GPUAllocation | None) -> int:
        assert allocation is not None
        await anyio.sleep(seconds(item))
        return item

    options: dict[str, object] = {"max_parallel": 2, **runner_options}
    async with (
        GPUResourcePool(FakeGPUProvider(count=2)) as pool,
        ParallelRunner(pool, **options) as runner,  # type: ignore[arg-type]
    ):
        results = await runner.map(train, items, required_gpus=1, key=lambda i: f"cfg-{i}")
    return [r.status for r in results]


@both_clocks
async def test_a_second_sweep_learns_each_tasks_duration_from_the_first_ones_journal(
    anyio_backend: object, tmp_path: Path, asked: dict[str, list[Resources]]
) -> None:
    seconds = _seconds(anyio_backend)
    first = tmp_path / "first.sqlite"
    assert (
        await _sweep(seconds, range(6), journal=first, learn_durations=False)
        == [TaskStatus.SUCCEEDED] * 6
    )
    assert all(r.estimated_duration is None for rs in asked.values() for r in rs)
    recorded = read_durations(first)
    assert sorted(recorded) == [f"cfg-{i}" for i in range(6)]
    asked.clear()
    await _sweep(seconds, range(6), journal=tmp_path / "second.sqlite", history=first)
    for i in range(6):
        request = asked[f"cfg-{i}"][0]
        assert set(asked[f"cfg-{i}"]) == {request}  # asked again on submit: the same
        # Every task of the second sweep, the first ones included, asks with its own
        # duration in the first sweep as the estimate; no user hint is made up.
        assert request.estimated_duration == recorded[f"cfg-{i}"][0]
        assert request.expected_duration is None
    if anyio_backend != "asyncio":
        assert [recorded[f"cfg-{i}"][0] for i in range(3)] == [60.0, 120.0, 180.0]


@both_clocks
async def test_without_history_tasks_learn_from_finished_tasks_of_their_shape(
    anyio_backend: object, asked: dict[str, list[Resources]]
) -> None:
    """One GPU at a time: each task after the first asks with the mean of the last two
    durations of its shape (function and request) finished so far in this run."""
    seconds = _seconds(anyio_backend)
    durations: dict[int, float] = {}

    async def train(item: int, allocation: GPUAllocation | None) -> None:
        started = anyio.current_time()
        await anyio.sleep(seconds(item))
        durations[item] = anyio.current_time() - started

    async with (
        GPUResourcePool(FakeGPUProvider(count=1)) as pool,
        ParallelRunner(pool, max_parallel=1) as runner,
    ):
        for i in range(4):  # one after another, so that each finished before the next
            await runner.submit(train, i, required_gpus=1, key=f"t{i}").wait()
    assert asked["t0"][0].estimated_duration is None
    for i in (1, 2, 3):
        estimate = asked[f"t{i}"][0].estimated_duration
        assert estimate is not None
        recent = [durations[j] for j in range(max(0, i - 2), i)]
        # The runner times the hold around the function: at least the function's own time.
        assert estimate >= sum(recent) / len(recent) - 1e-9
    if anyio_backend != "asyncio":
        assert [asked[f"t{i}"][0].estimated_duration for i in (1, 2, 3)] == [60.0, 90.0, 150.0]


@both_clocks
async def test_the_users_hint_always_wins_and_learning_can_be_turned_off(
    anyio_backend: object, tmp_path: Path, asked: dict[str, list[Resources]]
) -> None:
    seconds = _seconds(anyio_backend)
    first = tmp_path / "first.sqlite"
    await _sweep(seconds, range(2), journal=first)

    async def train(item: int, allocation: GPUAllocation | None) -> None:
        await anyio.sleep(seconds(item))

    asked.clear()
    async with GPUResourcePool(FakeGPUProvider(count=2)) as pool:
        async with ParallelRunner(pool, history=[first]) as runner:
            await runner.map(
                train, range(2), required_gpus=1, expected_duration=7, key=lambda i: f"cfg-{i}"
            )
        async with ParallelRunner(pool, learn_durations=False) as runner:
            await runner.map(train, range(4), required_gpus=1, key=lambda i: f"off-{i}")
    assert [asked[f"cfg-{i}"][0] for i in range(2)] == [Resources(1, expected_duration=7)] * 2
    assert all(asked[f"off-{i}"][0] == Resources(1) for i in range(4))


@trio_mockclock
async def test_a_resumed_journal_teaches_the_tasks_it_runs_again(
    tmp_path: Path, asked: dict[str, list[Resources]]
) -> None:
    """The tasks a resumed run finds finished are not run again, but their durations
    (they are of the same shape) are the estimate of the tasks that ask for GPUs after
    them. (Within one ``map`` the tasks' order is the event loop's: trio shuffles it.)"""
    path = tmp_path / "sweep.sqlite"

    async def train(item: int, allocation: GPUAllocation | None) -> None:
        await anyio.sleep(item)

    async with (
        GPUResourcePool(FakeGPUProvider(count=2)) as pool,
        ParallelRunner(pool, journal=path) as runner,
    ):
        await runner.map(train, [100, 200], required_gpus=1)
    assert sorted(read_durations(path).values()) == [[100.0], [200.0]]
    asked.clear()
    async with (
        GPUResourcePool(FakeGPUProvider(count=2)) as pool,
        ParallelRunner(pool, journal=path) as runner,
    ):
        again = await runner.map(train, [100, 200], required_gpus=1)
        assert [r.from_journal for r in again] == [True, True]
        await runner.map(train, [300], required_gpus=1)
    (key,) = asked
    assert asked[key][0].estimated_duration == 150.0


@trio_mockclock
async def test_a_too_short_estimate_does_not_delay_a_head_whose_patience_is_spent(
    tmp_path: Path,
) -> None:
    """History says the 1-GPU jobs take 1 s; they take 50 s. On 2 GPUs, A (100 s, known
    exactly) runs, and the 2-GPU head H is at the front from t=1 with patience 30. The
    job submitted at 2 backfills by its estimate (H is patient) and overruns until 52,
    still before A ends. The one submitted at 62 looks, by its estimate, as if it ended
    before A: trusted, it would hold a GPU until 112. H's patience is spent, so it waits,
    and H starts the moment A ends."""
    starts: dict[str, float] = {}

    async def job(seconds: float, allocation: GPUAllocation | None) -> None:
        await anyio.sleep(seconds)

    def started(name: str) -> Callable[[float, GPUAllocation | None], object]:
        async def run(seconds: float, allocation: GPUAllocation | None) -> None:
            starts[name] = anyio.current_time()
            await job(seconds, allocation)

        return run

    history = {"A": [100.0], "S-2": [1.0], "S-62": [1.0]}
    policy = BackfillPolicy(patience=30, batch_window=0)
    async with (
        GPUResourcePool(FakeGPUProvider(count=2), policy=policy) as pool,
        ParallelRunner(pool, max_parallel=4, history=history) as runner,
    ):
        began = anyio.current_time()
        runner.submit(started("A"), 100.0, required_gpus=1, key="A")
        await anyio.sleep(1)
        head = runner.submit(started("H"), 10.0, required_gpus=2, key="H")
        await anyio.sleep(1)
        runner.submit(started("S-2"), 50.0, required_gpus=1, key="S-2")
        await anyio.sleep(60)
        runner.submit(started("S-62"), 50.0, required_gpus=1, key="S-62")
        assert (await head.wait()).status is TaskStatus.SUCCEEDED
    at = {name: t - began for name, t in starts.items()}
    assert at["A"] == 0
    assert at["S-2"] == 2  # backfilled while H was patient
    assert at["H"] == 100  # when A ended: S-62 did not take a GPU first
    assert at["S-62"] >= 110


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"history": 5}, TypeError, "history must be None, a journal"),
        ({"history": [Path("a"), 5]}, TypeError, "history must be None, a journal"),
        ({"learn_durations": "yes"}, TypeError, "learn_durations must be"),
        ({"history": {"k": [1.0]}, "learn_durations": False}, ValueError, "pass one or neither"),
    ],
)
def test_bad_history_arguments_are_refused(
    options: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        ParallelRunner(**options)  # type: ignore[arg-type]


async def test_a_history_that_is_no_journal_fails_on_enter(tmp_path: Path) -> None:
    with pytest.raises(JournalError, match="no journal at"):
        async with ParallelRunner(history=tmp_path / "missing.sqlite"):
            pass
