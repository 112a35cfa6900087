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

Which trial is which: the strategy's ``study_key`` is the study's name and a
stamp it stores in the study (so that a new study of the same name is not
taken for the old one), and each trial is keyed by its own ``trial.number``.
On a journaled runner a rerun therefore resumes the study (``docs/runner.md``):
a trial the journal finished but the study never heard of is told its own
result, a trial the study shows RUNNING that the journal never finished is
told FAIL. This assumes that one runner at a time drives the study.

A retry is a new trial with the failed one's parameters (as Optuna's own
``RetryFailedTrialCallback`` does): the failed attempt stays a FAIL trial with
its own reports, and the pruner sees the new attempt's reports only.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, final

from .._core.checks import is_number
from .._core.results import TaskResult

if TYPE_CHECKING:
    import optuna

__all__ = ["OptunaStrategy"]

#: The study's system attribute that holds gpupool's stamp for it.
_STAMP = "gpupool:study_stamp"
#: The system attribute of a retry's trial: the number of the trial it repeats.
_RETRY_OF = "gpupool:retry_of"


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
    """The ask/tell strategy that drives a single-objective ``optuna.Study``.

    ``search_space`` (parameter name -> ``optuna.distributions`` distribution)
    makes every trial's parameters on the driver (``study.ask(search_space)``),
    so ``trial.params`` is filled before the objective runs. That is what a
    trial needs to be sent to another process, a Ray node for one: there,
    ``trial.suggest_*`` of a parameter in the space returns the value the
    driver's study chose, while a suggestion made only on the node would never
    reach the driver's study (``RayCluster`` refuses such a trial).
    """

    def __init__(
        self,
        study: optuna.Study,
        *,
        search_space: Mapping[str, optuna.distributions.BaseDistribution] | None = None,
    ) -> None:
        optuna = _import_optuna()
        if not isinstance(study, optuna.Study):
            raise TypeError(f"study must be an optuna.Study, got {study!r}")
        if search_space is not None:
            if not isinstance(search_space, Mapping) or not search_space:
                raise TypeError(
                    "search_space must be a non-empty mapping of parameter names to "
                    f"optuna distributions, or None, got {search_space!r}"
                )
            for name, distribution in search_space.items():
                if not isinstance(name, str) or not isinstance(
                    distribution, optuna.distributions.BaseDistribution
                ):
                    raise TypeError(
                        "search_space must map parameter names (str) to optuna "
                        f"distributions, got {name!r}: {distribution!r}"
                    )
        self.search_space = None if search_space is None else dict(search_space)
        if len(study.directions) != 1:
            raise ValueError(
                "OptunaStrategy drives single-objective studies only, got a study with "
                f"{len(study.directions)} directions"
            )
        self.study = study
        self._optuna = optuna
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        self.direction: Literal["minimize", "maximize"] = "maximize" if maximize else "minimize"
        self._key: str | None = None

    @property
    def study_key(self) -> str:
        """``<study name>@<stamp>``; the stamp is made once and kept in the study."""
        if self._key is None:
            storage, study_id = self.study._storage, self.study._study_id
            stamp = storage.get_study_system_attrs(study_id).get(_STAMP)
            if stamp is None:
                stamp = uuid.uuid4().hex[:12]
                storage.set_study_system_attr(study_id, _STAMP, stamp)
            self._key = f"{self.study.study_name}@{stamp}"
        return self._key

    def ask(self) -> optuna.trial.Trial:
        trial: optuna.trial.Trial = self.study.ask(self.search_space)
        return trial

    def trial_number(self, trial: optuna.trial.BaseTrial) -> int:
        """The trial's own number, which names it in the journal."""
        number: int = trial.number
        return number

    def unfinished(self) -> list[optuna.trial.FrozenTrial]:
        """The study's RUNNING trials (on resume: those an earlier run never told)."""
        running = (self._optuna.trial.TrialState.RUNNING,)
        trials: list[optuna.trial.FrozenTrial] = self.study.get_trials(
            deepcopy=False, states=running
        )
        return trials

    def earlier_trial(self, number: int) -> optuna.trial.FrozenTrial | None:
        """Trial ``number`` of the study, or None if the study has no such trial."""
        trials = self.study.get_trials(deepcopy=False)
        found = [trial for trial in trials if trial.number == number]
        return found[0] if found else None

    def retry(self, trial: optuna.trial.BaseTrial) -> optuna.trial.Trial:
        """A new RUNNING trial that will be given ``trial``'s parameters.

        The parameters are fixed the way ``Study.enqueue_trial`` fixes them, but
        the trial is created RUNNING at once, so no other worker can take it.
        """
        template = self._optuna.trial.create_trial(
            state=self._optuna.trial.TrialState.RUNNING,
            system_attrs={"fixed_params": dict(trial.params), _RETRY_OF: trial.number},
        )
        trial_id = self.study._storage.create_new_trial(
            self.study._study_id, template_trial=template
        )
        retried: optuna.trial.Trial = self._optuna.trial.Trial(self.study, trial_id)
        return retried

    def retry_on(self, error: BaseException) -> bool:
        """``optimize``'s default retry filter: any exception but a pruning."""
        return isinstance(error, Exception) and not isinstance(error, self._optuna.TrialPruned)

    def _pruned(self, result: TaskResult) -> bool:
        if result.exception is not None:
            return isinstance(result.exception, self._optuna.TrialPruned)
        return (result.error or "").startswith("TrialPruned:")

    def tell(self, trial: optuna.trial.BaseTrial, result: TaskResult) -> None:
        state = self._optuna.trial.TrialState
        value = result.value
        if result.ok and is_number(value) and math.isfinite(value):
            self.study.tell(trial.number, float(value))
            return
        if self._pruned(result):
            self.study.tell(trial.number, state=state.PRUNED)
        else:
            self.study.tell(trial.number, state=state.FAIL)
