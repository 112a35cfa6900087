"""The Optuna adapter with a real optuna.Study: completed, failed and pruned trials."""

from __future__ import annotations

import builtins
import sys
from typing import Any

import anyio
import pytest

from gpupool import FakeGPUProvider, GPUAllocation, GPUResourcePool, ParallelRunner, TaskStatus

optuna = pytest.importorskip("optuna")  # the `optuna` extra; CI installs it with `dev`
from gpupool.integrations.optuna import OptunaStrategy  # noqa: E402

pytestmark = pytest.mark.anyio

TrialState = optuna.trial.TrialState


@pytest.fixture(autouse=True)
def _quiet_optuna() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)


async def test_a_real_study_finds_the_minimum_with_failures_and_prunings() -> None:
    """40 trials, 4 at a time on 4 fake GPUs: the best x within 0.5 of the optimum.

    The toy objective is ``(x - 2)**2`` on ``[-10, 10]``. Trials with
    ``x > 7`` fail and trials with ``x < -6`` report once and are pruned, so
    all three outcomes reach the study. Tolerance: best value < 0.25, that
    is ``|x - 2| < 0.5``; over 30 runs with shuffled completion orders the
    worst best value seen was 0.096 (median 0.004).
    """
    running = 0
    peak = 0
    gpus_seen: set[tuple[int, ...]] = set()

    async def objective(trial: Any, allocation: GPUAllocation | None) -> float:
        nonlocal running, peak
        assert allocation is not None
        gpus_seen.add(allocation.gpu_indices)
        running += 1
        peak = max(peak, running)
        try:
            x = trial.suggest_float("x", -10, 10)
            await anyio.sleep(0.001)
            if x > 7:
                raise RuntimeError("diverged")
            if x < -6:
                trial.report(1e6, step=0)
                raise optuna.TrialPruned()
            return float((x - 2) ** 2)
        finally:
            running -= 1

    sampler = optuna.samplers.TPESampler(seed=7, n_startup_trials=10)
    study = optuna.create_study(direction="minimize", sampler=sampler)
    study.enqueue_trial({"x": 8.0})  # fails, whatever the sampler would have picked
    study.enqueue_trial({"x": -8.0})  # is pruned
    strategy = OptunaStrategy(study)
    async with GPUResourcePool(FakeGPUProvider(count=4)) as pool:
        async with ParallelRunner(pool, max_parallel=4) as runner:
            outcome = await runner.optimize(
                strategy, objective, n_trials=40, required_gpus=1, retries=1, retry_backoff=0
            )
        assert pool.statistics().holders == 0
    states = [t.state for t in study.trials]
    assert len(states) == 40
    assert TrialState.FAIL in states
    assert TrialState.PRUNED in states
    assert TrialState.RUNNING not in states
    assert peak == 4
    assert gpus_seen <= {(0,), (1,), (2,), (3,)}
    assert study.best_value < 0.25  # the stated tolerance
    assert abs(study.best_params["x"] - 2) < 0.5
    assert outcome.best is not None
    assert outcome.best.value == pytest.approx(study.best_value)
    pruned = [t for t in outcome.trials if t.result.status is TaskStatus.FAILED]
    # A pruned trial is never retried; a failed one got its one retry.
    by_state = {t.number: t.state for t in study.trials}
    for trial in pruned:
        expected_attempts = 1 if by_state[trial.number] is TrialState.PRUNED else 2
        assert trial.result.attempts == expected_attempts


async def test_maximize_studies_set_the_direction() -> None:
    study = optuna.create_study(direction="maximize")

    async def objective(trial: Any, allocation: GPUAllocation | None) -> float:
        return float(trial.suggest_int("n", 0, 10))

    async with ParallelRunner(max_parallel=2) as runner:
        outcome = await runner.optimize(OptunaStrategy(study), objective, n_trials=8)
    assert outcome.direction == "maximize"
    assert outcome.best is not None
    assert outcome.best.value == study.best_value


async def test_values_that_are_not_numbers_fail_the_trial() -> None:
    study = optuna.create_study()

    async def objective(trial: Any, allocation: GPUAllocation | None) -> object:
        return [float("nan"), "x", None][trial.number]

    async with ParallelRunner() as runner:
        await runner.optimize(OptunaStrategy(study), objective, n_trials=3)
    assert [t.state for t in study.trials] == [TrialState.FAIL] * 3


def test_bad_studies_are_refused() -> None:
    with pytest.raises(TypeError, match=r"study must be an optuna\.Study"):
        OptunaStrategy("study")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="single-objective"):
        OptunaStrategy(optuna.create_study(directions=["minimize", "minimize"]))


def test_missing_optuna_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_optuna(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "optuna":
            raise ImportError("No module named 'optuna'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_optuna)
    monkeypatch.delitem(sys.modules, "optuna")
    with pytest.raises(ImportError, match=r"pip install 'gpupool\[optuna\]'"):
        OptunaStrategy(None)  # type: ignore[arg-type]
