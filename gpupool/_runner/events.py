"""Task events: what subscribers (progress displays, logs, a journal) hear.

Every state change of every task becomes one :class:`TaskEvent`. The runner
builds events only when someone listens, so a runner nobody watches pays one
attribute check per transition. Subscribers are called on the event loop
thread, in order, and must not block; a subscriber that raises is logged and
kept, never allowed to break the run.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Protocol, final, runtime_checkable

import anyio
import attrs
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._core.checks import check_callable
from .._core.request import Resources
from .._core.results import TaskResult, TaskStatus

__all__ = ["EventHub", "TaskEvent", "TaskJournal"]

_log = logging.getLogger("gpupool.events")


@final
@attrs.frozen
class TaskEvent:
    """One task moved to ``status``.

    ``time`` is the event loop's clock (``anyio.current_time()``), so events
    order and subtract correctly, virtual time included. ``attempt`` counts
    from 1 (0 before the first attempt starts). ``gpu_indices`` are the GPUs
    the attempt holds (empty before it holds any, or for CPU-only tasks).
    ``error`` is ``"Type: message"`` for the event that ends a failed attempt.
    ``from_journal`` marks a final event replayed from a journal rather than
    run now.

    ``resources`` is the request the task's GPU attempts make as of this
    event (``None`` for a CPU-only task, and for a result replayed from a
    journal): on RETRYING, the request of the *next* attempt. It changes when
    an attempt ran out of GPU memory and the request grew, and a resumed task
    starts with the size its journal learned (docs/memory.md).
    ``out_of_memory`` marks the event that ends an attempt (RETRYING or
    final) which failed because GPU memory ran out.
    """

    key: str
    status: TaskStatus
    time: float
    attempt: int = 0
    gpu_indices: tuple[int, ...] = ()
    error: str | None = None
    from_journal: bool = False
    resources: Resources | None = None
    out_of_memory: bool = False


@final
class EventHub:
    """Fan-out of :class:`TaskEvent` to callbacks and async iterators."""

    def __init__(self) -> None:
        self._callbacks: list[Callable[[TaskEvent], object]] = []
        self._streams: list[MemoryObjectSendStream[TaskEvent]] = []
        self.active = False

    def _refresh(self) -> None:
        self.active = bool(self._callbacks or self._streams)

    def add_callback(self, callback: Callable[[TaskEvent], object]) -> Callable[[], None]:
        check_callable("callback", callback)
        self._callbacks.append(callback)
        self._refresh()

        def unsubscribe() -> None:
            if callback in self._callbacks:
                self._callbacks.remove(callback)
                self._refresh()

        return unsubscribe

    def open_stream(self) -> MemoryObjectReceiveStream[TaskEvent]:
        send, receive = anyio.create_memory_object_stream[TaskEvent](math.inf)
        self._streams.append(send)
        self._refresh()
        return receive

    def publish(self, event: TaskEvent) -> None:
        for callback in list(self._callbacks):
            try:
                callback(event)
            except Exception:
                _log.exception("gpupool event subscriber %r raised; it stays subscribed", callback)
        if self._streams:
            for stream in list(self._streams):
                try:
                    stream.send_nowait(event)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    # The reader closed its end: it has unsubscribed.
                    self._streams.remove(stream)
                    stream.close()
            self._refresh()

    def close(self) -> None:
        """End every async iterator (the runner is closing)."""
        for stream in self._streams:
            stream.close()
        self._streams.clear()
        self._refresh()


@runtime_checkable
class TaskJournal(Protocol):
    """What the runner needs from a journal (the SQLite one, or a test double).

    The runner awaits :meth:`record` for every state change *before* acting on
    it, and asks :meth:`finished` before running a key, so a restarted sweep
    returns finished results instead of running them again.

    A journal may also offer, by name (the SQLite journal offers all five;
    the runner asks every journal alike): ``default_key(fn, item)``, the key of
    a task submitted without one (else tasks are numbered, ``task-0``, ...);
    ``storable(result)``, the result as the journal can store it;
    ``describe(key, fn, item)``, called at submit;
    ``on_process_started(key)``, the hook for the task's ``run_process`` jobs;
    and ``learned_resources(key)``, the ``LearnedMemory`` out-of-memory retries
    taught the key (or ``None``), with which a task that runs is started.
    """

    async def finished(self, key: str) -> TaskResult | None:
        """The final result of ``key`` from an earlier run, or ``None`` to run it."""
        ...

    async def record(self, event: TaskEvent, result: TaskResult | None) -> None:
        """Persist one transition; ``result`` is given with the final one."""
        ...
