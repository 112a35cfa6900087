"""A sick driver (a snapshot that hangs) never holds a grant, a timeout or a close.

The provider here blocks its worker thread on a ``threading.Event`` until the
test cures it (or ``MAX_STALL`` real seconds pass, so that a regression fails
instead of hanging the suite). Nothing asserts wall-clock speed: each test
checks the *order* of events, e.g. that ``acquire`` returned while the stalled
snapshot had not returned yet.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import ClassVar

import anyio
import anyio.to_thread
import pytest

from gpupool import (
    FakeGPUProvider,
    GPUResourcePool,
    GPUStats,
    PoolTimeout,
    ProviderError,
    WouldBlock,
)

pytestmark = pytest.mark.anyio

#: How long a stalled snapshot blocks at most (real seconds). A fixed pool would
#: be done long before; a broken one returns only then, and its test fails.
MAX_STALL = 5.0


class SickDriver:
    """A provider whose snapshots hang after :meth:`stall` until :meth:`cure`."""

    snapshot_blocks = True

    def __init__(self, fake: FakeGPUProvider) -> None:
        self.fake = fake
        self._stalled = False
        self._cured = threading.Event()
        self._lock = threading.Lock()
        self._in_flight = 0
        #: A stalled snapshot has started / has returned.
        self.entered = threading.Event()
        self.finished = threading.Event()
        #: The most snapshots that were ever in flight at once.
        self.max_in_flight = 0

    def stall(self) -> None:
        self._stalled = True

    def cure(self) -> None:
        self._cured.set()

    def snapshot(self) -> list[GPUStats]:
        with self._lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            if self._stalled:
                self.entered.set()
                self._cured.wait(MAX_STALL)
                self.finished.set()
            return self.fake.snapshot()
        finally:
            with self._lock:
                self._in_flight -= 1


async def until(event: threading.Event) -> None:
    """Wait (off the loop) until ``event`` is set, at most ``MAX_STALL`` s."""
    assert await anyio.to_thread.run_sync(event.wait, MAX_STALL), "the event was never set"


@asynccontextmanager
async def stale_pool_on(driver: SickDriver) -> AsyncIterator[GPUResourcePool]:
    """An open pool whose cached snapshot is stale, with the driver stalled from now on."""
    try:
        async with GPUResourcePool(driver, refresh_interval=0.01) as pool:
            await anyio.sleep(0.05)  # idle: nothing refreshes, the cache goes stale
            driver.stall()
            yield pool
    finally:
        driver.cure()


async def test_acquire_grants_at_once_while_the_snapshot_hangs() -> None:
    driver = SickDriver(FakeGPUProvider(count=4))
    async with stale_pool_on(driver) as pool:
        first = await pool.acquire(1, timeout=1)
        second = await pool.acquire(1, timeout=0)
        assert not driver.finished.is_set()  # granted on the cached data
        assert first.gpu_indices != second.gpu_indices
        await until(driver.entered)  # and a refresh was started in the background
        await pool.release(first)
        await pool.release(second)


async def test_timeout_fires_on_time_while_the_snapshot_hangs() -> None:
    driver = SickDriver(FakeGPUProvider(count=1))
    async with stale_pool_on(driver) as pool:
        holder = await pool.acquire(1)
        with pytest.raises(PoolTimeout):
            await pool.acquire(1, timeout=0.2)
        with pytest.raises(PoolTimeout):
            await pool.acquire(1, timeout=0)
        assert not driver.finished.is_set()
        assert pool.statistics().waiters == 0
        await pool.release(holder)


async def test_acquire_nowait_decides_on_the_cache_and_starts_a_refresh() -> None:
    driver = SickDriver(FakeGPUProvider(count=2))
    async with stale_pool_on(driver) as pool:
        alloc = pool.acquire_nowait(1)
        await until(driver.entered)
        assert not driver.finished.is_set()
        await pool.release(alloc)


async def test_a_waiter_is_served_when_the_stalled_snapshot_lands() -> None:
    """Not grantable on the cached data (foreign memory): it waits, only one snapshot is
    ever in flight however long it hangs, and the grant comes when it lands."""
    fake = FakeGPUProvider(count=1, memory_mb=16_000)
    fake.set_memory_used(0, 15_000)  # a colleague's job
    driver = SickDriver(fake)
    async with stale_pool_on(driver) as pool:
        with pytest.raises(WouldBlock):
            pool.acquire_nowait(min_memory_mb=8000)
        granted = anyio.Event()

        async def waiter() -> None:
            async with pool.allocation(min_memory_mb=8000, timeout=2 * MAX_STALL):
                granted.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await until(driver.entered)
            fake.set_memory_used(0, 0)  # the colleague's job ends
            await anyio.sleep(0.1)  # many refresh intervals: the loop must not pile up
            assert not granted.is_set()  # nobody has seen it yet
            driver.cure()
            with anyio.fail_after(MAX_STALL):
                await granted.wait()
        assert driver.max_in_flight == 1


async def test_closing_the_pool_does_not_wait_for_a_stalled_snapshot() -> None:
    driver = SickDriver(FakeGPUProvider(count=2))
    async with stale_pool_on(driver) as pool:
        await pool.release(await pool.acquire(1))
        await until(driver.entered)
    assert not driver.finished.is_set()


class SickNVML(SickDriver):
    """Stands in for the pool's own NVMLProvider: ``close`` waits for a snapshot in the
    driver (NVMLProvider's lock), as nvmlShutdown must."""

    instances: ClassVar[list[SickNVML]] = []

    def __init__(self, *, stalled: bool) -> None:
        super().__init__(FakeGPUProvider(count=2))
        self._driver_lock = threading.Lock()
        self.closed = threading.Event()
        if stalled:
            self.stall()
        SickNVML.instances.append(self)

    def snapshot(self) -> list[GPUStats]:
        with self._driver_lock:
            return super().snapshot()

    def close(self) -> None:
        with self._driver_lock:
            self.closed.set()


@pytest.fixture
def sick_nvml(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[SickNVML]]:
    """Make ``GPUResourcePool()`` (provider=None) open a :class:`SickNVML`."""
    SickNVML.instances.clear()
    monkeypatch.setattr("gpupool._pool.pool.NVMLProvider", lambda: SickNVML(stalled=True))
    yield SickNVML
    for driver in SickNVML.instances:
        driver.cure()


async def test_open_is_bounded_when_the_first_snapshot_hangs() -> None:
    driver = SickDriver(FakeGPUProvider(count=2))
    driver.stall()
    try:
        with pytest.raises(ProviderError, match=r"did not answer .* open_timeout=0\.2 s"):
            async with GPUResourcePool(driver, open_timeout=0.2):
                pass
        assert not driver.finished.is_set()
    finally:
        driver.cure()


async def test_an_owned_nvml_stuck_at_open_is_closed_without_blocking_the_loop(
    sick_nvml: type[SickNVML],
) -> None:
    with pytest.raises(ProviderError, match="did not answer"):
        async with GPUResourcePool(open_timeout=0.2):
            pass
    (driver,) = sick_nvml.instances
    assert not driver.finished.is_set()
    assert not driver.closed.is_set()  # it waits for the driver, in the background
    driver.cure()
    await until(driver.closed)


async def test_an_owned_nvml_stuck_in_a_refresh_is_closed_without_blocking_the_loop(
    monkeypatch: pytest.MonkeyPatch, sick_nvml: type[SickNVML]
) -> None:
    monkeypatch.setattr("gpupool._pool.pool.NVMLProvider", lambda: SickNVML(stalled=False))
    async with GPUResourcePool(refresh_interval=0.01) as pool:
        (driver,) = sick_nvml.instances
        await anyio.sleep(0.05)
        driver.stall()
        await pool.release(await pool.acquire(1))
        await until(driver.entered)
    assert not driver.finished.is_set()
    driver.cure()
    await until(driver.closed)


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (0, ValueError, "open_timeout must be None or a number of seconds > 0, got 0"),
        (-1, ValueError, "open_timeout must be None or a number of seconds > 0, got -1"),
    ],
)
def test_open_timeout_is_checked(value: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        GPUResourcePool(FakeGPUProvider(count=1), open_timeout=value)  # type: ignore[arg-type]


async def test_settle_timeout_holds_while_the_snapshot_hangs() -> None:
    """A released GPU waits for its job's processes at most settle_timeout, even when
    the snapshot that could show them gone never comes back."""
    fake = FakeGPUProvider(count=1)
    driver = SickDriver(fake)
    try:
        async with GPUResourcePool(driver, refresh_interval=0.01, settle_timeout=0.3) as pool:
            holder = await pool.acquire()
            pool.register_process(holder, 4242)
            fake.add_process(0, 4242, 1000)  # the job's process, listed until the end
            await anyio.sleep(0.05)
            driver.stall()
            await pool.release(holder)  # GPU 0 settles: it waits for pid 4242 to leave
            assert pool.statistics().gpus[0].settling
            await pool.release(await pool.acquire(timeout=MAX_STALL / 2))
            assert not driver.finished.is_set()
    finally:
        driver.cure()
