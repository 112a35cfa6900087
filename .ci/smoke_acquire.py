"""Acquire and release fake GPUs on one backend, as a user's first script would.

Run by .ci/plain_install.sh in a venv holding only the wheel (plus trio for
``trio``): ``python smoke_acquire.py asyncio|trio``. Exits non-zero on any
failure, and prints one line saying what worked.
"""

from __future__ import annotations

import sys

import anyio

import gpupool


def blocking_double(x: int) -> int:
    return 2 * x


async def main() -> str:
    provider = gpupool.FakeGPUProvider(count=2)
    async with gpupool.GPUResourcePool(provider) as pool:
        # Two allocations at once, one GPU each, then released.
        first = await pool.acquire(1, timeout=10)
        second = await pool.acquire(1, timeout=10)
        assert {first.gpu_indices, second.gpu_indices} == {(0,), (1,)}, (first, second)
        assert first.gpu_uuids[0] in first.env["CUDA_VISIBLE_DEVICES"], first.env
        await pool.release(first)
        await pool.release(second)
        async with pool.allocation(required_gpus=2, timeout=10) as both:
            assert both.gpu_indices == (0, 1), both
        assert pool.statistics().free_gpus == (0, 1), pool.statistics()
        # The runner and run_blocking, which tell the event loop's thread from a worker's.
        async with gpupool.ParallelRunner(pool) as runner:
            results = await runner.map(lambda item, allocation: item, range(4), required_gpus=1)
            doubled = await gpupool.run_blocking(blocking_double, 21)
        assert [r.value for r in results] == [0, 1, 2, 3], results
        assert doubled == 42
        assert pool.statistics().free_gpus == (0, 1), pool.statistics()
    return f"acquire/release on 2 fake GPUs under {backend}: ok (gpupool from {gpupool.__file__})"


if __name__ == "__main__":
    backend = sys.argv[1]
    print(anyio.run(main, backend=backend))
