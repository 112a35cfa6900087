"""GPUResourcePool over NVMLProvider over the real nvidia-ml-py bindings over the
fake libnvidia-ml: memory settle and faults, end to end.

Settle: after a release, the GPU is not granted again until a snapshot taken
after the release no longer lists the job's registered processes; after
``settle_timeout`` it is granted anyway, with their memory counted as foreign.
"""

from __future__ import annotations

import logging
import os

import anyio
import pytest
from anyio.abc import TaskStatus

from gpupool import (
    GPUAllocation,
    GPUResourcePool,
    NVMLProvider,
    UnsatisfiableRequest,
    WouldBlock,
)

from ..fake_nvml import DRIVER_NOT_LOADED, GPU_IS_LOST, FakeMachine

pytestmark = pytest.mark.anyio

JOB_MB = 6_000


async def refresh_until(pool: GPUResourcePool, settling: bool, attempts: int = 5) -> bool:
    """Refresh (a refresh already in flight may predate the change) until the GPU's
    ``settling`` is as wanted; returns what it ended as."""
    for _ in range(attempts):
        await pool.refresh()
        if pool.statistics().gpus[0].settling == settling:
            break
    return pool.statistics().gpus[0].settling


async def test_gpu_waits_until_nvml_no_longer_lists_the_job(machine: FakeMachine) -> None:
    gpu = machine.add_gpu(total_mb=10_000)
    job = os.getpid()  # a real process, so the pool can look up its session
    with NVMLProvider(environ={}) as nvml:
        async with GPUResourcePool(nvml, refresh_interval=0.01, settle_timeout=3600) as pool:
            allocation = await pool.acquire(1)
            pool.register_process(allocation, job)
            gpu.used_mb, gpu.processes = JOB_MB, {job: JOB_MB}
            machine.write()
            await pool.refresh()
            # The job's memory is its allocation's, not foreign.
            assert pool.statistics().gpus[0].memory_foreign_mb == 0

            await pool.release(allocation)
            # Snapshots after the release still list the job: the GPU stays settling.
            assert await refresh_until(pool, settling=False, attempts=3) is True
            with pytest.raises(WouldBlock):
                pool.acquire_nowait(1)

            # The job exits and the driver frees its memory.
            gpu.used_mb, gpu.processes = 0, {}
            machine.write()
            assert await refresh_until(pool, settling=False) is False
            again = pool.acquire_nowait(1)
            assert again.gpu_uuids == (nvml.snapshot()[0].uuid,)
            await pool.release(again)


async def test_settle_timeout_grants_with_the_memory_counted_as_foreign(
    machine: FakeMachine,
) -> None:
    gpu = machine.add_gpu(total_mb=10_000)
    job = os.getpid()
    with NVMLProvider(environ={}) as nvml:
        async with GPUResourcePool(nvml, refresh_interval=0.01, settle_timeout=0.2) as pool:
            allocation = await pool.acquire(1)
            pool.register_process(allocation, job)
            gpu.used_mb, gpu.processes = JOB_MB, {job: JOB_MB}
            machine.write()
            await pool.refresh()
            await pool.release(allocation)
            # The job never lets go (a zombie context, say): the waiter still gets the GPU.
            with anyio.fail_after(30):
                again = await pool.acquire(1)
            stats = pool.statistics().gpus[0]
            assert not stats.settling
            assert stats.memory_foreign_mb == JOB_MB
            await pool.release(again)


async def test_lost_gpu_stops_being_granted_while_the_other_works(machine: FakeMachine) -> None:
    machine.add_gpu()
    lost = machine.add_gpu()
    with NVMLProvider(environ={}) as nvml:
        async with GPUResourcePool(nvml, refresh_interval=0.01) as pool:
            lost.errors["error"] = GPU_IS_LOST
            machine.write()
            await pool.refresh()  # may share a refresh that started before the write,
            await pool.refresh()  # but this one starts after it
            gpus = pool.statistics().gpus
            assert [g.healthy for g in gpus] == [True, False]
            with pytest.raises(UnsatisfiableRequest):
                await pool.acquire(2)
            for _ in range(3):
                allocation = await pool.acquire(1, timeout=30)
                assert allocation.gpu_indices == (0,)
                await pool.release(allocation)


async def test_nvml_failing_mid_run_keeps_waiters_waiting_on_the_last_snapshot(
    machine: FakeMachine, caplog: pytest.LogCaptureFixture
) -> None:
    gpu = machine.add_gpu()
    granted: list[GPUAllocation] = []

    async def waiter(pool: GPUResourcePool, *, task_status: TaskStatus[None]) -> None:
        task_status.started()
        granted.append(await pool.acquire(1, timeout=30))

    with NVMLProvider(environ={}) as nvml:
        async with GPUResourcePool(nvml, refresh_interval=0.01) as pool:
            held = await pool.acquire(1)
            async with anyio.create_task_group() as tasks:
                await tasks.start(waiter, pool)
                gpu.errors["error"] = DRIVER_NOT_LOADED  # NVML as a whole fails
                machine.write()
                with caplog.at_level(logging.WARNING, logger="gpupool"):
                    await pool.refresh()  # as above: the second surely starts after the write
                    await pool.refresh()
                assert "GPU snapshot failed" in caplog.text
                assert pool.statistics().waiters == 1
                assert pool.statistics().gpus[0].healthy  # the last good snapshot stands
                del gpu.errors["error"]
                machine.write()
                await pool.release(held)
            assert len(granted) == 1
            await pool.release(granted[0])
