"""Run an ``optuna.Study`` through :meth:`gpupool.ParallelRunner.optimize`.

Needs the ``optuna`` extra: ``pip install 'gpupool[optuna]'``.

>>> study = optuna.create_study(direction="minimize")          # doctest: +SKIP
>>> async with ParallelRunner(pool, max_parallel=4) as runner:  # doctest: +SKIP
...     await runner.optimize(OptunaStrategy(study), objective, n_trials=100,
...                           required_gpus=1)

The objective receives the ``optuna.trial.Trial`` and the GPU allocation; it
calls ``trial.suggest_*`` itself (Optuna's define-by-run style), may call
``trial.report`` / ``trial.should_prune`` and raise ``optuna.TrialPruned``.
Each result is told to the study: a number completes the trial, a pruned
trial is told PRUNED, anything else (an exception, a timeout, a value that
is not a finite number, a cancelled trial) is told FAIL.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal, final

from .._tasks import TaskResult

if TYPE_CHECKING:
    import optuna

__all__ = ["OptunaStrategy"]


def _import_optuna() -> Any:
    try:
        import optuna
    except ImportError as exc:
        raise ImportError(
            "gpupool.integrations.optuna needs Optuna, which is not installed; "
            "install the extra: pip install 'gpupool[optuna]'"
        ) from exc
    return optuna


@final
class OptunaStrategy:
    """The ask/tell strategy that drives a single-objective ``optuna.Study``."""

    def __init__(self, study: optuna.Study) -> None:
        optuna = _import_optuna()
        if not isinstance(study, optuna.Study):
            raise TypeError(f"study must be an optuna.Study, got {study!r}")
        if len(study.directions) != 1:
            raise ValueError(
                "OptunaStrategy drives single-objective studies only, got a study with "
                f"{len(study.directions)} directions"
            )
        self.study = study
        self._optuna = optuna
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        self.direction: Literal["minimize", "maximize"] = "maximize" if maximize else "minimize"

    def ask(self) -> optuna.trial.Trial:
        trial: optuna.trial.Trial = self.study.ask()
        return trial

    def retry_on(self, error: BaseException) -> bool:
        """``optimize``'s default retry filter: any exception but a pruning."""
        return isinstance(error, Exception) and not isinstance(error, self._optuna.TrialPruned)

    def _pruned(self, result: TaskResult) -> bool:
        if result.exception is not None:
            return isinstance(result.exception, self._optuna.TrialPruned)
        return (result.error or "").startswith("TrialPruned:")

    def tell(self, trial: optuna.trial.Trial, result: TaskResult) -> None:
        state = self._optuna.trial.TrialState
        value = result.value
        number = not isinstance(value, bool) and isinstance(value, (int, float))
        if result.ok and number and math.isfinite(value):
            self.study.tell(trial, float(value))
            return
        if self._pruned(result):
            self.study.tell(trial, state=state.PRUNED)
        else:
            self.study.tell(trial, state=state.FAIL)
