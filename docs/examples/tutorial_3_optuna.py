import math
import random

import anyio
import gpupool
import optuna
from gpupool.integrations.optuna import OptunaStrategy


def train_one_epoch(lr: float, batch_size: int, allocation: gpupool.GPUAllocation) -> float:
    """A stand-in for one epoch of your training on `allocation`'s GPUs: returns the loss."""
    return (math.log10(lr) + 3.5) ** 2 + 10 / batch_size + random.uniform(0, 0.1)


async def objective(trial: optuna.Trial, allocation: gpupool.GPUAllocation) -> float:
    lr = trial.suggest_float("lr", 1e-5, 1e-2, log=True)
    batch_size = trial.suggest_categorical("batch_size", [32, 64, 128])
    for epoch in range(10):
        loss = await gpupool.run_blocking(train_one_epoch, lr, batch_size, allocation)
        trial.report(loss, step=epoch)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return loss


async def main() -> None:
    study = optuna.create_study(direction="minimize", pruner=optuna.pruners.MedianPruner())
    async with gpupool.GPUResourcePool() as pool:
        async with gpupool.ParallelRunner(pool, max_parallel=8) as runner:
            await runner.optimize(OptunaStrategy(study), objective, n_trials=100,
                                  required_gpus=1, timeout=1800, retries=1)
    print(study.best_params, study.best_value)


optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial is a lot
anyio.run(main)
