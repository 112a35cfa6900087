"""Train with PyTorch DDP on the GPUs of one allocation: one torchrun worker per GPU."""

import anyio
import gpupool


async def main() -> None:
    async with gpupool.GPUResourcePool() as pool:
        async with pool.allocation(required_gpus=2, min_memory_mb=20_000, timeout=3600) as alloc:
            result = await gpupool.run_process(
                ["torchrun", "--standalone", f"--nproc-per-node={len(alloc.gpu_indices)}",
                 "ddp_train.py"],
                allocation=alloc,       # CUDA_VISIBLE_DEVICES: the allocation's GPUs, by UUID
                pool=pool,
                log_path="ddp.log",
                timeout=3600,
            )
    print(f"DDP on GPUs {alloc.gpu_indices} took {result.duration_s:.1f} s; see ddp.log")


anyio.run(main)
