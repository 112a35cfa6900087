"""An Optuna study over every GPU of the machine, one trial per GPU, resumable."""

import re
from pathlib import Path

import anyio
import gpupool
import optuna
from gpupool.integrations.optuna import OptunaStrategy


async def objective(trial: optuna.Trial, allocation: gpupool.GPUAllocation) -> float:
    lr = trial.suggest_float("lr", 1e-5, 1e-1, log=True)
    batch_size = trial.suggest_categorical("batch_size", [32, 64, 128])
    log = Path("logs") / f"trial-{trial.number}.log"
    await gpupool.run_process(
        ["python", "train.py", f"--lr={lr}", f"--batch-size={batch_size}"],
        allocation=allocation, log_path=log, timeout=3600,
    )
    return float(re.findall(r"loss=(\S+)", log.read_text())[-1])


async def main() -> None:
    Path("logs").mkdir(exist_ok=True)
    study = optuna.create_study(
        study_name="lr-sweep", storage="sqlite:///study.db", load_if_exists=True,
        direction="minimize",
    )
    async with gpupool.GPUResourcePool() as pool:
        # max_parallel: one trial per GPU; the journal makes a rerun resume the study.
        async with gpupool.ParallelRunner(pool, journal="study.journal.sqlite") as runner:
            await runner.optimize(OptunaStrategy(study), objective, n_trials=12,
                                  required_gpus=1, retries=1)
    print(f"{len(study.trials)} trials; best {study.best_params}: {study.best_value:.4f}")


optuna.logging.set_verbosity(optuna.logging.WARNING)
anyio.run(main)
