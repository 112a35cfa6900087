"""The pool on trio's MockClock(autojump_threshold=0): hours of waiting in milliseconds."""

from __future__ import annotations

import trio
from trio.testing import MockClock

from gpupool import FakeGPUProvider, GPUResourcePool, PoolTimeout


def run_virtual(scenario):  # type: ignore[no-untyped-def]
    return trio.run(scenario, clock=MockClock(autojump_threshold=0))


def test_memory_freed_outside_is_noticed_within_one_refresh_interval() -> None:
    """A colleague frees memory after an hour; the waiter gets it within one interval,
    and the provider is asked about once per interval meanwhile (no busy loop)."""
    fake = FakeGPUProvider(count=1, memory_mb=16_000)
    fake.set_memory_used(0, 15_000)

    async def scenario() -> float:
        async with GPUResourcePool(fake, refresh_interval=5) as pool, trio.open_nursery() as n:

            async def colleague_finishes() -> None:
                await trio.sleep(3600)
                fake.set_memory_used(0, 0)

            n.start_soon(colleague_finishes)
            async with pool.allocation(min_memory_mb=8000, timeout=7200):
                return trio.current_time()

    granted_at = run_virtual(scenario)
    assert 3600 <= granted_at <= 3605
    assert 3600 / 5 <= fake.snapshot_count <= 3600 / 5 + 3


def test_timeout_fires_at_its_deadline_in_virtual_time() -> None:
    async def scenario() -> tuple[float, int]:
        async with GPUResourcePool(FakeGPUProvider(count=1)) as pool:
            holder = await pool.acquire()
            start = trio.current_time()
            try:
                await pool.acquire(timeout=300)
            except PoolTimeout:
                elapsed = trio.current_time() - start
            waiters = pool.statistics().waiters
            await pool.release(holder)
            return elapsed, waiters

    elapsed, waiters = run_virtual(scenario)
    assert elapsed == 300
    assert waiters == 0


def test_a_release_at_the_deadline_either_grants_or_times_out_cleanly() -> None:
    """Timeout racing a release at the same virtual instant: whichever wins, nothing leaks."""

    async def scenario() -> tuple[str, int]:
        async with GPUResourcePool(FakeGPUProvider(count=1)) as pool:
            holder = await pool.acquire()
            outcome = "?"
            async with trio.open_nursery() as n:

                async def release_at_deadline() -> None:
                    await trio.sleep(10)
                    await pool.release(holder)

                n.start_soon(release_at_deadline)
                try:
                    alloc = await pool.acquire(timeout=10)
                except PoolTimeout:
                    outcome = "timed out"
                else:
                    outcome = "granted"
                    await pool.release(alloc)
            return outcome, pool.statistics().holder_count

    outcome, holders = run_virtual(scenario)
    assert outcome in {"granted", "timed out"}
    assert holders == 0


def test_refresh_loop_never_spins_on_a_rounding_error() -> None:
    """Regression: with last + interval - now == 0 but now - last < interval (float
    rounding), the refresh loop used to loop without awaiting, hanging the event loop
    forever under MockClock (time stands still while nothing awaits)."""
    last, now = 31.09360436257106, 32.09360436257106
    assert last + 1.0 - now <= 0
    assert now - last < 1.0

    async def scenario() -> int:
        fake = FakeGPUProvider(count=1)
        async with GPUResourcePool(fake, refresh_interval=1.0) as pool:
            holder = await pool.acquire()
            clock.jump(now - trio.current_time())
            pool._monitor.mark_fresh(last)  # type: ignore[union-attr]
            with trio.move_on_after(10):
                await pool.acquire()  # waits; the monitor loop must keep yielding
            await pool.release(holder)
        return fake.snapshot_count

    clock = MockClock(autojump_threshold=0)
    snapshots = trio.run(scenario, clock=clock)
    assert 5 <= snapshots <= 15


def test_settle_timeout_holds_while_the_provider_fails() -> None:
    """After a release, the GPU waits for its job's processes at most settle_timeout,
    also when every snapshot fails (nothing could ever show the processes gone)."""
    fake = FakeGPUProvider(count=1)

    async def scenario() -> tuple[float, float]:
        async with GPUResourcePool(fake, refresh_interval=1, settle_timeout=30) as pool:
            holder = await pool.acquire()
            pool.register_process(holder, 4242)
            fake.fail_next(times=1000)
            released_at = trio.current_time()
            await pool.release(holder)
            async with pool.allocation(timeout=3600):
                return released_at, trio.current_time()

    released_at, granted_at = run_virtual(scenario)
    assert released_at + 30 <= granted_at <= released_at + 31
