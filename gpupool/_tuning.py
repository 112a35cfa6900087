"""Ask/tell tuning on a runner: keep ``max_parallel`` trials in flight.

The strategy protocol is two methods. ``ask()`` returns a suggestion (any
object: a dict of hyperparameters, an ``optuna.Trial``); the objective runs
as ``objective(suggestion, allocation)``; ``tell(suggestion, result)`` gets
the :class:`TaskResult`, failures included, so the strategy can learn from
them or prune. The runner asks only when a slot frees up, so every suggestion
is made knowing every result that has come in by then.

Thread-safety without locks: ``ask``, ``tell`` and the bookkeeping of the
best trial all run on the event loop thread, one at a time, never in a worker
thread. A strategy needs no locks, and nobody can see a half-updated best.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, Literal, Protocol, TypeVar, final

import anyio
import attrs

from ._request import check_int
from ._retry import RetryOn
from ._task import TaskHandle, deliver_to
from ._tasks import TaskResult

if TYPE_CHECKING:
    from ._runner import ParallelRunner

__all__ = ["OptimizeResult", "Strategy", "Trial", "optimize"]

S = TypeVar("S")
Direction = Literal["minimize", "maximize"]


class Strategy(Protocol[S]):
    """Where suggestions come from and where results go."""

    def ask(self) -> S:
        """The next suggestion to try."""
        ...

    def tell(self, suggestion: S, result: TaskResult) -> None:
        """How the trial of ``suggestion`` ended (any status)."""
        ...


@final
@attrs.frozen
class Trial(Generic[S]):
    """One finished trial: its number (in order of asking), suggestion and result."""

    number: int
    suggestion: S
    result: TaskResult

    @property
    def value(self) -> Any:
        return self.result.value


@final
@attrs.frozen
class OptimizeResult(Generic[S]):
    """Every trial in order of asking, and the best successful one.

    The best is the succeeded trial with the lowest (``minimize``) or highest
    (``maximize``) numeric value; trials whose value is not a real number, or
    is NaN, never count as best. ``None`` when no trial qualified.
    """

    trials: tuple[Trial[S], ...]
    best: Trial[S] | None
    direction: Direction


def _score(result: TaskResult) -> float | None:
    value = result.value
    if not result.ok or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if math.isnan(value):
        return None
    return float(value)


async def optimize(
    runner: ParallelRunner,
    strategy: Strategy[S],
    objective: Callable[[S, Any], Any],
    *,
    n_trials: int,
    max_parallel: int | None = None,
    direction: Direction | None = None,
    required_gpus: int = 0,
    min_memory_mb: int = 0,
    exclusive: bool = True,
    timeout: float | None = None,
    retries: int = 0,
    retry_on: RetryOn | None = None,
    retry_backoff: float = 1.0,
    key_prefix: str = "trial-",
) -> OptimizeResult[S]:
    """Run ``n_trials`` trials of ``objective``, at most ``max_parallel`` at once.

    ``max_parallel`` defaults to the runner's. ``direction`` defaults to the
    strategy's ``direction`` attribute if it has one (the Optuna adapter
    does), else ``"minimize"``. The other options are those of
    :meth:`ParallelRunner.map`, applied to every trial; trial ``i`` gets the
    key ``f"{key_prefix}{i}"``. ``retry_on`` defaults to the strategy's
    ``retry_on`` if it has one (Optuna's never retries a pruned trial), else
    ``Exception``.

    If ``ask`` or ``tell`` raises, the trials in flight are cancelled and the
    error propagates: a broken strategy stops the study, a failing trial never
    does.
    """
    n_trials = check_int("n_trials", n_trials, 1)
    parallel = runner.max_parallel if max_parallel is None else max_parallel
    parallel = check_int("max_parallel", parallel, 1)
    if direction is None:
        direction = getattr(strategy, "direction", "minimize")
    if direction not in ("minimize", "maximize"):
        raise ValueError(f"direction must be 'minimize' or 'maximize', got {direction!r}")
    missing = [m for m in ("ask", "tell") if not callable(getattr(strategy, m, None))]
    if missing:
        raise TypeError(
            f"strategy must have ask() and tell(suggestion, result), got {strategy!r} "
            f"without {', '.join(missing)}"
        )
    if retry_on is None:
        retry_on = getattr(strategy, "retry_on", Exception)
    if not isinstance(key_prefix, str):
        raise TypeError(f"key_prefix must be a str, got {key_prefix!r}")

    send, receive = anyio.create_memory_object_stream[tuple[int, "TaskHandle[S]"]](n_trials)
    in_flight: dict[int, TaskHandle[S]] = {}
    trials: dict[int, Trial[S]] = {}
    best: Trial[S] | None = None
    best_score: float | None = None
    sign = 1.0 if direction == "minimize" else -1.0
    asked = 0
    deliver = deliver_to(send)
    with send, receive:
        try:
            while asked < n_trials or in_flight:
                while asked < n_trials and len(in_flight) < parallel:
                    suggestion = strategy.ask()
                    number = asked
                    asked += 1
                    handle = runner.submit(
                        objective,
                        suggestion,
                        required_gpus=required_gpus,
                        min_memory_mb=min_memory_mb,
                        exclusive=exclusive,
                        timeout=timeout,
                        retries=retries,
                        retry_on=retry_on,
                        retry_backoff=retry_backoff,
                        key=f"{key_prefix}{number}",
                    )
                    in_flight[number] = handle
                    handle.add_done_callback(
                        lambda h, n=number: deliver((n, h))  # type: ignore[misc]
                    )
                number, handle = await receive.receive()
                del in_flight[number]
                assert handle.result is not None
                trial = Trial(number, handle.item, handle.result)
                trials[number] = trial
                strategy.tell(trial.suggestion, trial.result)
                score = _score(trial.result)
                if score is not None and (best_score is None or sign * score < sign * best_score):
                    best, best_score = trial, score
        except BaseException:
            for handle in in_flight.values():
                handle.cancel()
            raise
    return OptimizeResult(
        trials=tuple(trials[i] for i in sorted(trials)), best=best, direction=direction
    )
