import random
import re
from pathlib import Path

import anyio
import gpupool


class RandomSearch:
    def __init__(self) -> None:
        self.asked = 0

    def ask(self) -> dict:
        self.asked += 1
        return {"name": f"t{self.asked}", "lr": 10 ** random.uniform(-5, -2),
                "batch_size": random.choice([32, 64, 128])}

    def tell(self, suggestion: dict, result: gpupool.TaskResult) -> None:
        print(suggestion, result.status.name, result.value)


async def trial(config: dict, allocation: gpupool.GPUAllocation) -> float:
    log = f"logs/{config['name']}.log"
    await gpupool.run_process(
        ["python", "train.py", f"--lr={config['lr']}", f"--batch-size={config['batch_size']}"],
        allocation=allocation,
        log_path=log,
    )
    return float(re.findall(r"loss=(\S+)", Path(log).read_text())[-1])


async def main() -> None:
    Path("logs").mkdir(exist_ok=True)
    async with gpupool.GPUResourcePool() as pool:
        async with gpupool.ParallelRunner(pool, max_parallel=8) as runner:
            outcome = await runner.optimize(RandomSearch(), trial, n_trials=24,
                                            required_gpus=1, timeout=1800)
    print(outcome.best.suggestion, outcome.best.value)


anyio.run(main)
