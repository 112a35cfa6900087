"""runner.optimize with a tiny ask/tell strategy."""

from __future__ import annotations

import math
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from gpupool import (
    FakeGPUProvider,
    GPUAllocation,
    GPUResourcePool,
    OptimizeResult,
    ParallelRunner,
    TaskResult,
    TaskStatus,
)

from .marks import trio_mockclock

pytestmark = pytest.mark.anyio


class Grid:
    """Suggests 0, 1, 2, ... and remembers what it was told, and when."""

    def __init__(self, runner: ParallelRunner | None = None) -> None:
        self.runner = runner
        self.next = 0
        self.told: list[tuple[int, TaskStatus]] = []
        self.running_when_asked: list[int] = []

    def ask(self) -> int:
        if self.runner is not None:
            self.running_when_asked.append(self.next - len(self.told))
        self.next += 1
        return self.next - 1

    def tell(self, suggestion: int, result: TaskResult) -> None:
        self.told.append((suggestion, result.status))


@trio_mockclock
async def test_keeps_max_parallel_trials_in_flight_and_tells_every_result(
    anyio_backend: object,
) -> None:
    async def objective(x: int, allocation: GPUAllocation | None) -> float:
        assert allocation is not None
        await anyio.sleep(10 + x % 3)
        if x % 7 == 3:
            raise RuntimeError("diverged")
        return (x - 11) ** 2

    pool = GPUResourcePool(FakeGPUProvider(count=4))
    async with pool, ParallelRunner(pool, max_parallel=4) as runner:
        grid = Grid(runner)
        start = anyio.current_time()
        outcome = await runner.optimize(grid, objective, n_trials=20, required_gpus=1)
        elapsed = anyio.current_time() - start
    assert isinstance(outcome, OptimizeResult)
    assert [t.number for t in outcome.trials] == list(range(20))
    assert [t.suggestion for t in outcome.trials] == list(range(20))
    assert sorted(s for s, _ in grid.told) == list(range(20))
    assert dict(grid.told)[3] is TaskStatus.FAILED
    # Never more than four in flight when asking; the first four asked at once.
    assert max(grid.running_when_asked) == 3
    assert grid.running_when_asked[:4] == [0, 1, 2, 3]
    assert outcome.best is not None
    assert (outcome.best.suggestion, outcome.best.value) == (11, 0)
    assert elapsed < 20 * 12 / 2  # trials overlapped (virtual time)


async def test_maximize_and_values_that_cannot_be_best() -> None:
    values = [1.0, math.nan, "text", 5, True, 3.5]

    async def objective(i: int, allocation: GPUAllocation | None) -> object:
        return values[i]

    async with ParallelRunner(max_parallel=2) as runner:
        high = await runner.optimize(Grid(), objective, n_trials=6, direction="maximize")
        low = await runner.optimize(Grid(), objective, n_trials=6, key_prefix="low-")
    assert high.best is not None
    assert high.best.value == 5
    assert low.best is not None
    assert low.best.value == 1.0
    assert high.direction == "maximize"
    assert low.direction == "minimize"


async def test_the_strategy_direction_is_the_default() -> None:
    class Up(Grid):
        direction = "maximize"

    async def objective(i: int, allocation: GPUAllocation | None) -> int:
        return i

    async with ParallelRunner(max_parallel=2) as runner:
        outcome = await runner.optimize(Up(), objective, n_trials=5)
    assert outcome.best is not None
    assert outcome.best.value == 4


async def test_a_failing_ask_cancels_trials_in_flight_and_propagates() -> None:
    class Broken(Grid):
        def ask(self) -> int:
            if self.next == 3:
                raise LookupError("search space exhausted")
            return super().ask()

    started: list[int] = []

    async def objective(i: int, allocation: GPUAllocation | None) -> int:
        started.append(i)
        await anyio.sleep_forever()
        return i

    async with ParallelRunner(max_parallel=5) as runner:
        with pytest.raises(LookupError, match="search space exhausted"):
            await runner.optimize(Broken(), objective, n_trials=10)
        # The same keys give back the three trials that were in flight.
        handles = [runner.submit(objective, 0, key=f"optimize/trial-{i}") for i in range(3)]
        results = [await handle.wait() for handle in handles]
    assert [r.status for r in results] == [TaskStatus.CANCELLED] * 3
    assert started == []  # cancelled before they started


async def test_optimize_arguments_are_validated() -> None:
    async def objective(i: int, allocation: GPUAllocation | None) -> int:
        return i

    async with ParallelRunner() as runner:
        with pytest.raises(ValueError, match="n_trials must be an int >= 1, got 0"):
            await runner.optimize(Grid(), objective, n_trials=0)
        with pytest.raises(ValueError, match="max_parallel must be an int >= 1, got 0"):
            await runner.optimize(Grid(), objective, n_trials=1, max_parallel=0)
        with pytest.raises(ValueError, match="direction must be 'minimize' or 'maximize'"):
            await runner.optimize(Grid(), objective, n_trials=1, direction="up")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="without ask, tell"):
            await runner.optimize(object(), objective, n_trials=1)  # type: ignore[arg-type]


# -- one study per call, resume from the journal, async strategies ----------


class Offset(Grid):
    """Suggests start, start + 1, ..."""

    def __init__(self, start: int) -> None:
        super().__init__()
        self.next = start
        self.values: list[tuple[int, object]] = []

    def tell(self, suggestion: int, result: TaskResult) -> None:
        super().tell(suggestion, result)
        self.values.append((suggestion, result.value))


async def test_two_studies_on_one_runner_run_their_own_trials() -> None:
    """Regression: both calls keyed their trials trial-0, trial-1, ..., so the
    second got the first one's trials back (objective called 3 times for 6
    trials, B told A's values)."""
    calls: list[int] = []

    def objective(x: int, allocation: GPUAllocation | None) -> int:
        calls.append(x)
        return x * 10

    async with ParallelRunner(max_parallel=2) as runner:
        a, b = Offset(0), Offset(100)
        first = await runner.optimize(a, objective, n_trials=3)
        second = await runner.optimize(b, objective, n_trials=3)
    assert sorted(calls) == [0, 1, 2, 100, 101, 102]
    assert sorted(b.values) == [(100, 1000), (101, 1010), (102, 1020)]
    assert [t.result.key for t in first.trials] == [f"optimize/trial-{i}" for i in range(3)]
    assert [t.result.key for t in second.trials] == [f"optimize-1/trial-{i}" for i in range(3)]


async def test_key_prefix_names_the_study_once_per_runner() -> None:
    async def objective(x: int, allocation: GPUAllocation | None) -> int:
        return x

    async with ParallelRunner() as runner:
        outcome = await runner.optimize(Grid(), objective, n_trials=1, key_prefix="lr-sweep")
        assert outcome.trials[0].result.key == "lr-sweep/trial-0"
        with pytest.raises(ValueError, match="key_prefix='lr-sweep' was already used"):
            await runner.optimize(Grid(), objective, n_trials=1, key_prefix="lr-sweep")
        with pytest.raises(TypeError, match="key_prefix must be a non-empty str or None, got 3"):
            await runner.optimize(Grid(), objective, n_trials=1, key_prefix=3)  # type: ignore[arg-type]
        # A default name never takes one the user gave.
        await runner.optimize(Grid(), objective, n_trials=1, key_prefix="optimize")
        outcome = await runner.optimize(Grid(), objective, n_trials=1)
        assert outcome.trials[0].result.key == "optimize-1/trial-0"


class Random:
    """Suggests random integers: a rerun asks other points than the first run."""

    def __init__(self, seed: int) -> None:
        import random

        self.rng = random.Random(seed)

    def ask(self) -> int:
        return self.rng.randrange(10**9)

    def tell(self, suggestion: int, result: TaskResult) -> None:
        pass


async def test_a_journaled_rerun_replays_a_plain_strategy(tmp_path: Path) -> None:
    """A plain strategy is resumed by asking it again: a suggestion it repeats
    gets its stored result; one it does not is run, never given another's."""
    journal = tmp_path / "gp.sqlite"
    calls: list[int] = []

    def objective(x: int, allocation: GPUAllocation | None) -> int:
        calls.append(x)
        return x * 10

    outcomes = []
    for seed in (1, 1, 2):
        async with ParallelRunner(max_parallel=2, journal=journal) as runner:
            grid = Offset(0)
            outcomes.append(await runner.optimize(grid, objective, n_trials=4))
            outcomes.append(await runner.optimize(Random(seed), objective, n_trials=3))
        assert sorted(grid.values) == [(i, i * 10) for i in range(4)]
    _, random_1, grid_2, random_2, grid_3, random_3 = outcomes
    assert len(calls) == 4 + 3 + 3  # the grid and seed 1 ran once; seed 2 ran its own
    assert all(t.result.from_journal for t in (*grid_2.trials, *random_2.trials, *grid_3.trials))
    assert [t.value for t in random_2.trials] == [t.value for t in random_1.trials]
    assert not any(t.result.from_journal for t in random_3.trials)
    for outcome in outcomes:
        assert all(t.value == t.suggestion * 10 for t in outcome.trials)


async def test_a_journaled_plain_strategy_needs_suggestions_with_a_json_form(
    tmp_path: Path,
) -> None:
    class Objects(Grid):
        def ask(self) -> object:  # type: ignore[override]
            return object()

    async def objective(x: object, allocation: GPUAllocation | None) -> int:
        return 1

    async with ParallelRunner(journal=tmp_path / "gp.sqlite") as runner:
        with pytest.raises(TypeError, match="a suggestion must have a JSON form"):
            await runner.optimize(Objects(), objective, n_trials=1)


async def test_async_ask_and_tell_are_awaited() -> None:
    """Regression: an ``async def ask`` made coroutine objects the suggestions."""

    class AsyncGrid:
        def __init__(self) -> None:
            self.next = 0
            self.told: list[tuple[int, object]] = []

        async def ask(self) -> int:
            await anyio.lowlevel.checkpoint()
            self.next += 1
            return self.next - 1

        async def tell(self, suggestion: int, result: TaskResult) -> None:
            await anyio.lowlevel.checkpoint()
            self.told.append((suggestion, result.value))

    async def objective(x: int, allocation: GPUAllocation | None) -> int:
        return x * x

    strategy = AsyncGrid()
    async with ParallelRunner(max_parallel=2) as runner:
        outcome = await runner.optimize(strategy, objective, n_trials=4)  # type: ignore[arg-type]
    assert [t.suggestion for t in outcome.trials] == [0, 1, 2, 3]
    assert sorted(strategy.told) == [(0, 0), (1, 1), (2, 4), (3, 9)]
    assert outcome.best is not None
    assert outcome.best.value == 0


@trio_mockclock
async def test_a_strategy_with_retry_makes_each_attempt_a_trial(anyio_backend: object) -> None:
    """With ``retry``, a failed attempt is told and a new trial repeats it after the backoff."""

    class Retrying(Grid):
        def __init__(self) -> None:
            super().__init__()
            self.retried: list[int] = []

        def retry(self, suggestion: int) -> int:
            self.retried.append(suggestion)
            return suggestion

    failures = {1: 2, 2: 1}  # suggestion -> attempts that fail
    started: list[tuple[int, float]] = []

    async def objective(x: int, allocation: GPUAllocation | None) -> int:
        started.append((x, anyio.current_time()))
        if failures.get(x, 0):
            failures[x] -= 1
            raise RuntimeError("transient")
        return x

    strategy = Retrying()
    async with ParallelRunner(max_parallel=2) as runner:
        outcome = await runner.optimize(
            strategy, objective, n_trials=3, retries=2, retry_backoff=10
        )
    assert sorted(strategy.retried) == [1, 1, 2]
    assert sorted(s for s, _ in strategy.told) == [0, 1, 1, 1, 2, 2]
    attempts = sorted((t.suggestion, t.result.attempts, t.result.status) for t in outcome.trials)
    assert attempts == [
        (0, 1, TaskStatus.SUCCEEDED),
        (1, 1, TaskStatus.FAILED),
        (1, 2, TaskStatus.FAILED),
        (1, 3, TaskStatus.SUCCEEDED),
        (2, 1, TaskStatus.FAILED),
        (2, 2, TaskStatus.SUCCEEDED),
    ]
    assert [t.number for t in outcome.trials] == list(range(6))
    retried = [t.result.key for t in outcome.trials if t.result.attempts > 1]
    assert len(retried) == 3
    assert all(key.endswith("-retry") for key in retried)
    # Each retry waited out its backoff: 5-10 s for a first retry, 10-20 s for a second.
    times = [t for x, t in started if x == 1]
    assert 5 <= times[1] - times[0] <= 10
    assert 10 <= times[2] - times[1] <= 20


async def test_async_extras_of_a_strategy_are_refused_at_the_call() -> None:
    class AsyncRetry(Grid):
        async def retry(self, suggestion: int) -> int:
            return suggestion

    async def objective(x: int, allocation: GPUAllocation | None) -> int:
        return x

    async with ParallelRunner() as runner:
        with pytest.raises(TypeError, match=r"strategy\.retry must be a plain method"):
            await runner.optimize(AsyncRetry(), objective, n_trials=1)
