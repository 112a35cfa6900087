"""ParallelRunner: many experiments at once, each isolated from the others.

A task's life, and the one place it is written down
---------------------------------------------------
QUEUED -> [WAITING_FOR_GPU] -> RUNNING -> SUCCEEDED | FAILED | TIMED_OUT |
CANCELLED, with RETRYING between a failed attempt and the next. Every change
goes through :meth:`ParallelRunner._record`, which writes it to the journal
(if any) before anything acts on it, then tells subscribers. Before a task
runs, the journal is asked whether its key already finished.

Order of resources
------------------
A GPU task first waits for its GPUs (at most ``max_parallel`` of this
runner's tasks wait on the pool at once), *then* for one of the
``max_parallel`` slots, in the slots' front lane. A task that waits for GPUs
therefore holds no slot, and CPU-only tasks (``required_gpus=0``, which never
ask the pool) keep running while GPU work queues. ``max_parallel`` caps tasks
in the RUNNING state.

Isolation
---------
Whatever one attempt raises, ``BaseException`` included, ends in its
:class:`TaskResult`; only cancellation (the runner's or the task's own) and
``KeyboardInterrupt`` (the user's Ctrl-C) propagate. GPUs are released on
every path (``pool.release`` never yields, so cancellation cannot interrupt it).

Cost
----
With no subscriber and no journal, a transition only sets the handle's
status: no event, no await. ``map`` validates each distinct task shape once
and wakes once when all its tasks are done.
"""

from __future__ import annotations

import inspect
import logging
import os
import random
import sys
from collections.abc import AsyncIterator, Callable, Hashable, Iterable, Mapping, Sequence
from contextvars import Token
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar, final

import anyio
import anyio.lowlevel
import anyio.to_thread
import attrs
from anyio.streams.memory import MemoryObjectReceiveStream

from .._core.checks import (
    check_bool,
    check_finite_seconds,
    check_int,
    check_seconds,
    is_async_callable,
    shown,
)
from .._core.durations import DurationEstimator, task_shape
from .._core.errors import PoolClosed
from .._core.growth import LearnedMemory, apply_learned, grow_after_oom
from .._core.model import GPUAllocation, OnProcessStarted
from .._core.oom import is_out_of_memory
from .._core.request import (
    RUNNER_DEFAULT_GPUS,
    ResourceOptions,
    Resources,
    request_of,
    with_estimate,
)
from .._core.results import TaskResult, TaskStatus
from .._journal.adapter import RunnerJournal, open_journal
from .._journal.history import read_durations
from .._journal.store import Journal
from .._pool.native import Native
from .._pool.pool import GPUResourcePool
from .._process.started import observe as observe_processes
from .._process.started import stop_observing
from .events import EventHub, TaskEvent, TaskJournal
from .executors import _EXECUTORS, Executors, ExecutorStatistics
from .remote import RemoteGPUs
from .retry import RetryOn, backoff_delay, check_retry_on, should_retry
from .slots import Slots
from .task import (
    AttemptOutcome,
    AttemptTimeout,
    PerItemOptions,
    TaskFunction,
    TaskHandle,
    TaskSpec,
    deliver_to,
    error_text,
)
from .tuning import Direction, OptimizeResult, Strategy, optimize

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["ParallelRunner", "RunnerStatistics"]

_log = logging.getLogger("gpupool.runner")

ItemT = TypeVar("ItemT")
T = TypeVar("T")
S = TypeVar("S")


@final
@attrs.frozen
class RunnerStatistics:
    """A snapshot of a runner: its tasks by state and its two executors."""

    max_parallel: int
    submitted: int
    finished: int
    running: int
    waiting_for_slot: int
    high_level: ExecutorStatistics
    low_level: ExecutorStatistics


@final
class ParallelRunner:
    """Runs many tasks at once on a :class:`~gpupool.GPUResourcePool`.

    ``max_parallel`` (an int >= 1) caps tasks running at once. It may exceed
    the number of GPUs: GPU tasks beyond what the GPUs can hold wait for GPUs
    without taking a slot, and the spare slots run CPU-only tasks. Below the
    GPU count, at most ``max_parallel`` GPUs' worth of tasks run at once.
    Left out (``None``), it is as many tasks as the pool can serve at once:
    the pool's own ``max_parallel`` if it has one, else the pool's number of
    GPUs, read when the runner is made (or entered, if the pool was not open
    yet). A runner without a pool runs ``high_level_workers`` tasks at once,
    as many plain task functions as can run anyway.

    ``high_level_workers`` caps plain task functions running in threads at
    once, ``low_level_workers`` caps :func:`gpupool.run_blocking` calls; see
    ``docs/runner.md`` for why two executors cannot deadlock.

    ``journal`` is ``None``, a path for the SQLite journal (opened on
    enter, closed on exit), an open :class:`~gpupool.Journal` (borrowed, left
    open), or any object with the :class:`TaskJournal` methods. Every state
    change is written to it before it is acted on; a key it reports finished
    is not run again (see ``docs/runner.md``).

    Leaving the ``async with`` block waits for every submitted task; an
    exception or cancellation there cancels them all and releases every GPU.
    A journal that fails to commit a change stops the run: every task is
    cancelled and ``async with`` raises that one error (``docs/journal.md``).

    Durations learned from history (``docs/scheduling.md``): a GPU task that
    gives no ``expected_duration`` asks the pool with an
    ``estimated_duration`` learned from ``history`` (journals of earlier
    runs, as paths or :class:`~gpupool.Journal` objects, one or a list, or a
    mapping of task keys to durations in seconds), and from tasks of the same
    function and request that finished earlier in this run (or, on a resumed
    journal, in the run it resumes). ``learn_durations=False`` turns it off.
    """

    #: The journal's first failure, once it failed; the run then stops.
    _journal_failure: BaseException | None = None

    def __init__(
        self,
        pool: GPUResourcePool | RemoteGPUs | None = None,
        *,
        max_parallel: int | None = None,
        high_level_workers: int = 4,
        low_level_workers: int = 4,
        journal: TaskJournal | Journal | str | os.PathLike[str] | None = None,
        history: History | None = None,
        learn_durations: bool = True,
    ) -> None:
        if pool is not None and not isinstance(pool, (GPUResourcePool, RemoteGPUs)):
            raise TypeError(
                f"pool must be a GPUResourcePool, a cluster (gpupool.integrations.ray."
                f"RayCluster) or None, got {pool!r}"
            )
        self._pool = pool
        #: Where GPU tasks run when it is not here (a cluster's nodes).
        self._remote = pool if isinstance(pool, RemoteGPUs) else None
        self._executors = Executors(high_level_workers, low_level_workers)
        if max_parallel is not None:
            check_int("max_parallel", max_parallel, 1)
        elif pool is None:
            max_parallel = self._executors.high.workers
        else:
            max_parallel = _what_the_pool_can_serve(pool)
        # None until the pool is open: then the runner's enter derives it.
        self._max_parallel: int | None = max_parallel
        # A journal the runner made (from a path or a Journal) it opens and closes.
        self._own_journal = _open_journal(journal)
        self._journal: TaskJournal | None = (
            self._own_journal if self._own_journal is not None else _check_journal(journal)
        )
        # What a journal may offer beyond TaskJournal (the SQLite one offers all;
        # a test double may offer any): looked up once, by name, so the runner
        # treats every journal alike. Default keys: stable ones derived from the
        # task (a restarted sweep finds its tasks) where the journal gives them.
        self._default_key: Callable[[Callable[..., Any], object], str] | None = getattr(
            self._journal, "default_key", None
        )
        # A result the journal cannot store fails its task, before it is recorded.
        self._storable: Callable[[TaskResult], TaskResult] | None = getattr(
            self._journal, "storable", None
        )
        # The function and item of a key, noted at submit (shown by `journal export`).
        self._describe: Callable[[str, Callable[..., Any], object], None] | None = getattr(
            self._journal, "describe", None
        )
        # What run_process calls for task `key`'s jobs (gpupool._process.started).
        self._process_groups: Callable[[str], OnProcessStarted] | None = getattr(
            self._journal, "on_process_started", None
        )
        # The reservation out-of-memory retries taught a key in an earlier run.
        self._learned: Callable[[str], LearnedMemory | None] | None = getattr(
            self._journal, "learned_resources", None
        )
        check_bool("learn_durations", learn_durations)
        if history is not None and not learn_durations:
            raise ValueError(
                "history= is what learn_durations=True learns from; pass one or neither"
            )
        self._history_sources = _history_sources(history)
        # Where estimates of tasks' durations come from; fed with the history on enter.
        self._durations = DurationEstimator() if learn_durations else None
        # Each task spec's shape (task_shape), by the spec's identity: made once per
        # spec, not per task, as tasks of one map share their spec.
        self._shapes: dict[int, tuple[TaskSpec, Hashable]] = {}
        self._hub = EventHub()
        # By key: every unfinished task, and the finished ones whose key was
        # given (by the user or the journal), so that a key runs once.
        self._tasks: dict[str, TaskHandle[Any]] = {}
        self._submitted = 0
        self._finished = 0
        self._next_key = 0
        # Sized by _settle_max_parallel() once max_parallel is known.
        self._slots = Slots(max_parallel or 1)
        # At most max_parallel of this runner's tasks wait on the pool at once.
        self._gpu_gate = Slots(max_parallel or 1)
        self._task_group: anyio.abc.TaskGroup | None = None
        self._cancelled_class: type[BaseException] = BaseException
        self._clock: Callable[[], float] = anyio.current_time
        self._closed = False

    @property
    def max_parallel(self) -> int:
        """Tasks running at once: as given, or derived (see the class docstring)."""
        return self._settle_max_parallel()

    def _settle_max_parallel(self) -> int:
        """``max_parallel``, derived from the pool now if it was not open when the runner was made."""
        if self._max_parallel is None:
            assert self._pool is not None
            derived = _what_the_pool_can_serve(self._pool)
            if derived is None:
                raise PoolClosed(
                    "ParallelRunner(pool) without max_parallel runs as many tasks as the pool "
                    "can serve, which it can tell only while the pool is open: enter "
                    "`async with pool` before the runner, or pass max_parallel="
                )
            self._max_parallel = self._slots.total = self._gpu_gate.total = derived
        return self._max_parallel

    @property
    def pool(self) -> GPUResourcePool | RemoteGPUs | None:
        return self._pool

    # -- lifetime ---------------------------------------------------------

    async def __aenter__(self) -> ParallelRunner:
        if self._task_group is not None or self._closed:
            raise RuntimeError("a ParallelRunner can be entered only once")
        self._settle_max_parallel()
        self._cancelled_class = anyio.get_cancelled_exc_class()
        self._clock = Native.current().clock  # anyio.current_time without the lookups
        if self._own_journal is not None:
            # Opens the file and kills a dead run's leftover jobs, before any GPU
            # is granted. On a thread: the open may wait seconds for SQLite's
            # locks and for the killed jobs to exit, and the loop must not.
            await anyio.to_thread.run_sync(self._own_journal.open)
        if self._history_sources:
            # Before any task asks for GPUs; on a thread, as reading a journal is I/O.
            await anyio.to_thread.run_sync(self._read_history)
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        return self

    def _read_history(self) -> None:
        assert self._durations is not None
        for source in self._history_sources:
            self._durations.add_history(
                source if isinstance(source, Mapping) else read_durations(source)
            )

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._task_group is not None
        try:
            suppress = await self._task_group.__aexit__(exc_type, exc, tb)
        except BaseException as error:
            await self._shut_down(quietly=True)
            if self._journal_failure is not None:
                _log.warning("gpupool: the runner's journal failed: %s", self._journal_failure)
            # Tasks never raise (their failures are results), so a group that
            # holds just the body's own exception is that exception: give it
            # back unwrapped, as a user of the runner expects.
            inner = getattr(error, "exceptions", None)
            if exc is not None and inner is not None and len(inner) == 1 and inner[0] is exc:
                raise exc from None
            raise
        # The body ended, or was cancelled by a journal failure (see _stop_for_journal).
        ended_cleanly = suppress or exc is None
        failure = self._journal_failure if ended_cleanly else None
        close_error = await self._shut_down(quietly=not ended_cleanly or failure is not None)
        if failure is not None:
            raise failure
        if ended_cleanly and close_error is not None:
            raise close_error
        return suppress

    async def _shut_down(self, *, quietly: bool) -> BaseException | None:
        """Close the event streams and the runner's own journal.

        Returns the journal's close error rather than raising it, so that it
        never replaces an exception already on its way out; ``quietly`` logs
        it instead (the caller is raising something else).
        """
        self._closed = True
        self._hub.close()
        if self._own_journal is None:
            return None
        try:
            # Shielded: a cancelled runner still gives its journal up.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._own_journal.close)
        except Exception as error:
            if not quietly:
                return error
            _log.warning("gpupool: closing the runner's journal failed: %s", error)
        return None

    def cancel(self) -> None:
        """Cancel every task of this runner; each ends CANCELLED, all GPUs are released."""
        if self._task_group is not None:
            self._task_group.cancel_scope.cancel()

    # -- events -----------------------------------------------------------

    def subscribe(self, callback: Callable[[TaskEvent], object]) -> Callable[[], None]:
        """Call ``callback(event)`` for every transition; returns the unsubscribe function.

        ``callback`` is called synchronously, on the event loop, as each
        transition happens, so it must be a plain function that does not
        block; an ``async def`` one is refused with ``TypeError`` (it would
        never run). To await something per event, read :meth:`events`.
        """
        if not callable(callback) or is_async_callable(callback):
            raise TypeError(
                "callback must be a plain function of a TaskEvent (for async handling, "
                f"iterate runner.events()), got {shown(callback)}"
            )
        return self._hub.add_callback(callback)

    def events(self) -> MemoryObjectReceiveStream[TaskEvent]:
        """An async iterator of every later transition; ends when the runner closes.

        Use it as ``async with runner.events() as events: async for event in
        events: ...``; closing it unsubscribes. Its buffer is unbounded, so a
        slow reader costs memory, never runner speed.
        """
        return self._hub.open_stream()

    def statistics(self) -> RunnerStatistics:
        running = self._slots.in_use
        return RunnerStatistics(
            max_parallel=self._settle_max_parallel(),
            submitted=self._submitted,
            finished=self._finished,
            running=running,
            waiting_for_slot=self._slots.waiting,
            high_level=self._executors.high.statistics(),
            low_level=self._executors.low.statistics(),
        )

    # -- submitting -------------------------------------------------------

    def submit(
        self,
        fn: TaskFunction,
        item: ItemT,
        *,
        resources: Resources | None = None,
        timeout: float | None = None,
        retries: int = 0,
        retry_on: RetryOn = Exception,
        retry_backoff: float = 1.0,
        key: str | None = None,
        **options: Unpack[ResourceOptions],
    ) -> TaskHandle[ItemT]:
        """Start ``fn(item, allocation)`` as a task and return its handle at once.

        The task's request is ``resources`` (a :class:`~gpupool.Resources`) or
        its keywords (``required_gpus=2, min_memory_mb=8000, ...``), not both;
        ``allocation`` is ``None`` unless it asks for 1 GPU or more (the
        default is none). A key already submitted to this runner returns that
        task's handle: one key runs once. See :meth:`map` for the options.
        """
        self._check_open()
        spec = self._spec(
            fn,
            self._request(resources, options),
            timeout=timeout,
            retries=retries,
            retry_on=retry_on,
            retry_backoff=retry_backoff,
        )
        return self._submit(spec, item, key)

    def _request(self, resources: object, options: Mapping[str, Any]) -> Resources:
        """A task's request, by the runner's rules: no GPUs unless asked, a pool if asked."""
        request = request_of(
            resources,
            options,
            default_gpus=RUNNER_DEFAULT_GPUS,
            gpus_at_least=0,
        )
        if request.required_gpus and self._pool is None:
            raise ValueError(
                f"required_gpus={request.required_gpus} needs a pool: "
                "ParallelRunner(GPUResourcePool(...), ...)"
            )
        return request

    def _check_open(self) -> None:
        if self._task_group is None or self._closed:
            raise RuntimeError(
                "submit() needs an open runner: use `async with ParallelRunner(...)`"
            )

    def _submit(self, spec: TaskSpec, item: ItemT, key: str | None) -> TaskHandle[ItemT]:
        """Start a task for a validated ``spec``; see :meth:`submit`."""
        assert self._task_group is not None
        if self._remote is not None and spec.resources.required_gpus:
            self._remote.check_task(spec.fn)  # a TypeError now, not at the node
        numbered = False
        if key is None and self._default_key is not None:
            key = self._default_key(spec.fn, item)
        elif key is None:
            key = f"task-{self._next_key}"
            self._next_key += 1
            numbered = True
        elif not isinstance(key, str) or not key:
            raise TypeError(f"key must be a non-empty str or None, got {key!r}")
        existing = self._tasks.get(key)
        if existing is not None:
            return existing
        if self._describe is not None:
            # Stored with the key when the journal claims it; first, so that a
            # key the journal refuses leaves nothing registered.
            self._describe(key, spec.fn, item)
        handle = TaskHandle(key, item, spec)
        self._tasks[key] = handle
        self._submitted += 1
        if numbered:
            # A numbered key is never submitted again, so nothing needs its
            # handle once the task ends: forget it then, or a long sweep
            # would keep every item and result alive (and every garbage
            # collection would scan them).
            handle.add_done_callback(self._forget)
        self._task_group.start_soon(self._drive, handle, name=f"gpupool task {key}")
        return handle

    def _forget(self, handle: TaskHandle[Any]) -> None:
        del self._tasks[handle.key]

    def _spec(
        self,
        fn: TaskFunction,
        resources: Resources,
        *,
        timeout: float | None,
        retries: int,
        retry_on: RetryOn,
        retry_backoff: float,
    ) -> TaskSpec:
        if not callable(fn):
            raise TypeError(f"fn must be callable as fn(item, allocation), got {shown(fn)}")
        return TaskSpec(
            fn=fn,
            is_async=is_async_callable(fn),
            resources=resources,
            timeout=check_seconds("timeout", timeout),
            retries=check_int("retries", retries, 0),
            retry_on=check_retry_on(retry_on),
            retry_backoff=check_finite_seconds("retry_backoff", retry_backoff),
        )

    async def map(
        self,
        fn: TaskFunction,
        items: Iterable[ItemT],
        *,
        resources: Resources | Callable[[ItemT], Resources] | None = None,
        timeout: float | None = None,
        retries: int = 0,
        retry_on: RetryOn = Exception,
        retry_backoff: float = 1.0,
        key: Callable[[ItemT], str] | None = None,
        **options: Unpack[PerItemOptions],
    ) -> list[TaskResult]:
        """Run ``fn(item, allocation)`` for every item; results in input order.

        **GPUs only when asked for:** ``required_gpus`` defaults to 0, and then
        ``allocation`` is ``None`` (a CPU task); pass ``required_gpus=1`` (or
        more) for an allocation with ``env`` and ``gpu_indices``. A GPU-less
        task that reads an allocation attribute off ``None`` fails with a note
        saying so.

        Never raises for a task's own failure: look at each result's
        ``status``.

        The request: ``resources`` (a :class:`~gpupool.Resources`, or a
        function of the item returning one) or its keywords, not both. Each
        keyword is a value for every item or a function of the item (a
        config that knows its model size, or how long it will run):
        ``required_gpus``, ``min_memory_mb``, ``exclusive=False`` (shares GPUs
        by memory), ``priority`` (orders GPU waiters, higher first),
        ``allowed_gpus``, and ``expected_duration`` (seconds; the hint the
        default :class:`~gpupool.BackfillPolicy` uses to start short tasks
        early without delaying the queue's head). They follow
        :class:`~gpupool.Resources`' rules and are checked at the call.
        ``timeout``: seconds per attempt,
        counted from RUNNING (waiting for GPUs is not included; ``0`` is a
        deadline of now, as everywhere). ``retries``: extra
        attempts for failures that ``retry_on`` selects (exception types or a
        predicate; timeouts are ``TimeoutError``s), after a backoff starting
        at ``retry_backoff`` seconds and doubling. Cancellation is never
        retried. ``key(item)`` names each task (for events and the journal);
        by default tasks are numbered in submission order (``task-0``, ...),
        or, with the SQLite journal, keyed by a stable hash of ``fn`` and the
        item so that a restarted sweep finds them.

        Cancelling ``map`` itself cancels the tasks it submitted.
        """
        materialised = list(items)
        if key is not None and not callable(key):
            raise TypeError(f"key must be a function of the item or None, got {key!r}")
        per_item = {name: value for name, value in options.items() if callable(value)}
        fixed = {name: value for name, value in options.items() if name not in per_item}
        varies = bool(per_item) or callable(resources)
        # As submit() item by item, but the options are validated once, and a
        # request that varies by item once per distinct request.
        base: TaskSpec | None = None
        specs: dict[Resources, TaskSpec] = {}
        handles: list[TaskHandle[ItemT]] = []
        for item in materialised:
            task_key = None if key is None else key(item)
            self._check_open()
            if base is None or varies:
                if callable(resources):
                    given: object = resources(item)
                    if type(given) is not Resources:
                        raise TypeError(
                            f"resources(item) must return a gpupool.Resources, got {shown(given)}"
                        )
                else:
                    given = resources
                chosen = {name: fn_of_item(item) for name, fn_of_item in per_item.items()}
                request = self._request(given, {**fixed, **chosen} if chosen else fixed)
                if base is None:
                    base = self._spec(
                        fn,
                        request,
                        timeout=timeout,
                        retries=retries,
                        retry_on=retry_on,
                        retry_backoff=retry_backoff,
                    )
                    specs[request] = base
                spec = specs.get(request)
                if spec is None:
                    spec = specs[request] = attrs.evolve(base, resources=request)
            else:
                spec = base
            handles.append(self._submit(spec, item, task_key))
        try:
            await _all_done(handles)
        except BaseException:
            # Cancelling map() (an outer timeout, say) stops the sweep it started.
            for handle in handles:
                handle.cancel()
            raise
        results: list[TaskResult] = []
        for handle in handles:
            assert handle.result is not None
            results.append(handle.result)
        return results

    async def as_completed(
        self, handles: Sequence[TaskHandle[ItemT]]
    ) -> AsyncIterator[TaskHandle[ItemT]]:
        """Yield each handle as its task ends (results via ``handle.result``)."""
        pending = len(handles)
        if not pending:
            return
        send, receive = anyio.create_memory_object_stream[TaskHandle[ItemT]](pending)
        with send, receive:
            for handle in handles:
                handle.add_done_callback(deliver_to(send))
            for _ in range(pending):
                yield await receive.receive()

    # -- running ----------------------------------------------------------

    async def _record(
        self,
        task: TaskHandle[Any],
        status: TaskStatus,
        attempt: int,
        gpu_indices: tuple[int, ...] = (),
        error: str | None = None,
        result: TaskResult | None = None,
        out_of_memory: bool = False,
    ) -> None:
        """THE place every state change goes through: journal first, then subscribers."""
        task.status = status
        if self._journal is None and not self._hub.active:
            return
        from_journal = result is not None and result.from_journal
        event = TaskEvent(
            key=task.key,
            status=status,
            time=self._clock(),
            attempt=attempt,
            gpu_indices=gpu_indices,
            error=error,
            from_journal=from_journal,
            resources=task.resources if task.resources.required_gpus and not from_journal else None,
            out_of_memory=out_of_memory,
        )
        if self._journal is not None and not event.from_journal:
            await self._journal_write(event, result)
        self._hub.publish(event)

    async def _journal_write(self, event: TaskEvent, result: TaskResult | None) -> None:
        """Commit one change to the journal, or stop the run.

        The one rule for journal failures: a change the journal cannot
        commit (a full disk, an I/O error) is never acted on. The first
        failure stops the run (`_stop_for_journal`), which raises it from
        ``async with`` once every task has ended; nothing more is written, so
        the journal keeps the last state it could commit. Here the task is
        cancelled at once, or, under the shield of a final change,
        `_Unrecorded` tells `_end` that its result was not recorded.
        """
        assert self._journal is not None
        if self._journal_failure is None:
            try:
                await self._journal.record(event, result)
                return
            except Exception as error:
                self._stop_for_journal(error)
        await anyio.lowlevel.checkpoint()  # raises the runner's cancellation
        raise _Unrecorded

    def _stop_for_journal(self, error: BaseException) -> None:
        """Remember the journal's first failure and cancel the run (see `_journal_write`)."""
        if self._journal_failure is None:
            self._journal_failure = error
            assert self._task_group is not None
            self._task_group.cancel_scope.cancel()

    async def _end(self, task: TaskHandle[Any], result: TaskResult) -> None:
        if self._storable is not None and not result.from_journal:
            result = self._storable(result)
        if self._journal is None and not self._hub.active:
            task.status = result.status  # what _record does when no one listens
        else:
            with anyio.CancelScope(shield=True):
                try:
                    await self._record(
                        task,
                        result.status,
                        result.attempts,
                        result.gpu_indices,
                        result.error,
                        result,
                        out_of_memory=result.exception is not None
                        and is_out_of_memory(result.exception),
                    )
                except _Unrecorded:
                    result = self._unrecorded(task)
                    task.status = result.status
                    if self._hub.active:  # subscribers hear how it ended; the journal cannot
                        self._hub.publish(
                            TaskEvent(
                                task.key,
                                result.status,
                                self._clock(),
                                result.attempts,
                                error=result.error,
                            )
                        )
        self._finished += 1
        task._finish(result)

    def _unrecorded(self, task: TaskHandle[Any]) -> TaskResult:
        """How ``task`` ends once the journal failed: as the journal holds it,
        unfinished, so CANCELLED (the next run runs it again)."""
        return TaskResult(
            key=task.key,
            status=TaskStatus.CANCELLED,
            error=f"Cancelled: the run stopped because its journal failed ({self._journal_failure})",
            attempts=task._attempts,
        )

    async def _drive(self, task: TaskHandle[Any]) -> None:
        _EXECUTORS.set(self._executors)
        try:
            if self._journal is not None:
                prior = await self._prior(task)
                if prior is not None:
                    if prior.status is TaskStatus.SUCCEEDED and prior.attempts == 1:
                        self._learn(task, prior.duration_s)
                    await self._end(task, prior)
                    return
            if self._journal is not None or self._hub.active:
                await self._record(task, TaskStatus.QUEUED, 0)
            with task._scope:
                result = await self._attempts(task)
            if task._scope.cancelled_caught:
                result = self._cancelled(task)
        except self._cancelled_class:
            await self._end(task, self._cancelled(task))
            raise
        await self._end(task, result)

    async def _prior(self, task: TaskHandle[Any]) -> TaskResult | None:
        """Claim ``task``'s key: None to run it, else the result to end it with.

        That is the journal's record of a finished task (``from_journal``), or,
        once the journal has failed, the unrecorded end: a task that is not
        journaled is not run, and the run stops (see `_journal_write`).

        A task that runs starts with the reservation its journal learned
        (`_start_as_learned`), read here: a journal that fails to say stops the
        run as a failed claim does.
        """
        assert self._journal is not None
        if self._journal_failure is None:
            try:
                prior = await self._journal.finished(task.key)
                if prior is None:
                    self._start_as_learned(task)
            except Exception as error:
                self._stop_for_journal(error)
            else:
                if prior is not None:
                    return attrs.evolve(prior, key=task.key, from_journal=True)
                if self._journal_failure is None:
                    return None
        return self._unrecorded(task)

    def _start_as_learned(self, task: TaskHandle[Any]) -> None:
        """Start a GPU task with the reservation its journal learned in an earlier run."""
        if self._learned is None or not task.resources.required_gpus:
            return
        learned = self._learned(task.key)  # a journal's failure: the caller stops the run
        if learned is not None:
            task.resources = apply_learned(task.resources, learned, self._gpu_totals())

    def _gpu_totals(self) -> dict[int, int]:
        """Each healthy GPU's total memory, by index: what growth is capped by
        (none once the pool has closed: its next acquire says so)."""
        assert self._pool is not None
        try:
            gpus = self._pool.statistics().gpus
        except PoolClosed:
            return {}
        return {g.index: g.memory_total_mb for g in gpus if g.healthy}

    def _cancelled(self, task: TaskHandle[Any]) -> TaskResult:
        return TaskResult(
            key=task.key,
            status=TaskStatus.CANCELLED,
            error="Cancelled: the task or its runner was cancelled",
            attempts=task._attempts,
        )

    async def _attempts(self, task: TaskHandle[Any]) -> TaskResult:
        spec = task._spec
        attempt = 0
        started: float | None = None
        while True:
            attempt += 1
            task._attempts = attempt
            outcome = await self._attempt(task, attempt)
            if started is None:
                started = outcome.started
            if outcome.error is None and outcome.started is not None and outcome.ended is not None:
                self._learn(task, outcome.ended - outcome.started)
            if outcome.error is None or not (
                attempt <= spec.retries and should_retry(spec.retry_on, outcome.error)
            ):
                return outcome.result(task.key, attempt, started)
            out_of_memory = is_out_of_memory(outcome.error)
            if out_of_memory and task.resources.required_gpus:
                # The next attempt asks for more (gpupool._core.growth); the
                # RETRYING event carries it, and the journal learns it first.
                task.resources = grow_after_oom(task.resources, self._gpu_totals())
            await self._record(
                task,
                TaskStatus.RETRYING,
                attempt,
                outcome.gpu_indices,
                error_text(outcome.error),
                out_of_memory=out_of_memory,
            )
            await anyio.sleep(
                backoff_delay(attempt, initial=spec.retry_backoff, jitter=random.random())
            )

    async def _attempt(self, task: TaskHandle[Any], attempt: int) -> AttemptOutcome:
        spec = task._spec
        outcome = AttemptOutcome()
        allocation: GPUAllocation | None = None
        try:
            if spec.resources.required_gpus:
                if self._journal is None and not self._hub.active:
                    task.status = TaskStatus.WAITING_FOR_GPU
                else:
                    await self._record(task, TaskStatus.WAITING_FOR_GPU, attempt)
                assert self._pool is not None
                # pool.acquire checkpoints next: a yield here too costs, with no gain.
                await self._gpu_gate.acquire(checkpoint=False)
                request = task.resources
                if (
                    self._durations is not None
                    and request.expected_duration is None
                    and request.estimated_duration is None
                ):
                    request = self._estimated(task, request)
                try:
                    allocation = await self._pool.acquire(request, experiment_id=task.key)
                finally:
                    self._gpu_gate.release()
                outcome.gpu_indices = allocation.gpu_indices
            # A GPU task has just passed pool.acquire's checkpoint, and every task
            # passes checkpoint_if_cancelled next; only a CPU-only task yields here.
            await self._slots.acquire(front=allocation is not None, checkpoint=allocation is None)
            observing: Token[tuple[OnProcessStarted, ...]] | None = None
            try:
                # A task cancelled before it started never starts.
                await anyio.lowlevel.checkpoint_if_cancelled()
                if self._journal is None and not self._hub.active:
                    task.status = TaskStatus.RUNNING
                else:
                    await self._record(task, TaskStatus.RUNNING, attempt, outcome.gpu_indices)
                if self._process_groups is not None:
                    # The journal records the process group of every job the task starts.
                    observing = observe_processes(self._process_groups(task.key))
                outcome.started = self._clock()
                if (
                    spec.is_async
                    and spec.timeout is None
                    and (self._remote is None or allocation is None)
                ):
                    outcome.value = await spec.fn(task.item, allocation)
                else:
                    outcome.value = await self._call(spec, task.item, allocation)
                outcome.ended = self._clock()
            finally:
                if observing is not None:
                    stop_observing(observing)
                self._slots.release()
        except self._cancelled_class:
            raise
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            outcome.error = exc
            outcome.ended = self._clock()
            if not spec.resources.required_gpus:
                outcome.hint = _explain_no_allocation(exc)
        finally:
            if allocation is not None:
                # release() never yields, so it completes under cancellation too.
                assert self._pool is not None
                await self._pool.release(allocation)
        return outcome

    def _estimated(self, task: TaskHandle[Any], request: Resources) -> Resources:
        """``request`` with the estimate of ``task``'s duration, if there is one."""
        assert self._durations is not None
        estimate = self._durations.estimate(task.key, self._shape(task._spec))
        if estimate is None:
            return request
        return with_estimate(request, estimate)

    def _learn(self, task: TaskHandle[Any], duration: float | None) -> None:
        """``task`` held its GPUs for ``duration`` seconds in a successful attempt."""
        request = task._spec.resources
        if self._durations is None or duration is None or not request.required_gpus:
            return
        self._durations.observe(task.key, self._shape(task._spec), max(duration, 0.0))

    def _shape(self, spec: TaskSpec) -> Hashable:
        known = self._shapes.get(id(spec))
        if known is None:
            # The spec is kept with its shape, so that its id is not reused meanwhile.
            known = self._shapes[id(spec)] = (spec, task_shape(_name_of(spec.fn), spec.resources))
        return known[1]

    async def _call(self, spec: TaskSpec, item: Any, allocation: GPUAllocation | None) -> Any:
        if spec.is_async or (self._remote is not None and allocation is not None):
            return await self._timed(spec, item, allocation)
        # A plain function's timeout starts once it has a high-level worker.
        async with self._executors.high.slot():
            return await self._timed(spec, item, allocation)

    async def _timed(self, spec: TaskSpec, item: Any, allocation: GPUAllocation | None) -> Any:
        if spec.timeout is None:
            return await self._invoke(spec, item, allocation)
        with anyio.move_on_after(spec.timeout) as scope:
            return await self._invoke(spec, item, allocation)
        if scope.cancelled_caught:
            raise AttemptTimeout(f"the task ran past its timeout of {spec.timeout} s")
        raise AssertionError(
            "unreachable: the timeout scope ended without a value"
        )  # pragma: no cover

    async def _invoke(self, spec: TaskSpec, item: Any, allocation: GPUAllocation | None) -> Any:
        if self._remote is not None and allocation is not None:
            # Runs on the node that granted the GPUs (gpupool._runner.remote).
            return await self._remote.call(spec.fn, item, allocation, is_async=spec.is_async)
        if spec.is_async:
            return await spec.fn(item, allocation)
        value = await self._executors.high.run(
            self._executors, spec.fn, (item, allocation), capped=False
        )
        if inspect.isawaitable(value):  # a plain function that returned a coroutine
            value = await value
        return value

    # -- tuning -----------------------------------------------------------

    async def optimize(
        self,
        strategy: Strategy[S],
        objective: Callable[[S, GPUAllocation | None], Any],
        *,
        n_trials: int,
        max_parallel: int | None = None,
        direction: Direction | None = None,
        resources: Resources | None = None,
        timeout: float | None = None,
        retries: int = 0,
        retry_on: RetryOn | None = None,
        retry_backoff: float = 1.0,
        key_prefix: str | None = None,
        **options: Unpack[ResourceOptions],
    ) -> OptimizeResult[S]:
        """Ask/tell tuning: keep up to ``max_parallel`` trials of ``objective`` in flight.

        ``strategy.ask()`` is called as slots free up, ``strategy.tell(suggestion,
        result)`` with every result, failures included (either may be ``async
        def``). Every trial's request is ``resources`` or its keywords, as for
        :meth:`submit`. Trials are keyed ``<study>/trial-<n>``: ``key_prefix`` names
        the study (each optimize call on a runner needs its own), by default
        the strategy's ``study_key`` or ``optimize``. On a journaled runner a
        rerun resumes the study; see ``docs/runner.md`` for resume and retries.
        """
        return await optimize(
            self,
            strategy,
            objective,
            n_trials=n_trials,
            max_parallel=max_parallel,
            direction=direction,
            resources=self._request(resources, options),
            timeout=timeout,
            retries=retries,
            retry_on=retry_on,
            retry_backoff=retry_backoff,
            key_prefix=key_prefix,
        )


class _Unrecorded(BaseException):
    """A final change the journal did not commit (the journal has failed).

    A ``BaseException``, like a cancellation: never a task's own failure to retry.
    """


async def _all_done(handles: Sequence[TaskHandle[Any]]) -> None:
    """Wait until every handle is done: one wake-up for the lot, not one per task."""
    pending = [handle for handle in handles if not handle.done()]
    if not pending:
        await anyio.lowlevel.checkpoint()
        return
    left = len(pending)
    all_done = anyio.Event()

    def one_done(_: TaskHandle[Any]) -> None:
        nonlocal left
        left -= 1
        if not left:
            all_done.set()

    for handle in pending:
        handle.add_done_callback(one_done)
    await all_done.wait()


#: What a task can read of its allocation; reading one of them off None is the clue.
_ALLOCATION_ATTRIBUTES = frozenset(name for name in dir(GPUAllocation) if not name.startswith("_"))

_NO_ALLOCATION_HINT = (
    "this task asked for required_gpus=0, so its allocation is None; pass "
    "required_gpus=1 or more to map() or submit() to get GPUs"
)


def _explain_no_allocation(exc: BaseException) -> str | None:
    """The hint for a GPU-less task that read ``allocation.env`` (or the like) off ``None``.

    ``required_gpus`` defaults to 0, and a task that forgot it otherwise sees only
    ``'NoneType' object has no attribute 'env'``. The hint goes into the result's
    ``error`` text and, on Python >= 3.11, onto the exception as a note (so the
    traceback shows it too). Any other error gets no hint.
    """
    if not (
        isinstance(exc, AttributeError)
        and exc.name in _ALLOCATION_ATTRIBUTES
        and str(exc).startswith("'NoneType' object has no attribute")
    ):
        return None
    if sys.version_info >= (3, 11):
        exc.add_note(_NO_ALLOCATION_HINT)
    return _NO_ALLOCATION_HINT


def _what_the_pool_can_serve(pool: GPUResourcePool | RemoteGPUs) -> int | None:
    """The default ``max_parallel`` of a runner on ``pool``: the pool's own cap, else its GPUs.

    ``None`` while the pool is not open (its GPUs are not known yet). The GPU
    count is what ``gpupool run`` uses too; a pool that shares GPUs by memory
    may serve more tasks than it has GPUs, and its ``max_parallel`` says how many.
    """
    try:
        stats = pool.statistics()
    except PoolClosed:
        return None
    if stats.max_parallel is not None:
        return stats.max_parallel
    return max(1, len(stats.gpus))


#: Where a runner learns durations from: a journal (its path, or the object), or
#: durations by task key.
HistorySource: TypeAlias = "str | os.PathLike[str] | Journal | Mapping[str, Sequence[float]]"
History: TypeAlias = "HistorySource | Sequence[HistorySource]"


def _history_sources(history: object) -> list[Any]:
    """``history=`` as a list of sources, oldest first; ``TypeError`` for anything else."""
    if history is None:
        return []
    one = (str, os.PathLike, Journal, Mapping)
    if isinstance(history, one):
        return [history]
    if isinstance(history, Sequence) and all(isinstance(s, one) for s in history):
        return list(history)
    raise TypeError(
        "history must be None, a journal (a path or a gpupool.Journal), a mapping of task "
        f"keys to durations in seconds, or a list of those, got {shown(history)}"
    )


def _name_of(fn: Callable[..., Any]) -> str:
    """A task function's name, as the shape of its tasks (``task_shape``) reads it."""
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{getattr(fn, '__module__', None) or ''}.{name}"


def _open_journal(journal: object) -> RunnerJournal | None:
    """The SQLite journal for a path or a ``Journal``; ``None`` for anything else."""
    if isinstance(journal, (str, os.PathLike, Journal)):
        return open_journal(journal)
    return None


def _check_journal(journal: object) -> TaskJournal | None:
    if journal is None or isinstance(journal, TaskJournal):
        return journal
    raise TypeError(
        "journal must be None, a path for the SQLite journal, a gpupool.Journal, or an "
        "object with async finished(key) and record(event, result) methods, "
        f"got {journal!r}"
    )
