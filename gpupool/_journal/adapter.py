"""The runner's side of a `Journal`: what ``ParallelRunner(journal=...)`` uses.

The runner talks to journals through two awaitables (the ``TaskJournal``
protocol of ``gpupool._runner.events``): ``finished(key)`` before a task runs and
``record(event, result)`` for every state change, awaited before the runner
acts on it. `RunnerJournal` maps them onto `Journal`:

* ``finished(key)`` claims the key: the recorded result of a finished task
  (not run again), or None after committing QUEUED (run it);
* ``record`` commits WAITING_FOR_GPU / RUNNING / RETRYING, and the final
  result with its value as JSON; a RETRYING after an attempt ran out of GPU
  memory also stores the next attempt's reservation (``learned_resources``,
  which the runner reads to start a resumed task with it);
* ``on_process_started(key)`` is the hook that the runner sets around task
  ``key``'s function (``gpupool._process.started``): every job the task starts
  with ``run_process`` has its process group recorded, and forgotten once the
  job is over, so that a takeover after a crash can end it.

It owns the `Journal` when given a path (opened on `open`, closed on
`close`), and borrows one that the caller opened.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, Protocol, final

from .._core.checks import check_bool
from .._core.errors import JournalEncodingError
from .._core.growth import LearnedMemory
from .._core.model import OnProcessStarted, StartedProcess
from .._core.request import Resources
from .._core.results import TaskResult, TaskStatus
from .codec import check_key, function_name, task_key
from .store import Journal, Synchronous, storable

__all__ = ["RunnerJournal", "open_journal"]


class _Event(Protocol):
    """What this module reads of the runner's ``TaskEvent``."""

    @property
    def key(self) -> str: ...
    @property
    def status(self) -> TaskStatus: ...
    @property
    def attempt(self) -> int: ...
    @property
    def gpu_indices(self) -> tuple[int, ...]: ...
    @property
    def resources(self) -> Resources | None: ...
    @property
    def out_of_memory(self) -> bool: ...
    @property
    def error(self) -> str | None: ...


@final
class RunnerJournal:
    """A journal as the runner sees it (see the module docstring)."""

    def __init__(
        self,
        journal: str | os.PathLike[str] | Journal,
        *,
        retry_failed: bool | None = None,
        synchronous: Synchronous = "normal",
    ) -> None:
        if not isinstance(journal, (str, os.PathLike, Journal)):
            raise TypeError(f"journal must be a path or a Journal, got {journal!r}")
        if retry_failed is not None:
            check_bool("retry_failed", retry_failed, allowed="a bool or None")
        self._target = journal
        self._owned = not isinstance(journal, Journal)
        self._journal: Journal | None = journal if isinstance(journal, Journal) else None
        self._synchronous: Synchronous = synchronous
        self.retry_failed = retry_failed
        self._described: dict[str, tuple[str, Any]] = {}
        #: Process groups of a dead owner's jobs killed by `open`.
        self.killed_leftovers: list[int] = []

    @property
    def journal(self) -> Journal:
        if self._journal is None:
            raise RuntimeError("the runner's journal is not open (use `async with` on the runner)")
        return self._journal

    def open(self) -> None:
        """Open (a path) and kill a dead owner's leftover process groups.

        The runner calls this when it starts, before it grants any GPU.
        """
        opened = self._journal is None
        if self._journal is None:
            assert not isinstance(self._target, Journal)
            self._journal = Journal(
                self._target, synchronous=self._synchronous, retry_failed=bool(self.retry_failed)
            )
        try:
            self.killed_leftovers = self._journal.kill_leftovers()
        except BaseException:
            if opened:  # a runner that failed to start gives up what it opened
                self.close()
            raise

    def close(self) -> None:
        """Close the journal if this object opened it."""
        if self._owned and self._journal is not None:
            journal, self._journal = self._journal, None
            journal.close()

    def describe(self, key: str, fn: Callable[..., Any], item: object) -> None:
        """Note the function and item of ``key``, stored with it when claimed
        (``gpupool journal export`` shows them).

        The runner calls this when the task is submitted, so a key the journal
        cannot store is refused there, by ``submit``/``map``, and never fails
        a running sweep.
        """
        check_key(key)
        try:
            name = function_name(fn)
        except JournalEncodingError:
            name = getattr(fn, "__qualname__", type(fn).__qualname__)
        self._described[key] = (name, item)

    def default_key(self, fn: Callable[..., Any], item: object) -> str:
        """The key of a task submitted without one: derived from ``fn`` and ``item``
        (canonical JSON), so a restarted sweep finds its tasks (docs/journal.md)."""
        return task_key(fn, item)

    def storable(self, result: TaskResult) -> TaskResult:
        """``result`` as the journal can store it: a value it cannot encode fails the
        task, here as in the journal, so the runner and a resumed run agree."""
        return storable(result)

    def keys_under(self, prefix: str) -> list[str]:
        """Every key of the journal that starts with ``prefix`` (a study's trials,
        for ``runner.optimize`` to resume)."""
        return self.journal.keys(prefix)

    async def finished(self, key: str) -> TaskResult | None:
        fn, item = self._described.pop(key, ("", None))
        return self.journal.claim(key, fn=fn, item=item, retry_failed=self.retry_failed)

    async def record(self, event: _Event, result: TaskResult | None) -> None:
        journal = self.journal
        if not journal.in_flight(event.key):
            # Cancelled before it was claimed: nothing of this run to record.
            return
        if event.status.is_final:
            assert result is not None, "the runner passes the result with the final event"
            journal.finish(result)
        elif event.status is not TaskStatus.QUEUED:  # finished() committed QUEUED
            learned: LearnedMemory | None = None
            notes = [event.error] if event.error else []
            if (
                event.status is TaskStatus.RETRYING
                and event.out_of_memory
                and event.resources is not None
            ):
                learned = LearnedMemory.of(event.resources)
                notes.append(f"out of GPU memory; the next attempt asks for {learned.describe()}")
            note = "; ".join(notes) or None
            journal.record(
                event.key,
                event.status,
                attempt=event.attempt,
                gpu_indices=event.gpu_indices,
                learned=learned,
                note=note,
            )

    def learned_resources(self, key: str) -> LearnedMemory | None:
        """What out-of-memory retries taught task ``key`` (the runner starts it so)."""
        return self.journal.learned_resources(key)

    def on_process_started(self, key: str) -> OnProcessStarted:
        """The hook for the jobs of task ``key``: record each job's process group
        as it starts, forget it once the job is over (and the final state of the
        task forgets whatever is left)."""
        journal = self.journal

        def record_group(process: StartedProcess) -> Callable[[], None]:
            journal.record_process_group(key, process.pgid)
            return functools.partial(journal.forget_process_group, key, process.pgid)

        return record_group


def open_journal(journal: str | os.PathLike[str] | Journal) -> RunnerJournal:
    """What ``ParallelRunner(journal=path_or_journal)`` uses."""
    return RunnerJournal(journal)
