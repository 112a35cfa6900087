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
import math
import os
import random
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, final

import anyio
import anyio.lowlevel
import attrs
from anyio.streams.memory import MemoryObjectReceiveStream

from ._events import EventHub, TaskEvent, TaskJournal
from ._executors import _EXECUTORS, Executors, ExecutorStatistics
from ._model import GPUAllocation
from ._native import Native
from ._pool import GPUResourcePool
from ._request import (
    check_finite_seconds,
    check_int,
    check_number,
    check_seconds,
    is_async_callable,
    make_request,
    shown,
)
from ._retry import RetryOn, backoff_delay, check_retry_on, should_retry
from ._slots import Slots
from ._task import (
    TaskFunction,
    TaskHandle,
    _error_text,
    _Outcome,
    _Spec,
    _TaskTimeout,
    deliver_to,
)
from ._tasks import TaskResult, TaskStatus
from ._tuning import Direction, OptimizeResult, Strategy, optimize

if TYPE_CHECKING:
    from ._journal import Journal
    from ._journal_runner import RunnerJournal

__all__ = ["ParallelRunner", "RunnerStatistics"]

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
    """

    def __init__(
        self,
        pool: GPUResourcePool | None = None,
        *,
        max_parallel: int = 1,
        high_level_workers: int = 4,
        low_level_workers: int = 4,
        journal: TaskJournal | Journal | str | os.PathLike[str] | None = None,
    ) -> None:
        if pool is not None and not isinstance(pool, GPUResourcePool):
            raise TypeError(f"pool must be a GPUResourcePool or None, got {pool!r}")
        self._pool = pool
        self._max_parallel = check_int("max_parallel", max_parallel, 1)
        self._executors = Executors(high_level_workers, low_level_workers)
        # A journal the runner made (from a path or a Journal) it opens and closes.
        self._own_journal = _open_journal(journal)
        self._journal: TaskJournal | None = (
            self._own_journal if self._own_journal is not None else _check_journal(journal)
        )
        self._sqlite_journal = _is_sqlite_journal(self._journal)
        self._hub = EventHub()
        # By key: every unfinished task, and the finished ones whose key was
        # given (by the user or the journal), so that a key runs once.
        self._tasks: dict[str, TaskHandle[Any]] = {}
        self._submitted = 0
        self._finished = 0
        self._next_key = 0
        self._slots = Slots(self._max_parallel)
        # At most max_parallel of this runner's tasks wait on the pool at once.
        self._gpu_gate = Slots(self._max_parallel)
        self._task_group: anyio.abc.TaskGroup | None = None
        self._cancelled_class: type[BaseException] = BaseException
        self._clock: Callable[[], float] = anyio.current_time
        self._closed = False

    @property
    def max_parallel(self) -> int:
        return self._max_parallel

    @property
    def pool(self) -> GPUResourcePool | None:
        return self._pool

    # -- lifetime ---------------------------------------------------------

    async def __aenter__(self) -> ParallelRunner:
        if self._task_group is not None or self._closed:
            raise RuntimeError("a ParallelRunner can be entered only once")
        self._cancelled_class = anyio.get_cancelled_exc_class()
        self._clock = Native.current().clock  # anyio.current_time without the lookups
        if self._own_journal is not None:
            # Opens the file and kills a dead run's leftover jobs, before any GPU is granted.
            self._own_journal.open()
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._task_group is not None
        try:
            return await self._task_group.__aexit__(exc_type, exc, tb)
        except BaseException as error:
            # Tasks never raise (their failures are results), so a group that
            # holds just the body's own exception is that exception: give it
            # back unwrapped, as a user of the runner expects.
            inner = getattr(error, "exceptions", None)
            if exc is not None and inner is not None and len(inner) == 1 and inner[0] is exc:
                raise exc from None
            raise
        finally:
            self._closed = True
            self._hub.close()
            if self._own_journal is not None:
                self._own_journal.close()

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
            max_parallel=self._max_parallel,
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
        required_gpus: int = 0,
        min_memory_mb: int = 0,
        exclusive: bool = True,
        priority: int = 0,
        timeout: float | None = None,
        retries: int = 0,
        retry_on: RetryOn = Exception,
        retry_backoff: float = 1.0,
        key: str | None = None,
    ) -> TaskHandle[ItemT]:
        """Start ``fn(item, allocation)`` as a task and return its handle at once.

        A key already submitted to this runner returns that task's handle:
        one key runs once. See :meth:`map` for the options.
        """
        self._check_open()
        spec = self._spec(
            fn,
            required_gpus=required_gpus,
            min_memory_mb=min_memory_mb,
            exclusive=exclusive,
            priority=priority,
            timeout=timeout,
            retries=retries,
            retry_on=retry_on,
            retry_backoff=retry_backoff,
        )
        return self._submit(spec, item, key)

    def _check_open(self) -> None:
        if self._task_group is None or self._closed:
            raise RuntimeError(
                "submit() needs an open runner: use `async with ParallelRunner(...)`"
            )

    def _submit(self, spec: _Spec, item: ItemT, key: str | None) -> TaskHandle[ItemT]:
        """Start a task for a validated ``spec``; see :meth:`submit`."""
        assert self._task_group is not None
        numbered = False
        if key is None and self._sqlite_journal:
            # Stable across runs, so a restarted sweep finds its tasks (docs/journal.md).
            from ._journal_codec import task_key

            key = task_key(spec.fn, item)
        elif key is None:
            key = f"task-{self._next_key}"
            self._next_key += 1
            numbered = True
        elif not isinstance(key, str) or not key:
            raise TypeError(f"key must be a non-empty str or None, got {key!r}")
        existing = self._tasks.get(key)
        if existing is not None:
            return existing
        handle = TaskHandle(key, item, spec)
        self._tasks[key] = handle
        self._submitted += 1
        if numbered:
            # A numbered key is never submitted again, so nothing needs its
            # handle once the task ends: forget it then, or a long sweep
            # would keep every item and result alive (and every garbage
            # collection would scan them).
            handle.add_done_callback(self._forget)
        describe = getattr(self._journal, "describe", None)
        if describe is not None:
            describe(key, spec.fn, item)  # stored with the key when the journal claims it
        self._task_group.start_soon(self._drive, handle, name=f"gpupool task {key}")
        return handle

    def _forget(self, handle: TaskHandle[Any]) -> None:
        del self._tasks[handle.key]

    def _spec(
        self,
        fn: TaskFunction,
        *,
        required_gpus: int,
        min_memory_mb: int,
        exclusive: bool,
        priority: int,
        timeout: float | None,
        retries: int,
        retry_on: RetryOn,
        retry_backoff: float,
    ) -> _Spec:
        if not callable(fn):
            raise TypeError(f"fn must be callable as fn(item, allocation), got {shown(fn)}")
        gpus = check_int("required_gpus", required_gpus, 0)
        if gpus and self._pool is None:
            raise ValueError(
                f"required_gpus={gpus} needs a pool: ParallelRunner(GPUResourcePool(...), ...)"
            )
        if gpus:
            # The GPU options follow acquire's rules exactly, so that a request no
            # acquire would take (exclusive=False with no memory, say) is refused
            # here, at the call, rather than failing every task later.
            request = make_request(
                gpus, min_memory_mb=min_memory_mb, exclusive=exclusive, priority=priority
            )
            memory, level = request.min_memory_mb, request.priority
        else:
            memory = math.ceil(check_number("min_memory_mb", min_memory_mb, minimum=0))
            if not isinstance(exclusive, bool):
                raise TypeError(f"exclusive must be True or False, got {shown(exclusive)}")
            level = check_int("priority", priority)
        return _Spec(
            fn=fn,
            is_async=is_async_callable(fn),
            required_gpus=gpus,
            min_memory_mb=memory,
            exclusive=exclusive,
            priority=level,
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
        required_gpus: int | Callable[[ItemT], int] = 0,
        min_memory_mb: int | Callable[[ItemT], int] = 0,
        exclusive: bool = True,
        priority: int = 0,
        timeout: float | None = None,
        retries: int = 0,
        retry_on: RetryOn = Exception,
        retry_backoff: float = 1.0,
        key: Callable[[ItemT], str] | None = None,
    ) -> list[TaskResult]:
        """Run ``fn(item, allocation)`` for every item; results in input order.

        Never raises for a task's own failure: look at each result's
        ``status``. ``allocation`` is ``None`` when ``required_gpus`` is 0.

        ``required_gpus`` / ``min_memory_mb``: an int for every item, or a
        function of the item (a config that knows its model size).
        ``exclusive=False`` shares GPUs by memory, ``priority`` orders GPU
        waiters (higher first); they follow :meth:`GPUResourcePool.acquire`'s
        rules and are checked at the call. ``timeout``: seconds per attempt,
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
        # As submit() item by item, but each distinct (required_gpus, min_memory_mb)
        # pair of plain ints is validated once, not once per item.
        specs: dict[tuple[int, int], _Spec] = {}
        handles: list[TaskHandle[ItemT]] = []
        for item in materialised:
            gpus = required_gpus(item) if callable(required_gpus) else required_gpus
            memory = min_memory_mb(item) if callable(min_memory_mb) else min_memory_mb
            task_key = None if key is None else key(item)
            self._check_open()
            plain = type(gpus) is int and type(memory) is int
            spec = specs.get((gpus, memory)) if plain else None
            if spec is None:
                spec = self._spec(
                    fn,
                    required_gpus=gpus,
                    min_memory_mb=memory,
                    exclusive=exclusive,
                    priority=priority,
                    timeout=timeout,
                    retries=retries,
                    retry_on=retry_on,
                    retry_backoff=retry_backoff,
                )
                if plain:
                    specs[gpus, memory] = spec
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
    ) -> None:
        """THE place every state change goes through: journal first, then subscribers."""
        task.status = status
        if self._journal is None and not self._hub.active:
            return
        event = TaskEvent(
            key=task.key,
            status=status,
            time=self._clock(),
            attempt=attempt,
            gpu_indices=gpu_indices,
            error=error,
            from_journal=result is not None and result.from_journal,
        )
        if self._journal is not None and not event.from_journal:
            await self._journal.record(event, result)
        self._hub.publish(event)

    async def _end(self, task: TaskHandle[Any], result: TaskResult) -> None:
        if self._sqlite_journal and not result.from_journal:
            from ._journal import storable

            # A value the journal cannot store fails the task, here as in the journal.
            result = storable(result)
        if self._journal is None and not self._hub.active:
            task.status = result.status  # what _record does when no one listens
        else:
            with anyio.CancelScope(shield=True):
                await self._record(
                    task, result.status, result.attempts, result.gpu_indices, result.error, result
                )
        self._finished += 1
        task._finish(result)

    async def _drive(self, task: TaskHandle[Any]) -> None:
        _EXECUTORS.set(self._executors)
        try:
            if self._journal is not None:
                try:
                    prior = await self._journal.finished(task.key)
                except Exception as exc:
                    # Not journaled, so not run: the task fails, the others go on.
                    await self._end(task, _Outcome(error=exc).result(task.key, 0, None))
                    return
                if prior is not None:
                    await self._end(task, attrs.evolve(prior, key=task.key, from_journal=True))
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
            if outcome.error is None or not (
                attempt <= spec.retries and should_retry(spec.retry_on, outcome.error)
            ):
                return outcome.result(task.key, attempt, started)
            await self._record(
                task, TaskStatus.RETRYING, attempt, outcome.gpu_indices, _error_text(outcome.error)
            )
            await anyio.sleep(
                backoff_delay(attempt, initial=spec.retry_backoff, jitter=random.random())
            )

    async def _attempt(self, task: TaskHandle[Any], attempt: int) -> _Outcome:
        spec = task._spec
        outcome = _Outcome()
        allocation: GPUAllocation | None = None
        try:
            if spec.required_gpus:
                if self._journal is None and not self._hub.active:
                    task.status = TaskStatus.WAITING_FOR_GPU
                else:
                    await self._record(task, TaskStatus.WAITING_FOR_GPU, attempt)
                assert self._pool is not None
                await self._gpu_gate.acquire()
                try:
                    allocation = await self._pool.acquire(
                        spec.required_gpus,
                        min_memory_mb=spec.min_memory_mb,
                        exclusive=spec.exclusive,
                        priority=spec.priority,
                        experiment_id=task.key,
                    )
                finally:
                    self._gpu_gate.release()
                outcome.gpu_indices = allocation.gpu_indices
            await self._slots.acquire(front=allocation is not None)
            try:
                # A task cancelled before it started never starts.
                await anyio.lowlevel.checkpoint_if_cancelled()
                if self._journal is None and not self._hub.active:
                    task.status = TaskStatus.RUNNING
                else:
                    await self._record(task, TaskStatus.RUNNING, attempt, outcome.gpu_indices)
                outcome.started = self._clock()
                if spec.is_async and spec.timeout is None:
                    outcome.value = await spec.fn(task.item, allocation)
                else:
                    outcome.value = await self._call(spec, task.item, allocation)
                outcome.ended = self._clock()
            finally:
                self._slots.release()
        except self._cancelled_class:
            raise
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            outcome.error = exc
            outcome.ended = self._clock()
        finally:
            if allocation is not None:
                # release() never yields, so it completes under cancellation too.
                assert self._pool is not None
                await self._pool.release(allocation)
        return outcome

    async def _call(self, spec: _Spec, item: Any, allocation: GPUAllocation | None) -> Any:
        if spec.is_async:
            return await self._timed(spec, item, allocation)
        # A plain function's timeout starts once it has a high-level worker.
        async with self._executors.high.slot():
            return await self._timed(spec, item, allocation)

    async def _timed(self, spec: _Spec, item: Any, allocation: GPUAllocation | None) -> Any:
        if spec.timeout is None:
            return await self._invoke(spec, item, allocation)
        with anyio.move_on_after(spec.timeout) as scope:
            return await self._invoke(spec, item, allocation)
        if scope.cancelled_caught:
            raise _TaskTimeout(f"the task ran past its timeout of {spec.timeout} s")
        raise AssertionError(
            "unreachable: the timeout scope ended without a value"
        )  # pragma: no cover

    async def _invoke(self, spec: _Spec, item: Any, allocation: GPUAllocation | None) -> Any:
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
        required_gpus: int = 0,
        min_memory_mb: int = 0,
        exclusive: bool = True,
        timeout: float | None = None,
        retries: int = 0,
        retry_on: RetryOn | None = None,
        retry_backoff: float = 1.0,
        key_prefix: str = "trial-",
    ) -> OptimizeResult[S]:
        """Ask/tell tuning: keep up to ``max_parallel`` trials of ``objective`` in flight.

        ``strategy.ask()`` is called as slots free up, ``strategy.tell(suggestion,
        result)`` with every result, failures included; see ``docs/tutorial.md``.
        """
        return await optimize(
            self,
            strategy,
            objective,
            n_trials=n_trials,
            max_parallel=max_parallel,
            direction=direction,
            required_gpus=required_gpus,
            min_memory_mb=min_memory_mb,
            exclusive=exclusive,
            timeout=timeout,
            retries=retries,
            retry_on=retry_on,
            retry_backoff=retry_backoff,
            key_prefix=key_prefix,
        )


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


def _open_journal(journal: object) -> RunnerJournal | None:
    """The SQLite journal for a path or a ``Journal``; ``None`` for anything else."""
    from ._journal import Journal

    if isinstance(journal, (str, os.PathLike, Journal)):
        from ._journal_runner import open_journal

        return open_journal(journal)
    return None


def _is_sqlite_journal(journal: object) -> bool:
    if journal is None:
        return False
    from ._journal_runner import RunnerJournal

    return isinstance(journal, RunnerJournal)


def _check_journal(journal: object) -> TaskJournal | None:
    if journal is None or isinstance(journal, TaskJournal):
        return journal
    raise TypeError(
        "journal must be None, a path for the SQLite journal, a gpupool.Journal, or an "
        "object with async finished(key) and record(event, result) methods, "
        f"got {journal!r}"
    )
