"""Value types for the runner and the journal: a task's states and its result."""

from __future__ import annotations

import enum
from typing import Any, final

import attrs

__all__ = ["TaskResult", "TaskStatus"]


class TaskStatus(enum.Enum):
    """Where a task is in its life.

    QUEUED -> WAITING_FOR_GPU -> RUNNING -> one of the four final states, with
    RETRYING between a failed attempt and the next one.
    """

    QUEUED = "queued"
    WAITING_FOR_GPU = "waiting_for_gpu"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in _FINAL


_FINAL = frozenset(
    {TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.TIMED_OUT, TaskStatus.CANCELLED}
)


@final
@attrs.frozen
class TaskResult:
    """How one task ended.

    ``error`` is ``"ExceptionType: message"`` and ``traceback`` the formatted
    traceback, both ``None`` on success. ``exception`` is the live exception
    object where this process saw it raised; a result read back from a journal
    has none (exceptions are never pickled into a journal).
    """

    key: str
    status: TaskStatus
    value: Any = None
    error: str | None = None
    traceback: str | None = None
    attempts: int = 0
    gpu_indices: tuple[int, ...] = ()
    from_journal: bool = False
    duration_s: float | None = None
    exception: BaseException | None = attrs.field(default=None, eq=False, repr=False)

    @property
    def ok(self) -> bool:
        return self.status is TaskStatus.SUCCEEDED
