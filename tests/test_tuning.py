"""runner.optimize with a tiny ask/tell strategy."""

from __future__ import annotations

import math

import anyio
import pytest
from trio.testing import MockClock

from gpupool import (
    FakeGPUProvider,
    GPUAllocation,
    GPUResourcePool,
    OptimizeResult,
    ParallelRunner,
    TaskResult,
    TaskStatus,
)

pytestmark = pytest.mark.anyio

trio_mockclock = pytest.mark.parametrize(
    "anyio_backend",
    [pytest.param(("trio", {"clock": MockClock(autojump_threshold=0)}), id="trio-mockclock")],
)


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
