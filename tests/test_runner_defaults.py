"""The runner's defaults (issue 10 item 8).

Regressions: ``ParallelRunner(pool)`` ran one task at a time (8 x 0.2 s tasks on 4
GPUs took 1.6 s) while ``gpupool run`` uses every GPU; and a task that left out
``required_gpus`` and then used ``allocation.env`` saw only ``'NoneType' object has
no attribute 'env'``.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator

import anyio
import pytest

from gpupool import (
    FakeGPUProvider,
    GPUAllocation,
    GPUResourcePool,
    ParallelRunner,
    PoolClosed,
    TaskStatus,
)

from .marks import trio_mockclock

pytestmark = pytest.mark.anyio

TASK_S = 0.2


@pytest.fixture
async def pool() -> AsyncIterator[GPUResourcePool]:
    async with GPUResourcePool(FakeGPUProvider(count=4)) as pool:
        yield pool


async def gpu_task(item: int, allocation: GPUAllocation | None) -> int:
    assert allocation is not None
    await anyio.sleep(TASK_S)
    return item


async def cpu_task(item: int, allocation: GPUAllocation | None) -> int:
    assert allocation is None
    await anyio.sleep(TASK_S)
    return item


async def rounds_taken(runner: ParallelRunner, n: int, *, required_gpus: int) -> float:
    """How many task lengths of virtual time ``n`` tasks took on ``runner``."""
    fn = gpu_task if required_gpus else cpu_task
    started = anyio.current_time()
    results = await runner.map(fn, range(n), required_gpus=required_gpus)
    assert [r.status for r in results] == [TaskStatus.SUCCEEDED] * n
    return (anyio.current_time() - started) / TASK_S


@trio_mockclock
async def test_a_runner_on_a_pool_runs_as_many_gpu_tasks_as_the_pool_has_gpus(
    pool: GPUResourcePool,
) -> None:
    async with ParallelRunner(pool) as runner:
        rounds = await rounds_taken(runner, 8, required_gpus=1)
    assert rounds == pytest.approx(2, abs=0.25)  # was 8: one task at a time
    assert runner.max_parallel == 4


@trio_mockclock
async def test_cpu_tasks_on_a_pool_runner_get_the_same_default(pool: GPUResourcePool) -> None:
    async with ParallelRunner(pool) as runner:
        rounds = await rounds_taken(runner, 8, required_gpus=0)
        assert runner.statistics().max_parallel == 4
    assert rounds == pytest.approx(2, abs=0.25)


@trio_mockclock
async def test_the_pools_own_max_parallel_is_what_it_can_serve() -> None:
    provider = FakeGPUProvider(count=4)
    async with GPUResourcePool(provider, max_parallel=2) as pool, ParallelRunner(pool) as runner:
        assert runner.max_parallel == 2
        assert await rounds_taken(runner, 4, required_gpus=1) == pytest.approx(2, abs=0.25)
    # A pool that shares GPUs by memory may serve more tasks than it has GPUs.
    async with GPUResourcePool(provider, max_parallel=8) as pool:
        assert ParallelRunner(pool).max_parallel == 8


@trio_mockclock
async def test_a_runner_without_a_pool_runs_as_many_tasks_as_high_level_workers() -> None:
    assert ParallelRunner().max_parallel == 4
    async with ParallelRunner(high_level_workers=3) as runner:
        assert runner.max_parallel == 3
        assert await rounds_taken(runner, 6, required_gpus=0) == pytest.approx(2, abs=0.25)


@trio_mockclock
async def test_an_explicit_max_parallel_wins(pool: GPUResourcePool) -> None:
    async with ParallelRunner(pool, max_parallel=1) as runner:
        assert runner.max_parallel == 1
        assert await rounds_taken(runner, 3, required_gpus=1) == pytest.approx(3, abs=0.25)


@trio_mockclock
async def test_a_runner_made_before_its_pool_opened_counts_the_gpus_on_enter() -> None:
    pool = GPUResourcePool(FakeGPUProvider(count=3))
    runner = ParallelRunner(pool)
    with pytest.raises(PoolClosed, match="max_parallel="):
        runner.max_parallel  # noqa: B018 - the property is what is tested
    async with pool, runner:
        assert runner.max_parallel == 3
        assert await rounds_taken(runner, 6, required_gpus=1) == pytest.approx(2, abs=0.25)


async def test_a_runner_entered_while_its_pool_is_not_open_says_what_to_do() -> None:
    runner = ParallelRunner(GPUResourcePool(FakeGPUProvider(count=2)))
    with pytest.raises(PoolClosed, match="enter `async with pool` before the runner"):
        async with runner:
            pass


# -- required_gpus left out --------------------------------------------------

HINT = "this task asked for required_gpus=0, so its allocation is None"


def uses_env(item: int, allocation: GPUAllocation | None) -> str:
    return allocation.env["CUDA_VISIBLE_DEVICES"]  # type: ignore[union-attr]


async def uses_gpu_indices(item: int, allocation: GPUAllocation | None) -> int:
    return len(allocation.gpu_indices)  # type: ignore[union-attr]


@pytest.mark.parametrize("fn", [uses_env, uses_gpu_indices])
async def test_a_gpu_less_task_that_reads_its_allocation_is_told_why_it_is_none(
    pool: GPUResourcePool, fn: object
) -> None:
    async with ParallelRunner(pool) as runner:
        [result] = await runner.map(fn, [1])  # type: ignore[arg-type]
    assert result.status is TaskStatus.FAILED
    assert result.error is not None
    assert result.error.startswith("AttributeError: 'NoneType' object has no attribute")
    assert HINT in result.error
    assert "pass required_gpus=1 or more" in result.error
    assert isinstance(result.exception, AttributeError)
    if sys.version_info >= (3, 11):
        [note] = result.exception.__notes__
        assert result.error.endswith(f" ({note})")
        assert HINT in note
        assert result.traceback is not None
        assert HINT in result.traceback


async def test_other_attribute_errors_get_no_hint(pool: GPUResourcePool) -> None:
    def unrelated(item: int, allocation: GPUAllocation | None) -> None:
        None.startswith("x")  # type: ignore[attr-defined]

    def not_none(item: int, allocation: GPUAllocation | None) -> None:
        raise AttributeError("env", name="env", obj=item)

    async def with_gpus(item: int, allocation: GPUAllocation | None) -> None:
        None.env  # type: ignore[attr-defined]  # noqa: B018

    async with ParallelRunner(pool) as runner:
        results = await runner.map(unrelated, [1]) + await runner.map(not_none, [1])
        results += await runner.map(with_gpus, [1], required_gpus=1)
    for result in results:
        assert result.status is TaskStatus.FAILED
        assert result.error is not None
        assert result.error.startswith("AttributeError: ")
        assert "required_gpus" not in result.error
