import random
import re
from pathlib import Path

import anyio
import gpupool


def parse_loss(log_path: str) -> float:
    """The last `loss=...` that train.py printed."""
    return float(re.findall(r"loss=(\S+)", Path(log_path).read_text())[-1])


async def trial(config: dict, allocation: gpupool.GPUAllocation) -> float:
    log = f"logs/{config['name']}.log"
    await gpupool.run_process(   # raises gpupool.ProcessFailed if train.py fails
        ["python", "train.py", f"--lr={config['lr']}", f"--batch-size={config['batch_size']}"],
        allocation=allocation,
        log_path=log,
    )
    return parse_loss(log)


async def main() -> None:
    Path("logs").mkdir(exist_ok=True)  # run_process appends to the log; its directory must exist
    configs = [
        {"name": f"t{i}", "lr": 10 ** random.uniform(-5, -2), "batch_size": random.choice([32, 64, 128])}
        for i in range(24)
    ]
    async with gpupool.GPUResourcePool() as pool:                  # the machine's GPUs, via NVML
        async with gpupool.ParallelRunner(pool, max_parallel=8) as runner:
            with gpupool.ProgressDisplay(runner, total=len(configs)):  # a progress bar
                results = await runner.map(trial, configs, required_gpus=1, timeout=1800,
                                           retries=1, key=lambda c: c["name"])
    ok = [(r.value, c) for r, c in zip(results, configs) if r.ok]
    print(min(ok, key=lambda pair: pair[0]))
    for r in results:
        if not r.ok:
            print(r.key, r.status.name, r.error)


anyio.run(main)
