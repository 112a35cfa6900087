import anyio
import attrs
import gpupool


@attrs.frozen
class Config:
    name: str
    parameters: float  # the model's size


def gpus_for(config: Config) -> int:
    """The fewest GPUs of 80 GB that can train the model."""
    return next(k for k in (1, 2, 4, 8)
                if gpupool.estimate_memory_mb(config.parameters, gpus=k, training=True) <= 80_000)


async def trial(config: Config, allocation: gpupool.GPUAllocation) -> str:
    return f"{config.name}: {len(allocation.gpu_indices)} GPUs, {allocation.memory_mb} MB each"


async def main() -> None:
    configs = [Config("small", 1e9), Config("medium", 7e9), Config("large", 13e9)]
    async with gpupool.GPUResourcePool() as pool:
        async with gpupool.ParallelRunner(pool) as runner:
            results = await runner.map(
                trial, configs,
                required_gpus=gpus_for,
                min_memory_mb=lambda c: gpupool.estimate_memory_mb(c.parameters, gpus=gpus_for(c), training=True),
            )
    for result in results:
        print(result.value)          # small: 1 GPUs, ..., medium: 2 GPUs, ..., large: 4 GPUs, ...
    assert [gpus_for(c) for c in configs] == [1, 2, 4]


anyio.run(main)
