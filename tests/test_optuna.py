"""The Optuna adapter with a real optuna.Study: completed, failed and pruned trials."""

from __future__ import annotations

import builtins
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest

from gpupool import (
    FakeGPUProvider,
    GPUAllocation,
    GPUResourcePool,
    Journal,
    ParallelRunner,
    TaskStatus,
)

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
        assert pool.statistics().holder_count == 0
    states = [t.state for t in study.trials]
    # Every failed trial got its one retry, a new trial of the same x; pruned ones none.
    retries = [t for t in study.trials if "gpupool:retry_of" in t.system_attrs]
    first_failures = [
        t
        for t in study.trials
        if t.state is TrialState.FAIL and "gpupool:retry_of" not in t.system_attrs
    ]
    assert len(states) == 40 + len(retries)
    assert len(retries) == len(first_failures)
    for retry in retries:
        failed = study.trials[retry.system_attrs["gpupool:retry_of"]]
        assert failed.state is TrialState.FAIL
        assert retry.params == failed.params
    assert TrialState.FAIL in states
    assert TrialState.PRUNED in states
    assert TrialState.RUNNING not in states
    assert peak == 4
    assert gpus_seen <= {(0,), (1,), (2,), (3,)}
    assert study.best_value < 0.25  # the stated tolerance
    assert abs(study.best_params["x"] - 2) < 0.5
    assert outcome.best is not None
    assert outcome.best.value == pytest.approx(study.best_value)
    assert [t.number for t in outcome.trials] == [t.number for t in study.trials]
    by_state = {t.number: t.state for t in study.trials}
    for trial in outcome.trials:
        expected_attempts = (
            2 if "gpupool:retry_of" in study.trials[trial.number].system_attrs else 1
        )
        assert trial.result.attempts == expected_attempts
        if by_state[trial.number] is TrialState.PRUNED:
            assert trial.number not in {r.system_attrs["gpupool:retry_of"] for r in retries}


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


# -- keys, resume and retries ------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
CRASH_WORKER = ROOT / "tests" / "scripts" / "optuna_crash_worker.py"


def _square(trial: Any, allocation: GPUAllocation | None) -> float:
    return float((trial.suggest_float("x", -10, 10) - 2) ** 2)


def _assert_consistent(study: Any) -> None:
    """Every trial finished, and every COMPLETE value is the objective of its own params."""
    for trial in study.trials:
        assert trial.state in (TrialState.COMPLETE, TrialState.FAIL), trial
        if trial.state is TrialState.COMPLETE:
            assert trial.value == pytest.approx((trial.params["x"] - 2) ** 2), trial


async def test_two_studies_on_one_journaled_runner_run_their_own_trials(tmp_path: Path) -> None:
    """Regression: both studies were keyed trial-0, trial-1, ...; B got A's trials
    back and telling them raised ``Cannot tell a COMPLETE trial``."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    a = optuna.create_study(study_name="a", storage=storage)
    b = optuna.create_study(study_name="b", storage=storage)
    async with ParallelRunner(max_parallel=2, journal=tmp_path / "gp.sqlite") as runner:
        first = await runner.optimize(OptunaStrategy(a), _square, n_trials=3)
        second = await runner.optimize(OptunaStrategy(b), _square, n_trials=3)
        # The same study again: a study of its own, with new trials.
        again = await runner.optimize(OptunaStrategy(a), _square, n_trials=2)
    assert len(a.trials) == 5
    assert len(b.trials) == 3
    for study in (a, b):
        _assert_consistent(study)
        assert all(t.state is TrialState.COMPLETE for t in study.trials)
    assert [t.number for t in first.trials] == [0, 1, 2]
    assert [t.number for t in again.trials] == [3, 4]
    assert not any(t.result.from_journal for t in (*first.trials, *second.trials))
    keys = {t.result.key for t in (*first.trials, *second.trials, *again.trials)}
    assert len(keys) == 8
    stamp = OptunaStrategy(a).study_key
    assert stamp.startswith("a@")
    assert first.trials[0].result.key == f"{stamp}/trial-0"
    assert again.trials[0].result.key == f"{stamp}-1/trial-3"


async def test_a_retry_is_a_new_trial_with_the_same_params() -> None:
    """Regression: the retry re-ran the same Optuna trial, so its report was
    ignored ("step=0 is already reported", an error under this suite's
    filterwarnings) and the pruner saw the failed attempt's value."""
    attempts: list[tuple[int, float]] = []

    def flaky(trial: Any, allocation: GPUAllocation | None) -> float:
        x = trial.suggest_float("x", -10, 10)
        attempts.append((trial.number, x))
        first = len(attempts) == 1
        trial.report(1e6 if first else 1.0, step=0)
        if first:
            raise RuntimeError("CUDA error: an illegal memory access")
        return (x - 2) ** 2

    study = optuna.create_study(pruner=optuna.pruners.MedianPruner(n_startup_trials=0))
    # One trial at a time, so the study's trial numbers follow the attempts.
    async with ParallelRunner(max_parallel=1) as runner:
        outcome = await runner.optimize(
            OptunaStrategy(study), flaky, n_trials=2, retries=1, retry_backoff=0
        )
    failed, retried, other = study.trials
    assert failed.state is TrialState.FAIL
    assert failed.intermediate_values == {0: 1e6}
    assert retried.state is TrialState.COMPLETE
    assert retried.params == failed.params  # the same point, tried again
    assert retried.intermediate_values == {0: 1.0}  # only its own report
    assert retried.system_attrs["gpupool:retry_of"] == failed.number
    assert other.state is TrialState.COMPLETE
    assert [n for n, _ in attempts] == [0, 1, 2]
    assert attempts[0][1] == attempts[1][1]
    by_number = {t.number: t for t in outcome.trials}
    assert by_number[0].result.status is TaskStatus.FAILED
    assert by_number[1].result.attempts == 2
    assert by_number[1].result.key.endswith("/trial-1-retry")
    assert len(outcome.trials) == 3  # two asked, one retry


async def test_a_pruned_trial_is_not_retried_and_retries_run_out() -> None:
    def always_fails(trial: Any, allocation: GPUAllocation | None) -> float:
        trial.suggest_float("x", 0, 1)
        raise RuntimeError("broken")

    study = optuna.create_study()
    async with ParallelRunner(max_parallel=2) as runner:
        await runner.optimize(
            OptunaStrategy(study), always_fails, n_trials=2, retries=2, retry_backoff=0
        )
    assert [t.state for t in study.trials] == [TrialState.FAIL] * 6  # 2 x (1 + 2 retries)

    def pruned(trial: Any, allocation: GPUAllocation | None) -> float:
        raise optuna.TrialPruned()

    study = optuna.create_study()
    async with ParallelRunner() as runner:
        await runner.optimize(OptunaStrategy(study), pruned, n_trials=2, retries=3)
    assert [t.state for t in study.trials] == [TrialState.PRUNED] * 2


async def test_a_rerun_tells_the_result_the_study_missed(tmp_path: Path) -> None:
    """The run stops between the journal's commit of a result and the study's
    tell (here a tell that raises): the rerun tells that trial its own value
    from the journal, fails the trials that were cut short, and runs no
    finished trial again."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    journal = tmp_path / "gp.sqlite"
    calls: list[int] = []
    told = 0
    two_told = anyio.Event()

    async def objective(trial: Any, allocation: GPUAllocation | None) -> float:
        calls.append(trial.number)
        x = trial.suggest_float("x", -10, 10)
        if trial.number == 2:
            await two_told.wait()  # #0 and #1 are told first
        if trial.number >= 3:
            await anyio.sleep_forever()  # in flight when the study stops
        return (x - 2) ** 2

    study = optuna.create_study(study_name="s", storage=storage)
    real_tell = study.tell

    def tell(trial: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal told
        if trial == 2:
            raise ConnectionError("the study's database went away")
        told += 1
        if told == 2:
            two_told.set()
        return real_tell(trial, *args, **kwargs)

    study.tell = tell  # type: ignore[method-assign]
    async with ParallelRunner(max_parallel=3, journal=journal) as runner:
        with pytest.raises(ConnectionError):
            await runner.optimize(OptunaStrategy(study), objective, n_trials=6)
    study = optuna.load_study(study_name="s", storage=storage)
    assert [t.state for t in study.trials[:3]] == [TrialState.COMPLETE] * 2 + [TrialState.RUNNING]
    assert TrialState.RUNNING in {t.state for t in study.trials[3:]}
    ran_first = list(calls)

    async def quick(trial: Any, allocation: GPUAllocation | None) -> float:
        calls.append(trial.number)
        return float((trial.suggest_float("x", -10, 10) - 2) ** 2)

    async with ParallelRunner(max_parallel=3, journal=journal) as runner:
        outcome = await runner.optimize(OptunaStrategy(study), quick, n_trials=6)
    study = optuna.load_study(study_name="s", storage=storage)
    _assert_consistent(study)
    assert len(study.trials) == 6
    assert study.trials[2].state is TrialState.COMPLETE  # told from the journal
    interrupted = [t.number for t in study.trials if t.state is TrialState.FAIL]
    assert interrupted
    assert all(n >= 3 for n in interrupted)
    rerun = calls[len(ran_first) :]
    assert not set(rerun) & set(ran_first), "no trial of the first run ran again"
    assert [t.number for t in outcome.trials] == list(range(6))
    by_number = {t.number: t for t in outcome.trials}
    assert by_number[2].result.from_journal
    assert by_number[interrupted[0]].result.error.startswith("TrialInterrupted:")
    assert outcome.best is not None
    assert outcome.best.value == pytest.approx(study.best_value)


async def test_a_new_study_of_the_same_name_is_not_given_old_results(tmp_path: Path) -> None:
    journal = tmp_path / "gp.sqlite"
    for run in range(2):
        storage = f"sqlite:///{tmp_path / f'optuna-{run}.db'}"
        study = optuna.create_study(study_name="same", storage=storage)
        async with ParallelRunner(journal=journal) as runner:
            outcome = await runner.optimize(OptunaStrategy(study), _square, n_trials=3)
        assert not any(t.result.from_journal for t in outcome.trials)
        _assert_consistent(study)


async def test_a_journal_of_another_study_under_one_key_prefix_is_an_error(
    tmp_path: Path,
) -> None:
    """A new study run under the key_prefix of an old one would be told the
    old study's values: refused instead."""
    journal = tmp_path / "gp.sqlite"
    async with ParallelRunner(journal=journal) as runner:
        await runner.optimize(
            OptunaStrategy(optuna.create_study()), _square, n_trials=2, key_prefix="s"
        )
    study = optuna.create_study()
    async with ParallelRunner(journal=journal) as runner:
        with pytest.raises(RuntimeError, match="belongs to another study"):
            await runner.optimize(OptunaStrategy(study), _square, n_trials=2, key_prefix="s")


def _start_crash_worker(tmp_path: Path) -> subprocess.Popen[str]:
    args = [str(tmp_path / "optuna.db"), str(tmp_path / "gp.sqlite"), str(tmp_path / "log")]
    return subprocess.Popen(
        [sys.executable, str(CRASH_WORKER), *args, "8"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _log(tmp_path: Path) -> list[list[str]]:
    path = tmp_path / "log"
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def test_resume_after_kill_9_leaves_every_trial_consistent(tmp_path: Path) -> None:
    """Regression: the rerun told new trials #6-#9 the values of #0-#3 with
    empty params, and #4, #5 stayed RUNNING forever.

    A real process runs a journaled optimize of 8 trials on a sqlite study and
    is SIGKILLed just after its 2nd, then (rerun) its 5th trial's objective
    returned; a last run finishes the study.
    """
    for ended in (2, 5):
        worker = _start_crash_worker(tmp_path)
        assert worker.stdout is not None
        assert worker.stdout.readline() == "ready\n", worker.communicate()[1]
        while sum(line[0] == "end" for line in _log(tmp_path)) < ended:
            assert worker.poll() is None, worker.communicate()
            time.sleep(0.01)
        worker.send_signal(signal.SIGKILL)
        _, err = worker.communicate(timeout=30)
        assert worker.returncode == -signal.SIGKILL, err
    final = _start_crash_worker(tmp_path)
    out, err = final.communicate(timeout=60)
    assert final.returncode == 0, err

    study = optuna.load_study(study_name="crash", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    _assert_consistent(study)  # nothing RUNNING, every value its own params'
    assert [t.number for t in study.trials] == list(range(8))  # n_trials over all runs
    log = _log(tmp_path)
    started = Counter(int(line[1]) for line in log if line[0] == "start")
    assert max(started.values()) == 1, f"a trial ran twice: {log}"
    ended_x = {int(line[1]): float(line[2]) for line in log if line[0] == "end"}
    for trial in study.trials:
        if trial.state is TrialState.COMPLETE:
            assert ended_x[trial.number] == trial.params["x"]
    failed = [t for t in study.trials if t.state is TrialState.FAIL]
    assert len(failed) <= 4  # at most the 2 trials in flight at each kill
    with Journal(tmp_path / "gp.sqlite") as journal:
        records = {r.key: r for r in journal.records()}
    key = OptunaStrategy(study).study_key
    assert sorted(records) == sorted(f"{key}/trial-{n}" for n in range(8))
    for trial in study.trials:
        record = records[f"{key}/trial-{trial.number}"]
        if trial.state is TrialState.COMPLETE:
            assert record.status is TaskStatus.SUCCEEDED
            assert record.value == trial.value
        else:
            assert record.status is TaskStatus.FAILED
            assert (record.error or "").startswith("TrialInterrupted:")
    assert out.split() == ["ready", "best", repr(study.best_value), "trials", "8"]


def test_a_search_space_makes_the_parameters_on_the_driver() -> None:
    space = {"x": optuna.distributions.FloatDistribution(-1.0, 1.0)}
    strategy = OptunaStrategy(optuna.create_study(), search_space=space)
    trial = strategy.ask()
    assert set(trial.params) == {"x"}
    assert trial.suggest_float("x", -1.0, 1.0) == trial.params["x"]


@pytest.mark.parametrize(
    "space",
    [{}, ["x"], {"x": (0.0, 1.0)}, {1: optuna.distributions.FloatDistribution(0.0, 1.0)}],
)
def test_a_search_space_that_is_not_one_is_refused(space: Any) -> None:
    with pytest.raises(TypeError, match="search_space"):
        OptunaStrategy(optuna.create_study(), search_space=space)
