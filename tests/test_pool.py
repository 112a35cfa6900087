"""GPUResourcePool on both anyio backends: waiting, waking, cancelling, closing."""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator

import anyio
import pytest
from anyio import wait_all_tasks_blocked
from anyio.lowlevel import checkpoint

from gpupool import (
    AllocationNotHeld,
    FakeGPUProvider,
    GPUResourcePool,
    PoolClosed,
    PoolTimeout,
    ProviderError,
    UnsatisfiableRequest,
    WouldBlock,
)
from gpupool._core.policy import FifoPolicy

pytestmark = pytest.mark.anyio


@pytest.fixture
async def pool() -> AsyncIterator[GPUResourcePool]:
    async with GPUResourcePool(FakeGPUProvider(count=2), policy=FifoPolicy()) as opened:
        yield opened


def assert_all_free(pool: GPUResourcePool) -> None:
    stats = pool.statistics()
    assert stats.holder_count == 0
    assert stats.waiters == 0
    for g in stats.gpus:
        assert g.holder_ids == ()
        assert g.memory_reserved_mb == 0


async def test_acquire_and_release(pool: GPUResourcePool) -> None:
    alloc = await pool.acquire(2, min_memory_mb=8000)
    assert alloc.gpu_indices == (0, 1)
    assert pool.statistics().free_gpus == ()
    await pool.release(alloc)
    assert_all_free(pool)


async def test_waiters_are_served_in_arrival_order(pool: GPUResourcePool) -> None:
    holder = await pool.acquire(2)
    grants: list[tuple[int, int]] = []

    async def waiter(i: int) -> None:
        async with pool.allocation(1) as alloc:
            grants.append((alloc.id, i))  # ids grow in the order of grant
            await checkpoint()

    async with anyio.create_task_group() as tg:
        for i in range(6):
            tg.start_soon(waiter, i)
            await wait_all_tasks_blocked()  # fixes the arrival order
        assert pool.statistics().waiters == 6
        await pool.release(holder)
    assert [i for _, i in sorted(grants)] == list(range(6))
    assert_all_free(pool)


async def test_priority_overtakes_arrival(pool: GPUResourcePool) -> None:
    holder = await pool.acquire(2)
    order: list[str] = []

    async def waiter(name: str, priority: int) -> None:
        async with pool.allocation(2, priority=priority):
            order.append(name)

    async with anyio.create_task_group() as tg:
        for name, priority in [("low", 0), ("high", 10), ("mid", 5)]:
            tg.start_soon(waiter, name, priority)
            await wait_all_tasks_blocked()
        await pool.release(holder)
    assert order == ["high", "mid", "low"]


async def test_max_parallel_caps_concurrent_allocations() -> None:
    in_flight = peak = 0

    async def job(pool: GPUResourcePool) -> None:
        nonlocal in_flight, peak
        async with pool.allocation(1):
            in_flight += 1
            peak = max(peak, in_flight)
            await anyio.sleep(0.001)
            in_flight -= 1

    async with GPUResourcePool(FakeGPUProvider(count=8), max_parallel=3) as pool:
        async with anyio.create_task_group() as tg:
            for _ in range(30):
                tg.start_soon(job, pool)
        assert_all_free(pool)
    assert peak == 3


async def test_shared_allocations_pack_by_memory() -> None:
    async with GPUResourcePool(FakeGPUProvider(count=1, memory_mb=16_000)) as pool:
        a = await pool.acquire(exclusive=False, min_memory_mb=6000)
        b = await pool.acquire(exclusive=False, min_memory_mb=6000)
        assert a.gpu_indices == b.gpu_indices == (0,)
        with pytest.raises(WouldBlock):
            pool.acquire_nowait(exclusive=False, min_memory_mb=6000)
        await pool.release(a)
        c = pool.acquire_nowait(exclusive=False, min_memory_mb=6000)
        await pool.release(b)
        await pool.release(c)
        assert_all_free(pool)


async def test_foreign_memory_is_respected_and_its_release_noticed() -> None:
    fake = FakeGPUProvider(count=1, memory_mb=16_000)
    fake.set_memory_used(0, 15_000)  # a colleague's job
    async with GPUResourcePool(fake, refresh_interval=0.01) as pool:
        with pytest.raises(WouldBlock):
            pool.acquire_nowait(min_memory_mb=4000)
        granted = anyio.Event()

        async def wants_memory() -> None:
            async with pool.allocation(min_memory_mb=4000, timeout=10):
                granted.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(wants_memory)
            await anyio.sleep(0.05)
            assert not granted.is_set()
            fake.set_memory_used(0, 2000)  # the colleague's job ends
            with anyio.fail_after(10):
                await granted.wait()


async def test_unhealthy_gpu_is_skipped_and_others_keep_working() -> None:
    fake = FakeGPUProvider(count=2)
    fake.set_healthy(0, False, "GPU is lost")
    async with GPUResourcePool(fake) as pool:
        alloc = await pool.acquire(1)
        assert alloc.gpu_indices == (1,)
        with pytest.raises(UnsatisfiableRequest, match="only 1 GPU"):
            await pool.acquire(2)
        await pool.release(alloc)


async def test_waiter_fails_when_the_gpus_it_needs_are_lost() -> None:
    fake = FakeGPUProvider(count=2)
    async with GPUResourcePool(fake, refresh_interval=0.01) as pool:
        holder = await pool.acquire(1)
        fake.set_healthy(1, False)
        with anyio.fail_after(10), pytest.raises(UnsatisfiableRequest):
            await pool.acquire(2)
        await pool.release(holder)


async def test_provider_failures_keep_the_last_good_snapshot(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = FakeGPUProvider(count=1)
    async with GPUResourcePool(fake, refresh_interval=0.01) as pool:
        holder = await pool.acquire(1)
        fake.fail_next(times=3)
        async with anyio.create_task_group() as tg:
            tg.start_soon(pool.acquire, 1)
            await anyio.sleep(0.1)  # refreshes fail meanwhile
            await pool.release(holder)
        assert pool.statistics().holder_count == 1
    assert "GPU snapshot failed" in caplog.text


async def test_cancellation_storm_leaves_nothing_held() -> None:
    """1,000 waiters on 2 GPUs, half of them cancelled at random points."""
    rng = random.Random(1234)
    async with GPUResourcePool(FakeGPUProvider(count=2)) as pool:
        scopes: list[anyio.CancelScope] = []
        outcomes = {"done": 0, "cancelled": 0, "timeout": 0}

        async def worker(scope: anyio.CancelScope, timeout: float | None) -> None:
            with scope:
                try:
                    async with pool.allocation(1, timeout=timeout):
                        for _ in range(rng.randrange(3)):
                            await checkpoint()
                    outcomes["done"] += 1
                    return
                except PoolTimeout:
                    outcomes["timeout"] += 1
                    return
            outcomes["cancelled"] += 1

        async def canceller() -> None:
            victims = rng.sample(scopes, len(scopes) // 2)
            for scope in victims:
                for _ in range(rng.randrange(3)):
                    await checkpoint()
                scope.cancel()

        async with anyio.create_task_group() as tg:
            for _ in range(1000):
                scope = anyio.CancelScope()
                scopes.append(scope)
                timeout = rng.choice([None, None, None, 0, 0.0001])
                tg.start_soon(worker, scope, timeout)
            tg.start_soon(canceller)
        assert sum(outcomes.values()) == 1000
        assert outcomes["cancelled"] > 0
        assert outcomes["done"] > 0
        assert_all_free(pool)


async def test_a_cancel_arriving_after_the_grant_still_releases_through_the_context(
    pool: GPUResourcePool,
) -> None:
    """The grant wins the race on both backends; `allocation()` then gives it back."""
    holder = await pool.acquire(2)
    got: list[str] = []
    first_scope = anyio.CancelScope()

    async def first() -> None:
        with first_scope:
            async with pool.allocation(2):
                got.append("first")
                await checkpoint()  # the pending cancellation lands here

    async def second() -> None:
        async with pool.allocation(2):
            got.append("second")

    async with anyio.create_task_group() as tg:
        tg.start_soon(first)
        await wait_all_tasks_blocked()
        tg.start_soon(second)
        await wait_all_tasks_blocked()
        await pool.release(holder)  # wakes `first` with a grant...
        first_scope.cancel()  # ...and cancels it before it has run
    assert got == ["first", "second"]
    assert_all_free(pool)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_grant_racing_a_native_cancel_goes_to_the_next_waiter(
    pool: GPUResourcePool,
) -> None:
    """asyncio's own Task.cancel() can interrupt a waiter whose grant is already set.

    The interrupted waiter must hand the grant back so the next one gets it
    (the lost-token bug anyio fixed in CapacityLimiter, anyio #947).
    """
    import asyncio

    holder = await pool.acquire(2)
    first = asyncio.ensure_future(pool.acquire(2))
    await wait_all_tasks_blocked()
    second = asyncio.ensure_future(pool.acquire(2))
    await wait_all_tasks_blocked()
    await pool.release(holder)  # grants `first`, whose task has not run yet
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    with anyio.fail_after(5):
        second_alloc = await second
    assert pool.statistics().holder_count == 1
    await pool.release(second_alloc)
    assert_all_free(pool)


async def test_timeout_raises_pool_timeout_and_leaves_nothing(pool: GPUResourcePool) -> None:
    holder = await pool.acquire(2)
    with pytest.raises(PoolTimeout) as info:
        await pool.acquire(1, timeout=0.01)
    assert isinstance(info.value, TimeoutError)
    assert pool.statistics().waiters == 0
    await pool.release(holder)
    assert_all_free(pool)


async def test_allocation_context_releases_on_error_and_on_cancel(pool: GPUResourcePool) -> None:
    with pytest.raises(RuntimeError):
        async with pool.allocation(2):
            raise RuntimeError("job failed")
    assert_all_free(pool)
    with anyio.move_on_after(0.01):
        async with pool.allocation(2):
            await anyio.sleep_forever()
    assert_all_free(pool)


async def test_allocation_context_tolerates_an_early_manual_release(pool: GPUResourcePool) -> None:
    async with pool.allocation(1) as alloc:
        await pool.release(alloc)
    assert_all_free(pool)


async def test_release_twice_and_release_elsewhere_raise(pool: GPUResourcePool) -> None:
    alloc = await pool.acquire(1)
    await pool.release(alloc)
    with pytest.raises(AllocationNotHeld):
        await pool.release(alloc)
    async with GPUResourcePool(FakeGPUProvider(count=2)) as other:
        theirs = await other.acquire(1)
        with pytest.raises(AllocationNotHeld):
            await pool.release(theirs)
        await other.release(theirs)


async def test_acquire_nowait_does_not_jump_the_queue(pool: GPUResourcePool) -> None:
    holder = await pool.acquire(1)
    async with anyio.create_task_group() as tg:
        tg.start_soon(pool.acquire, 2)
        await wait_all_tasks_blocked()
        with pytest.raises(WouldBlock, match="1 waiting request"):
            pool.acquire_nowait(1)  # GPU 1 is free, but the head needs it
        tg.cancel_scope.cancel()
    await pool.release(holder)
    assert_all_free(pool)


async def test_close_fails_waiters_and_later_calls() -> None:
    pool = GPUResourcePool(FakeGPUProvider(count=1))
    async with pool:
        holder = await pool.acquire(1)
        errors: list[BaseException] = []

        async def waiter() -> None:
            try:
                await pool.acquire(1)
            except PoolClosed as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await wait_all_tasks_blocked()
            await pool.aclose()
        assert len(errors) == 1
        with pytest.raises(PoolClosed):
            await pool.acquire(1)
        await pool.release(holder)  # releasing after close is allowed
    assert pool.closed


async def test_using_a_pool_that_was_never_opened_says_how() -> None:
    pool = GPUResourcePool(FakeGPUProvider(count=1))
    with pytest.raises(PoolClosed, match="async with"):
        await pool.acquire(1)
    with pytest.raises(PoolClosed, match="async with"):
        pool.statistics()


async def test_a_pool_is_entered_once() -> None:
    pool = GPUResourcePool(FakeGPUProvider(count=1))
    async with pool:
        pass
    with pytest.raises(RuntimeError, match="only once"):
        async with pool:
            pass


async def test_first_snapshot_failure_is_a_provider_error() -> None:
    fake = FakeGPUProvider(count=1)
    fake.fail_next(RuntimeError("driver exploded"))
    with pytest.raises(ProviderError, match="driver exploded"):
        async with GPUResourcePool(fake):
            pass


async def test_the_provider_is_asked_once_per_refresh_interval() -> None:
    fake = FakeGPUProvider(count=8)
    async with GPUResourcePool(fake, refresh_interval=3600) as pool:
        for _ in range(2000):
            await pool.release(await pool.acquire(1))
    assert fake.snapshot_count == 1


async def test_concurrent_stale_acquires_share_one_refresh() -> None:
    fake = FakeGPUProvider(count=8)
    async with GPUResourcePool(fake, refresh_interval=3600) as pool:
        pool._monitor.mark_fresh(-1e9)  # type: ignore[union-attr]  # force staleness
        fake.set_latency(0.5)
        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(pool.acquire, 1)  # granted on the cache, none waits for NVML
        await pool.refresh()  # joins the background refresh the acquires started
        assert fake.snapshot_count == 2  # the first snapshot, and one shared refresh


async def test_blocked_waiters_cost_almost_no_cpu() -> None:
    """50 waiters blocked for 2 s: no busy loop (CPU time, not wall time, is asserted)."""
    async with GPUResourcePool(FakeGPUProvider(count=1)) as pool:
        holder = await pool.acquire(1)
        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(pool.acquire, 1)
            await wait_all_tasks_blocked()
            cpu_before = time.process_time()
            await anyio.sleep(2)
            cpu_used = time.process_time() - cpu_before
            tg.cancel_scope.cancel()
        await pool.release(holder)
    assert cpu_used < 0.25, f"50 idle waiters used {cpu_used:.3f} s of CPU in 2 s"


async def test_a_pool_cancelled_from_outside_closes_and_the_cancellation_ends_cleanly() -> None:
    # Regression: __aexit__ awaited aclose()'s checkpoint first, which raised under the
    # outer cancellation, so the pool's task group was never left and the enclosing
    # cancel scope's exit failed ("Attempted to exit a cancel scope that isn't the current
    # task's current cancel scope" on asyncio, "Nursery stack corrupted" on trio). Ctrl-C
    # under asyncio.run cancels the main task the same way.
    pool = GPUResourcePool(FakeGPUProvider(count=2))
    with anyio.CancelScope() as outer:
        async with pool:
            await pool.acquire(1)
            outer.cancel()
            await anyio.sleep_forever()
    assert outer.cancelled_caught
    assert pool.closed
