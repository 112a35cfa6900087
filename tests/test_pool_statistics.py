"""The pool's statistics, its repr, and one name for each thing they report."""

from __future__ import annotations

import anyio
import pytest

from gpupool import FakeGPUProvider, GPUResourcePool, PoolClosed

pytestmark = pytest.mark.anyio


async def test_repr_shows_gpus_held_and_waiters_from_statistics() -> None:
    pool = GPUResourcePool(FakeGPUProvider(count=4))
    assert repr(pool) == "<GPUResourcePool not open>"
    async with pool:
        assert repr(pool) == "<GPUResourcePool 0/4 GPUs held, 0 waiting>"
        held = await pool.acquire(3)
        closed: list[PoolClosed] = []

        async def wait_for_two() -> None:
            with pytest.raises(PoolClosed) as caught:
                await pool.acquire(2)
            closed.append(caught.value)

        async with anyio.create_task_group() as tg:
            for _ in range(2):
                tg.start_soon(wait_for_two)
            await anyio.wait_all_tasks_blocked()
            assert repr(pool) == "<GPUResourcePool 3/4 GPUs held, 2 waiting>"
            await pool.aclose()  # the waiters fail; the holder keeps its GPUs
        assert len(closed) == 2
        assert repr(pool) == "<GPUResourcePool closed, 3/4 GPUs held, 0 waiting>"
        await pool.release(held)


async def test_the_count_and_the_ids_of_holders_have_distinct_names() -> None:
    async with GPUResourcePool(FakeGPUProvider(count=2)) as pool:
        alloc = await pool.acquire(1)
        stats = pool.statistics()
        assert stats.holder_count == 1
        assert [gpu.holder_ids for gpu in stats.gpus] == [(alloc.id,), ()]
        await pool.release(alloc)


async def test_the_old_holders_names_still_work_and_warn() -> None:
    async with GPUResourcePool(FakeGPUProvider(count=2)) as pool:
        alloc = await pool.acquire(1)
        stats = pool.statistics()
        with pytest.deprecated_call(match=r"PoolStatistics\.holder_count"):
            assert stats.holders == 1
        with pytest.deprecated_call(match=r"GPUStatistics\.holder_ids"):
            assert stats.gpus[0].holders == (alloc.id,)
        await pool.release(alloc)


async def test_mark_unhealthy_takes_a_detail_like_the_providers_reports() -> None:
    """One name for why a GPU is unhealthy: ``detail`` (``GPUStats.health_detail``,
    ``FakeGPUProvider.set_healthy``); ``reason=`` was the pool's own spelling."""
    async with GPUResourcePool(FakeGPUProvider(count=2)) as pool:
        pool.mark_unhealthy(0, detail="Xid 79 in the job's log")
        with pytest.deprecated_call(match=r"mark_unhealthy\(reason=\) is deprecated, use detail="):
            pool.mark_unhealthy(1, reason="Xid 48")
        assert [gpu.healthy for gpu in pool.statistics().gpus] == [False, False]
        with pytest.raises(TypeError, match="detail must be a str saying why, got 79"):
            pool.mark_unhealthy(0, detail=79)  # type: ignore[arg-type]
