"""Durations learned from history: how long a task will hold its GPUs, when it did not say.

:class:`~gpupool.BackfillPolicy` packs GPUs best when it knows when the
allocations it waits for will end (``expected_duration``). Users rarely say,
and when they do they guess. Tsafrir, Etsion and Feitelson ("Backfilling
using system-generated predictions rather than user runtime estimates",
IEEE TPDS 18(6), 2007) showed that a prediction made by the system from the
history of the same user's recent jobs (their choice: the mean of the last
two) schedules better than what users estimate. A sweep has a better history
than "the same user": the same task (its key) in an earlier run, and tasks of
the same shape (function and request) that finished earlier in this run.

:class:`DurationEstimator` keeps those samples and answers, in this order:

1. the mean of the last ``recent`` finished durations of the task's key (a
   second sweep of the same configurations learns from the first one);
2. else the mean of the last ``recent`` finished durations of tasks of its
   shape (the first sweep learns as it goes);
3. else nothing: the task is planned as one without a hint, as before.

A user's ``expected_duration`` is never replaced (the runner asks only for
tasks that gave none). Pure: no I/O and no clock; the runner feeds it from
the journal and from the attempts it sees end. What the policy does with an
estimate that turns out too short is in ``backfill.py`` and
``docs/scheduling.md`` ("Durations learned from history").
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable, Iterable, Mapping
from typing import final

from .checks import check_finite_seconds, check_instance, check_int, shown
from .request import Resources

__all__ = ["DEFAULT_RECENT", "DurationEstimator", "task_shape"]

#: How many recent samples an estimate averages: Tsafrir et al.'s two.
DEFAULT_RECENT = 2


def task_shape(function: str, request: Resources) -> Hashable:
    """The shape a finished task teaches about: its function's name and what it asked for.

    Tasks of one function with the same GPUs, memory, sharing and pinning
    are taken to run alike; priority and hints do not change how long a task
    runs, so they are left out.
    """
    return (
        function,
        request.required_gpus,
        request.min_memory_mb,
        request.exclusive,
        request.allowed_gpus,
    )


@final
class DurationEstimator:
    """Estimates of how long tasks run, from durations seen before (see the module docstring).

    ``history`` maps task keys to their finished durations in earlier runs,
    oldest first (what :func:`gpupool._journal.history.read_durations`
    reads from a journal). ``recent``: how many of the latest samples an
    estimate averages (default 2, at least 1).
    """

    __slots__ = ("_by_key", "_by_shape", "_recent")

    def __init__(
        self, history: Mapping[str, Iterable[float]] | None = None, *, recent: int = DEFAULT_RECENT
    ) -> None:
        self._recent = check_int("recent", recent, minimum=1)
        self._by_key: dict[Hashable, deque[float]] = {}
        self._by_shape: dict[Hashable, deque[float]] = {}
        if history is not None:
            self.add_history(history)

    @property
    def recent(self) -> int:
        return self._recent

    def __repr__(self) -> str:
        return (
            f"DurationEstimator(recent={self._recent}, keys={len(self._by_key)}, "
            f"shapes={len(self._by_shape)})"
        )

    def _add(self, samples: dict[Hashable, deque[float]], name: Hashable, value: float) -> None:
        kept = samples.get(name)
        if kept is None:
            kept = samples[name] = deque(maxlen=self._recent)
        kept.append(value)

    def add_history(self, history: Mapping[str, Iterable[float]]) -> None:
        """Learn the durations of ``history`` (task key to durations, oldest first), as if
        they were observed now: an earlier run's, before this run's own."""
        check_instance("history", history, Mapping, "a mapping of task keys to durations")
        for key, durations in history.items():
            if not isinstance(key, str):
                raise TypeError(f"history keys must be task keys (str), got {shown(key)}")
            if isinstance(durations, (str, bytes)) or not isinstance(durations, Iterable):
                raise TypeError(
                    f"history[{key!r}] must be an iterable of durations, got {shown(durations)}"
                )
            for duration in durations:
                seconds = check_finite_seconds(f"history[{key!r}] entry", duration)
                self._add(self._by_key, key, seconds)

    def observe(self, key: str, shape: Hashable, duration: float) -> None:
        """Task ``key`` of ``shape`` just finished an attempt that held its GPUs ``duration`` s."""
        value = check_finite_seconds("duration", duration)
        self._add(self._by_key, key, value)
        self._add(self._by_shape, shape, value)

    def estimate(self, key: str, shape: Hashable) -> float | None:
        """How long task ``key`` of ``shape`` should run, in seconds; ``None``: no idea.

        Never 0 (a zero-second hint is not one): a history of instant tasks
        gives the smallest positive estimate.
        """
        samples = self._by_key.get(key) or self._by_shape.get(shape)
        if not samples:
            return None
        return max(math.fsum(samples) / len(samples), _SHORTEST)

    def known_keys(self) -> int:
        """How many task keys have at least one sample."""
        return len(self._by_key)


#: The least estimate given (``expected_duration`` must be > 0): a millisecond.
_SHORTEST = 1e-3
