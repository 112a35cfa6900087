"""A rich progress bar for scripts: one subscriber of a runner's task events.

rich is imported when a display is made, not with this module: ``import
gpupool`` exports :class:`ProgressDisplay` but must not pay for rich (about a
sixth of the package's import time) in programs that never draw a bar.
"""

from __future__ import annotations

from collections import Counter
from types import TracebackType
from typing import TYPE_CHECKING, Any, final

from .._core.checks import check_instance, check_int, check_str
from .._core.results import TaskStatus
from .events import TaskEvent
from .runner import ParallelRunner

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

__all__ = ["ProgressDisplay"]


@final
class ProgressDisplay:
    """Show a runner's progress: done / total, running, retrying, failed, timed out.

    >>> async with ParallelRunner(pool, max_parallel=4) as runner:  # doctest: +SKIP
    ...     with ProgressDisplay(runner, total=len(configs)):
    ...         results = await runner.map(train, configs, required_gpus=1)

    ``total`` defaults to the number of tasks seen so far. ``console`` is a
    ``rich.console.Console`` (default: standard error). Updates happen on the
    event loop thread and cost a few dictionary operations; drawing happens
    in rich's own refresh thread, so the runner never waits for the terminal.
    ``counts`` holds how many tasks are in each status now.
    """

    def __init__(
        self,
        runner: ParallelRunner,
        *,
        total: int | None = None,
        console: Console | None = None,
        description: str = "tasks",
    ) -> None:
        check_instance("runner", runner, ParallelRunner, "a gpupool.ParallelRunner")
        if total is not None:
            check_int("total", total, 0)
        check_str("description", description)
        self._runner = runner
        self._fixed_total = total
        self._latest: dict[str, TaskStatus] = {}
        self.counts: Counter[TaskStatus] = Counter()
        self._progress = _make_progress(console)
        fields: dict[str, Any] = self._fields()
        self._task: TaskID = self._progress.add_task(description, total=total, **fields)
        self._unsubscribe: object = None

    def _fields(self) -> dict[str, object]:
        return {
            "running": self.counts[TaskStatus.RUNNING],
            "retrying": self.counts[TaskStatus.RETRYING],
            "failed": self.counts[TaskStatus.FAILED],
            "timed_out": self.counts[TaskStatus.TIMED_OUT],
            "cancelled": self.counts[TaskStatus.CANCELLED],
        }

    def __call__(self, event: TaskEvent) -> None:
        previous = self._latest.get(event.key)
        if previous is not None:
            self.counts[previous] -= 1
        self._latest[event.key] = event.status
        self.counts[event.status] += 1
        done = sum(self.counts[s] for s in TaskStatus if s.is_final)
        total = self._fixed_total if self._fixed_total is not None else len(self._latest)
        fields: dict[str, Any] = self._fields()
        self._progress.update(self._task, completed=done, total=total, **fields)

    def __enter__(self) -> ProgressDisplay:
        self._progress.start()
        self._unsubscribe = self._runner.subscribe(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if callable(self._unsubscribe):
            self._unsubscribe()
        self._progress.refresh()
        self._progress.stop()


def _make_progress(console: Console | None) -> Progress:
    """The bar's columns, on ``console`` (standard error by default)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    if console is not None:
        check_instance("console", console, Console, "a rich.console.Console or None")
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(
            "running {task.fields[running]}  retrying {task.fields[retrying]}  "
            "failed {task.fields[failed]}  timed out {task.fields[timed_out]}  "
            "cancelled {task.fields[cancelled]}"
        ),
        TimeElapsedColumn(),
        console=console if console is not None else Console(stderr=True),
    )
