"""A tuning process for the Optuna crash test: a journaled optimize on a sqlite study.

Usage: python tests/scripts/optuna_crash_worker.py STUDY_DB JOURNAL LOG [N_TRIALS]

Drives the study ``crash`` in ``sqlite:///STUDY_DB`` (created or loaded) with
``runner.optimize`` on 2 fake GPUs, 2 trials at a time, on the journal
JOURNAL. The objective appends ``start <number> <pid>`` to LOG when it begins
and ``end <number> <x> <pid>`` when it is about to return ``(x - 2) ** 2``,
so that the test can count how often each trial really ran. Prints ``ready``
once the runner owns the journal, and the best value and the number of trials
of the result at the end.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import anyio
import optuna

from gpupool import FakeGPUProvider, GPUAllocation, GPUResourcePool, ParallelRunner
from gpupool.integrations.optuna import OptunaStrategy


def note(log: Path, line: str) -> None:
    with open(log, "a") as f:
        f.write(f"{line} {os.getpid()}\n")


async def main(db: str, journal: str, log: Path, n_trials: int) -> int:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="crash", storage=f"sqlite:///{db}", load_if_exists=True)

    async def objective(trial: Any, allocation: GPUAllocation | None) -> float:
        assert allocation is not None
        note(log, f"start {trial.number}")
        x = trial.suggest_float("x", -10, 10)
        await anyio.sleep(0.3)
        note(log, f"end {trial.number} {x!r}")
        return (x - 2) ** 2

    async with (
        GPUResourcePool(FakeGPUProvider(count=2)) as pool,
        ParallelRunner(pool, max_parallel=2, journal=journal) as runner,
    ):
        print("ready", flush=True)
        outcome = await runner.optimize(
            OptunaStrategy(study), objective, n_trials=n_trials, required_gpus=1
        )
    assert outcome.best is not None
    print(f"best {outcome.best.value!r} trials {len(outcome.trials)}", flush=True)
    return 0


if __name__ == "__main__":
    n = int(sys.argv[4]) if len(sys.argv) > 4 else 8
    sys.exit(anyio.run(main, sys.argv[1], sys.argv[2], Path(sys.argv[3]), n))
