"""One task as the runner tracks it: its options, its handle, its attempt's outcome."""

from __future__ import annotations

import contextlib
import logging
import traceback
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypedDict, TypeVar, final

import anyio
import attrs
from anyio.streams.memory import MemoryObjectSendStream

from .._core.model import GPUAllocation
from .._core.request import Resources
from .._core.results import TaskResult, TaskStatus
from .retry import RetryOn

__all__ = [
    "AttemptOutcome",
    "AttemptTimeout",
    "PerItemOptions",
    "TaskFunction",
    "TaskHandle",
    "TaskSpec",
    "deliver_to",
    "error_text",
]

_log = logging.getLogger("gpupool.runner")

ItemT = TypeVar("ItemT")
T = TypeVar("T")
#: ``fn(item, allocation)``: ``async def`` or plain; plain ones run on the high-level executor.
TaskFunction = Callable[[Any, "GPUAllocation | None"], Any]


class AttemptTimeout(TimeoutError):
    """An attempt ran past its ``timeout``; recorded as TIMED_OUT."""


class PerItemOptions(TypedDict, total=False):
    """The keyword spelling of :class:`~gpupool.Resources` as ``runner.map`` takes it:
    each a value for every item or a function of the item."""

    required_gpus: int | Callable[[Any], int]
    min_memory_mb: float | Callable[[Any], float]
    exclusive: bool | Callable[[Any], bool]
    priority: int | Callable[[Any], int]
    allowed_gpus: Iterable[int] | Callable[[Any], Iterable[int] | None] | None
    expected_duration: float | Callable[[Any], float | None] | None


@attrs.frozen
class TaskSpec:
    """One task's options, validated once at submit time."""

    fn: TaskFunction
    is_async: bool
    resources: Resources
    timeout: float | None
    retries: int
    retry_on: RetryOn
    retry_backoff: float


@final
class TaskHandle(Generic[ItemT]):
    """One submitted task: its key, its latest status, and its result when done."""

    def __init__(self, key: str, item: ItemT, spec: TaskSpec) -> None:
        self.key = key
        self.item = item
        self.status = TaskStatus.QUEUED
        self.result: TaskResult | None = None
        self._spec = spec
        #: What the task's next attempt asks the pool for: the submitted request,
        #: grown after an attempt ran out of GPU memory, or as a journal learned it.
        self.resources = spec.resources
        self._scope = anyio.CancelScope()
        self._done: anyio.Event | None = None
        self._callbacks: list[Callable[[TaskHandle[ItemT]], object]] = []
        self._attempts = 0

    def __repr__(self) -> str:
        return f"<TaskHandle key={self.key!r} status={self.status.name}>"

    def done(self) -> bool:
        return self.result is not None

    def cancel(self) -> None:
        """Cancel this task alone; it ends CANCELLED and its GPUs are released."""
        self._scope.cancel()

    async def wait(self) -> TaskResult:
        """Wait for the task to end and return its result (never raises for its failure)."""
        if self.result is None:
            if self._done is None:
                self._done = anyio.Event()
            await self._done.wait()
            assert self.result is not None
        return self.result

    def add_done_callback(self, callback: Callable[[TaskHandle[ItemT]], object]) -> None:
        """Call ``callback(handle)`` on the event loop thread when the task ends."""
        if self.result is not None:
            callback(self)
        else:
            self._callbacks.append(callback)

    def _finish(self, result: TaskResult) -> None:
        self.result = result
        self.status = result.status
        if self._done is not None:
            self._done.set()
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback(self)
            except Exception:
                _log.exception("done callback %r of task %r raised", callback, self.key)


def deliver_to(send: MemoryObjectSendStream[T]) -> Callable[[T], None]:
    """A done callback that sends into ``send``, and does nothing once its reader left."""

    def deliver(item: T) -> None:
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            send.send_nowait(item)

    return deliver


def error_text(exc: BaseException) -> str:
    name = "TimeoutError" if isinstance(exc, AttemptTimeout) else type(exc).__name__
    return f"{name}: {exc}"


@attrs.define(eq=False)
class AttemptOutcome:
    """What one attempt produced, before it becomes a :class:`TaskResult`."""

    value: Any = None
    error: BaseException | None = None
    gpu_indices: tuple[int, ...] = ()
    started: float | None = None
    ended: float | None = None
    #: Said after the error's own text (a clue the runner adds, e.g. about a None allocation).
    hint: str | None = None

    def result(self, key: str, attempts: int, started: float | None) -> TaskResult:
        duration = None if started is None or self.ended is None else self.ended - started
        if self.error is None:
            return TaskResult(
                key=key,
                status=TaskStatus.SUCCEEDED,
                value=self.value,
                attempts=attempts,
                gpu_indices=self.gpu_indices,
                duration_s=duration,
            )
        status = (
            TaskStatus.TIMED_OUT if isinstance(self.error, AttemptTimeout) else TaskStatus.FAILED
        )
        return TaskResult(
            key=key,
            status=status,
            error=error_text(self.error) + ("" if self.hint is None else f" ({self.hint})"),
            traceback="".join(
                traceback.format_exception(type(self.error), self.error, self.error.__traceback__)
            ),
            attempts=attempts,
            gpu_indices=self.gpu_indices,
            duration_s=duration,
            exception=self.error,
        )
