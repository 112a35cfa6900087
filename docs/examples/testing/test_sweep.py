"""A GPU test suite for code that uses gpupool: `pytest` here, or `pytest -n 4`."""

import os
import subprocess
import sys

import pytest

import gpupool
from gpupool.testing import virtual_clock


# The code under test: a sweep that trains one config per GPU.
async def sweep(runner, configs):
    async def trial(config, allocation):
        done = await gpupool.run_process(
            [sys.executable, "-c", f"print({config['lr']} * 2)"], allocation=allocation
        )
        return done.returncode

    results = await runner.map(trial, configs, required_gpus=1)
    return [r.value for r in results]


@pytest.mark.anyio
@pytest.mark.fake_gpus(2)
async def test_every_config_runs(gpu_runner):
    assert await sweep(gpu_runner, [{"lr": 0.1}, {"lr": 0.2}, {"lr": 0.3}]) == [0, 0, 0]


@pytest.mark.anyio
@pytest.mark.fake_gpus(2, memory_mb=16_000, memory_used_mb=[15_000, 0])
async def test_a_busy_gpu_is_left_alone(gpu_pool):
    async with gpu_pool.allocation(1, min_memory_mb=8_000) as allocation:
        assert allocation.gpu_indices == (1,)


@virtual_clock()
@pytest.mark.anyio
@pytest.mark.fake_gpus(1)
async def test_an_hour_of_waiting_takes_no_time(gpu_pool):
    async with gpu_pool.allocation(1):
        with pytest.raises(gpupool.PoolTimeout):
            await gpu_pool.acquire(1, timeout=3600)


@pytest.mark.gpus(1)
def test_a_real_job_sees_only_its_gpu(gpu_lease):
    seen = subprocess.run(
        [sys.executable, "-c", "import os; print(os.environ['CUDA_VISIBLE_DEVICES'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert seen == os.environ["CUDA_VISIBLE_DEVICES"] == gpu_lease.gpu_uuids[0]
