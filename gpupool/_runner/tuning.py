"""Ask/tell tuning on a runner: keep ``max_parallel`` trials in flight.

The strategy protocol is two methods. ``ask()`` returns a suggestion (any
object: a dict of hyperparameters, an ``optuna.Trial``); the objective runs
as ``objective(suggestion, allocation)``; ``tell(suggestion, result)`` gets
the :class:`TaskResult`, failures included, so the strategy can learn from
them or prune. The runner asks only when a slot frees up, so every suggestion
is made knowing every result that has come in by then. ``ask`` and ``tell``
may be ``async def``; they are awaited.

Thread-safety without locks: ``ask``, ``tell`` and the bookkeeping of the
best trial all run on the event loop thread, one at a time, never in a worker
thread. A strategy needs no locks, and nobody can see a half-updated best.

Which trial is which (docs/runner.md, "Tuning")
-----------------------------------------------
Every trial is a runner task keyed ``<study>/trial-<n>``. ``<study>`` is
``key_prefix``, else the strategy's ``study_key``, else ``optimize``, and a
second study on one runner under the same default name gets ``-1``, ``-2``,
... appended, so two calls never share a trial. ``<n>`` is the strategy's own
number for the suggestion (``trial_number``; Optuna's ``trial.number``), so
the journal and the strategy's storage name a trial alike; without one it is
the order of asking, and with a journal a digest of the suggestion is added
(``:<hex>``), so that a resumed plain strategy is given a stored result only
for the very suggestion it was computed for.

Resume of a strategy with its own storage (one with ``unfinished()``)
------------------------------------------------------------------------
On a journaled runner, ``optimize`` first settles what an earlier run of the
study left behind: every trial the journal holds under ``<study>/`` and
every trial the strategy still shows unfinished is submitted again under its
own key with a stand-in that never runs the objective. The journal answers a
trial it finished (and the strategy is told that result, if it has not got it
yet: the crash came between the two); a trial it never finished ends FAILED
with ``TrialInterrupted``. Those trials count towards ``n_trials``.

Retries
-------
A strategy with ``retry(suggestion)`` (Optuna's) keeps a record per trial, so
every attempt is a trial of its own: a failed attempt is told as failed, and
``retry`` makes a fresh trial with the same parameters, which runs after the
backoff. Any other strategy gets the same suggestion run again by the runner
and is told the last attempt only.
"""

from __future__ import annotations

import hashlib
import heapq
import inspect
import itertools
import math
import random
import re
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, Literal, Protocol, TypeVar, final

import anyio
import attrs

from .._core.checks import check_int
from .._core.errors import JournalEncodingError
from .._core.request import RUNNER_DEFAULT_GPUS, Resources
from .._core.results import TaskResult
from .._journal.codec import canonical_json
from .retry import RetryOn, backoff_delay, should_retry
from .task import TaskHandle, TaskSpec, deliver_to

if TYPE_CHECKING:
    from .runner import ParallelRunner

__all__ = ["OptimizeResult", "Strategy", "Trial", "TrialInterrupted", "optimize"]

S = TypeVar("S")
Direction = Literal["minimize", "maximize"]

#: Keys of trials ``retry`` made: ``<study>/trial-<n>-retry``.
_RETRY_SUFFIX = "-retry"
_KEY_TAIL = re.compile(r"trial-(\d+)(-retry)?")
#: The task options of the stand-in that settles an earlier run's trial (no GPUs).
_STAND_IN: dict[str, Any] = {
    "timeout": None,
    "retries": 0,
    "retry_on": Exception,
    "retry_backoff": 0.0,
}


class Strategy(Protocol[S]):
    """Where suggestions come from and where results go.

    Optional extras, found by name (see ``docs/runner.md``): ``direction``,
    ``retry_on``, ``study_key``, ``trial_number(suggestion)``,
    ``unfinished()``, ``earlier_trial(number)`` and ``retry(suggestion)``.
    """

    def ask(self) -> S:
        """The next suggestion to try."""
        ...

    def tell(self, suggestion: S, result: TaskResult) -> None:
        """How the trial of ``suggestion`` ended (any status)."""
        ...


class TrialInterrupted(RuntimeError):
    """A trial an earlier run started and did not finish (it was killed, say).

    On resume such a trial is told as failed with this error; it is not run
    again (a new trial takes its place in ``n_trials``).
    """


@final
@attrs.frozen
class Trial(Generic[S]):
    """One finished trial: its number, suggestion and result.

    The number is the strategy's own (``trial_number``) or the order of asking.
    """

    number: int
    suggestion: S
    result: TaskResult

    @property
    def value(self) -> Any:
        return self.result.value


@final
@attrs.frozen
class OptimizeResult(Generic[S]):
    """Every trial by number, and the best successful one.

    The best is the succeeded trial with the lowest (``minimize``) or highest
    (``maximize``) numeric value; trials whose value is not a real number, or
    is NaN, never count as best. ``None`` when no trial qualified. After a
    resume, the trials of the earlier runs are included.
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


async def _call(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, awaited if it is a coroutine function (an ``async def ask``)."""
    value = fn(*args)
    if inspect.isawaitable(value):
        value = await value
    return value


async def _interrupted(suggestion: object, allocation: object) -> None:
    """The stand-in for a trial of an earlier run: never runs the objective."""
    raise TrialInterrupted(
        "the run that started this trial stopped before it finished; "
        "it is failed on resume, not run again"
    )


# The studies each runner has run, so that a second one never shares their keys.
_studies: weakref.WeakKeyDictionary[ParallelRunner, set[str]] = weakref.WeakKeyDictionary()


def _study_name(runner: ParallelRunner, strategy: object, key_prefix: str | None) -> str:
    """The ``<study>`` of every trial key of this call (see the module docstring)."""
    used = _studies.setdefault(runner, set())
    if key_prefix is not None:
        if not isinstance(key_prefix, str) or not key_prefix:
            raise TypeError(f"key_prefix must be a non-empty str or None, got {key_prefix!r}")
        if key_prefix in used:
            raise ValueError(
                f"key_prefix={key_prefix!r} was already used by an earlier optimize call on "
                "this runner; every study needs its own key_prefix"
            )
        used.add(key_prefix)
        return key_prefix
    base = getattr(strategy, "study_key", None)
    if base is None:
        base = "optimize"
    elif not isinstance(base, str) or not base:
        raise TypeError(f"strategy.study_key must be a non-empty str, got {base!r}")
    name, k = base, 0
    while name in used:
        k += 1
        name = f"{base}-{k}"
    used.add(name)
    return name


@attrs.define(eq=False)
class _Flight(Generic[S]):
    """A trial in flight: its task, and what to do with its result."""

    handle: TaskHandle[S]
    number: int
    #: An earlier run's trial, submitted again to settle it: never retried.
    earlier: bool = False
    #: Whether the strategy is told the result (an earlier run's finished trial is not).
    tell: bool = True
    #: This attempt's number, when the strategy's ``retry`` makes each attempt a trial.
    attempt: int = 1
    #: A trial a resumable strategy created in this run: the journal must not know it.
    fresh: bool = False


@final
class _Study(Generic[S]):
    """One ``optimize`` call: asks, submits, tells, retries and keeps the best."""

    def __init__(
        self,
        runner: ParallelRunner,
        strategy: Strategy[S],
        *,
        name: str,
        spec: TaskSpec,
        parallel: int,
        sign: float,
        retries: int,
    ) -> None:
        self.runner = runner
        self.strategy = strategy
        self.name = name
        self.spec = spec
        self.parallel = parallel
        self.sign = sign
        self.retries = retries
        self.journal: object = runner._journal
        self.number_of: Callable[[S], int] | None = getattr(strategy, "trial_number", None)
        self.retry: Callable[[S], S] | None = getattr(strategy, "retry", None)
        # Only a strategy that numbers its trials and lists its unfinished ones has a
        # record of its own to resume.
        self.resumable = self.number_of is not None and callable(
            getattr(strategy, "unfinished", None)
        )
        self.asked = 0
        self.in_flight: dict[str, _Flight[S]] = {}
        # Retries waiting out their backoff: (ready at, order, failed suggestion, attempt).
        self.waiting: list[tuple[float, int, S, int]] = []
        self.order = itertools.count()
        self.numbers = itertools.count()
        self.trials: dict[int, Trial[S]] = {}
        self.best: Trial[S] | None = None
        self.best_score: float | None = None
        self.send, self.receive = anyio.create_memory_object_stream[str](math.inf)
        self.deliver = deliver_to(self.send)

    # -- submitting -------------------------------------------------------

    def number(self, suggestion: S) -> int:
        """The strategy's own number for a new suggestion, else the next in order."""
        if self.number_of is not None:
            return self.number_of(suggestion)
        return next(self.numbers)

    def key(self, suggestion: S, number: int, *, retried: bool = False) -> str:
        key = f"{self.name}/trial-{number}{_RETRY_SUFFIX if retried else ''}"
        if self.number_of is None and self.journal is not None:
            key = f"{key}:{_digest(suggestion)}"
        return key

    def submit(
        self,
        spec: TaskSpec,
        suggestion: S,
        key: str,
        number: int,
        *,
        earlier: bool = False,
        attempt: int = 1,
    ) -> None:
        self.runner._check_open()
        handle = self.runner._submit(spec, suggestion, key)
        fresh = self.resumable and not earlier
        self.in_flight[key] = _Flight(handle, number, earlier=earlier, attempt=attempt, fresh=fresh)
        handle.add_done_callback(lambda _: self.deliver(key))

    async def ask(self) -> None:
        suggestion: S = await _call(self.strategy.ask)
        number = self.number(suggestion)
        self.asked += 1
        self.submit(self.spec, suggestion, self.key(suggestion, number), number)

    def settle_earlier_runs(self) -> None:
        """Submit every trial an earlier run left, under its own key (module docstring)."""
        if not self.resumable or self.journal is None:
            return
        assert self.number_of is not None
        keys: dict[int, str] = {}
        keys_under = getattr(self.journal, "keys_under", None)
        for key in keys_under(f"{self.name}/") if keys_under is not None else ():
            match = _KEY_TAIL.fullmatch(key[len(self.name) + 1 :])
            if match is not None:
                keys[int(match[1])] = key
        unfinished = {self.number_of(s): s for s in self.strategy.unfinished()}  # type: ignore[attr-defined]
        earlier_trial = getattr(self.strategy, "earlier_trial", None)
        stand_in = self.runner._spec(
            _interrupted, Resources(required_gpus=RUNNER_DEFAULT_GPUS), **_STAND_IN
        )
        for number in sorted(keys.keys() | unfinished.keys()):
            key = keys.get(number, f"{self.name}/trial-{number}")
            suggestion = unfinished.get(number)
            if suggestion is None and earlier_trial is not None:
                suggestion = earlier_trial(number)
            if suggestion is None:  # the strategy has no such trial
                continue
            if not key.endswith(_RETRY_SUFFIX):
                self.asked += 1
            self.submit(stand_in, suggestion, key, number, earlier=True)
            self.in_flight[key].tell = number in unfinished

    def launch_ready_retries(self) -> None:
        now = anyio.current_time()
        while self.waiting and self.waiting[0][0] <= now:
            _, _, failed, attempt = heapq.heappop(self.waiting)
            assert self.retry is not None
            suggestion = self.retry(failed)
            number = self.number(suggestion)
            key = self.key(suggestion, number, retried=True)
            self.submit(self.spec, suggestion, key, number, attempt=attempt)

    # -- results ----------------------------------------------------------

    async def finish(self, flight: _Flight[S]) -> None:
        handle = flight.handle
        result = handle.result
        assert result is not None
        if flight.fresh and result.from_journal:
            raise RuntimeError(
                f"the journal already holds a result for {handle.key!r}, a trial the strategy "
                "has just created: the journal belongs to another study of the same name; "
                "pass optimize(..., key_prefix=...) to tell them apart"
            )
        if flight.attempt > 1:
            result = attrs.evolve(result, attempts=flight.attempt)
        trial = Trial(flight.number, handle.item, result)
        self.trials[flight.number] = trial
        if flight.tell:
            await _call(self.strategy.tell, trial.suggestion, result)
        if self.wants_retry(flight, result):
            delay = backoff_delay(
                flight.attempt, initial=self.spec.retry_backoff, jitter=random.random()
            )
            ready = anyio.current_time() + delay
            heapq.heappush(self.waiting, (ready, next(self.order), handle.item, flight.attempt + 1))
        score = _score(result)
        if score is not None and (
            self.best_score is None or self.sign * score < self.sign * self.best_score
        ):
            self.best, self.best_score = trial, score

    def wants_retry(self, flight: _Flight[S], result: TaskResult) -> bool:
        """Whether the strategy's ``retry`` makes another trial of this one (module docstring)."""
        error = result.exception
        if self.retry is None or flight.earlier or error is None or flight.attempt > self.retries:
            return False
        return isinstance(error, Exception) and should_retry(self.spec.retry_on, error)

    # -- the loop ---------------------------------------------------------

    async def run(self, n_trials: int) -> None:
        with self.send, self.receive:
            try:
                self.settle_earlier_runs()
                while self.asked < n_trials or self.in_flight or self.waiting:
                    self.launch_ready_retries()
                    while (
                        self.asked < n_trials
                        and len(self.in_flight) + len(self.waiting) < self.parallel
                    ):
                        await self.ask()
                    await self.next_result()
            except BaseException:
                for flight in self.in_flight.values():
                    flight.handle.cancel()
                raise

    async def next_result(self) -> None:
        """Wait for a result (and tell it), or for the next retry's backoff to end."""
        if not self.in_flight:
            await anyio.sleep_until(self.waiting[0][0])
            return
        deadline = self.waiting[0][0] if self.waiting else math.inf
        with anyio.move_on_after(deadline - anyio.current_time()):
            key = await self.receive.receive()
            await self.finish(self.in_flight.pop(key))

    def outcome(self, direction: Direction) -> OptimizeResult[S]:
        trials = tuple(self.trials[n] for n in sorted(self.trials))
        return OptimizeResult(trials=trials, best=self.best, direction=direction)


def _digest(suggestion: object) -> str:
    """16 hex digits of SHA-256 over the suggestion's canonical JSON."""
    try:
        payload = canonical_json(suggestion, what="suggestion")
    except JournalEncodingError as exc:
        raise TypeError(
            "on a journaled runner a suggestion must have a JSON form, so that a resumed "
            f"study is given stored results only for the same suggestion ({exc}); or give "
            "the strategy a trial_number(suggestion) method"
        ) from None
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def _check_strategy(strategy: object) -> None:
    missing = [m for m in ("ask", "tell") if not callable(getattr(strategy, m, None))]
    if missing:
        raise TypeError(
            f"strategy must have ask() and tell(suggestion, result), got {strategy!r} "
            f"without {', '.join(missing)}"
        )
    for name in ("trial_number", "unfinished", "earlier_trial", "retry"):
        method = getattr(strategy, name, None)
        if inspect.iscoroutinefunction(method):
            raise TypeError(
                f"strategy.{name} must be a plain method (only ask and tell may be "
                f"async def), got {method!r}"
            )


async def optimize(
    runner: ParallelRunner,
    strategy: Strategy[S],
    objective: Callable[[S, Any], Any],
    *,
    n_trials: int,
    max_parallel: int | None = None,
    direction: Direction | None = None,
    resources: Resources,
    timeout: float | None = None,
    retries: int = 0,
    retry_on: RetryOn | None = None,
    retry_backoff: float = 1.0,
    key_prefix: str | None = None,
) -> OptimizeResult[S]:
    """Run ``n_trials`` trials of ``objective``, at most ``max_parallel`` at once.

    ``max_parallel`` defaults to the runner's. ``direction`` defaults to the
    strategy's ``direction`` attribute if it has one (the Optuna adapter
    does), else ``"minimize"``. The other options are those of
    :meth:`ParallelRunner.submit`, applied to every trial (``resources``, as
    the runner built it from the call). Trial keys are
    ``<study>/trial-<n>``, ``<study>`` being ``key_prefix`` (unique per
    runner), else the strategy's ``study_key``, else ``optimize``; see the
    module docstring for resume and retries. ``retry_on`` defaults to the
    strategy's ``retry_on`` if it has one (Optuna's never retries a pruned
    trial), else ``Exception``.

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
    _check_strategy(strategy)
    if retry_on is None:
        retry_on = getattr(strategy, "retry_on", Exception)
    retries = check_int("retries", retries, 0)
    own_retries = callable(getattr(strategy, "retry", None))
    runner._check_open()
    spec = runner._spec(
        objective,
        resources,
        timeout=timeout,
        # A strategy with retry() makes each attempt a trial of its own (module docstring).
        retries=0 if own_retries else retries,
        retry_on=retry_on,
        retry_backoff=retry_backoff,
    )
    study = _Study(
        runner,
        strategy,
        name=_study_name(runner, strategy, key_prefix),
        spec=spec,
        parallel=parallel,
        sign=1.0 if direction == "minimize" else -1.0,
        retries=retries,
    )
    await study.run(n_trials)
    return study.outcome(direction)
