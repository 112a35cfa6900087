"""The two thread executors and :func:`run_blocking`.

Why two executors, and why they cannot deadlock
-----------------------------------------------
A thread pool used at two levels deadlocks when every worker blocks waiting
for work it submitted to the same pool: 4 workers score 4 samples, each
sample waits for a worker for its own blocking call, none is free. Timeouts
only turn the hang into failures. The fix here is structural, not a bigger
pool:

* The **high-level** executor runs plain (non-async) task functions. Its
  threads may wait for the low-level executor, never for the high-level one.
* The **low-level** executor runs :func:`run_blocking` calls. Its threads
  never wait for a worker at all: a ``run_blocking`` issued from a low-level
  thread runs *inline* in that thread, which already holds a worker.

So every wait points from high to low, and low-level work always makes
progress. No nesting depth and no worker count (1 and 1 included) can
deadlock; the counts are caps on concurrency, not requirements.

Caps, not pools
---------------
Each executor is an ``anyio.CapacityLimiter`` counting calls in progress;
the threads themselves are anyio's worker threads, reached with a limiter of
infinite size so that anyio's default 40-thread limiter never becomes a
hidden third cap shared with unrelated code.

Timeouts and abandoned threads
------------------------------
A thread cannot be killed. When a call times out or its caller is cancelled,
the thread is *abandoned*: the caller gets ``TimeoutError`` (or the
cancellation) at once, the executor's slot is handed to the next caller
straight away (so abandoned threads can never starve later work), and the
thread runs on until its function returns; :meth:`ThreadExecutor.statistics`
counts it in ``abandoned_running`` meanwhile. Every call also records the
nested calls it made (``_Call``): abandoning a call cancels its nested
``run_blocking`` calls and makes later ones fail fast with
:class:`CallAbandoned`, so an abandoned chain lets go of every slot it held.
Where anyio's backends differ (trio keeps a limiter token until an abandoned
thread exits, asyncio does not), the slot logic here is our own and behaves
the same on both.

Which executors a call uses is carried in a context variable: a
:class:`~gpupool.ParallelRunner` sets its own for every task it runs (and
anyio copies it into worker threads); elsewhere each event loop gets a
default pair with :data:`DEFAULT_WORKERS` workers each.
"""

from __future__ import annotations

import enum
import math
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, TypeVar, final

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
import attrs

from .._core.checks import check_callable, check_int, check_seconds, is_async_callable
from .._core.errors import GPUPoolError

__all__ = [
    "DEFAULT_WORKERS",
    "CallAbandoned",
    "ExecutorStatistics",
    "Executors",
    "ThreadExecutor",
    "current_executors",
    "run_blocking",
]

T = TypeVar("T")

#: Workers per executor where no runner chose a number (the runner's defaults too).
DEFAULT_WORKERS = 4


class CallAbandoned(GPUPoolError):
    """Raised inside an abandoned thread when it asks for more blocking work.

    Its caller timed out or was cancelled; nobody waits for the answer, so the
    thread should unwind. Not seen by the caller, only by the abandoned code.
    """


class _Role(enum.Enum):
    HIGH = "high"
    LOW = "low"


@attrs.define(eq=False)
class _Call:
    """One call running in a worker thread, and the nested calls it is waiting on.

    ``scopes`` is touched only on the event loop thread; ``abandoned`` is a
    plain flag that the worker thread reads.
    """

    abandoned: bool = False
    scopes: set[anyio.CancelScope] = attrs.Factory(set)

    def abandon(self) -> None:
        self.abandoned = True
        for scope in self.scopes:
            scope.cancel()


_ROLE: ContextVar[_Role | None] = ContextVar("gpupool_thread_role", default=None)
_CALL: ContextVar[_Call | None] = ContextVar("gpupool_call", default=None)
_EXECUTORS: ContextVar[Executors | None] = ContextVar("gpupool_executors", default=None)
_DEFAULT_EXECUTORS: anyio.lowlevel.RunVar[Executors] = anyio.lowlevel.RunVar(
    "gpupool_default_executors"
)


@final
@attrs.frozen
class ExecutorStatistics:
    """A snapshot of one executor.

    ``busy`` counts calls holding a worker slot, ``waiting`` calls queued for
    one. ``abandoned_running`` counts threads whose caller gave up (timeout or
    cancel) and which still run; they hold no slot. ``abandoned_total`` counts
    every abandonment since the executor was made.
    """

    name: str
    workers: int
    busy: int
    waiting: int
    abandoned_running: int
    abandoned_total: int


def _describe(fn: Callable[..., object]) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


@attrs.define(eq=False)
class _ThreadState:
    """Who got there first: the thread finishing, or the caller abandoning it."""

    lock: threading.Lock = attrs.Factory(threading.Lock)
    finished: bool = False
    abandoned: bool = False


@final
class ThreadExecutor:
    """A cap on how many calls of one kind run in threads at once.

    Calls beyond the cap wait in FIFO order. See the module docstring for what
    happens on timeout and cancellation.
    """

    def __init__(self, name: str, workers: int, role: _Role) -> None:
        self._name = name
        self._workers = check_int(f"{name}_workers", workers, 1)
        self._role = role
        self._limiter = anyio.CapacityLimiter(workers)
        self._threads = anyio.CapacityLimiter(math.inf)
        self._lock = threading.Lock()
        self._abandoned_running = 0
        self._abandoned_total = 0

    @property
    def workers(self) -> int:
        return self._workers

    def slot(self) -> anyio.CapacityLimiter:
        """The cap itself, for a caller that takes a slot before timing the call."""
        return self._limiter

    def statistics(self) -> ExecutorStatistics:
        limiter = self._limiter.statistics()
        with self._lock:
            return ExecutorStatistics(
                name=self._name,
                workers=self._workers,
                busy=limiter.borrowed_tokens,
                waiting=limiter.tasks_waiting,
                abandoned_running=self._abandoned_running,
                abandoned_total=self._abandoned_total,
            )

    async def run(
        self,
        executors: Executors,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        *,
        time_limit: float | None = None,
        parent: _Call | None = None,
        capped: bool = True,
    ) -> T:
        """Run ``fn(*args)`` in a worker thread and return its value.

        ``parent`` is the call on whose behalf this one runs (a worker thread
        waiting for it); abandoning the parent cancels this call. ``capped``
        is false for a call whose caller already holds a slot of this
        executor and lends it (see :func:`run_blocking`).
        """
        if parent is not None and parent.abandoned:
            raise CallAbandoned(f"{_describe(fn)} was asked for by an abandoned call")
        scope = anyio.CancelScope()
        if parent is not None:
            parent.scopes.add(scope)
        try:
            with scope:
                with anyio.move_on_after(time_limit):
                    if not capped:
                        return await self._in_thread(executors, fn, args)
                    async with self._limiter:
                        return await self._in_thread(executors, fn, args)
                raise TimeoutError(
                    f"{_describe(fn)} did not finish within timeout={time_limit} s "
                    f"on the {self._name} executor"
                )
        finally:
            if parent is not None:
                parent.scopes.discard(scope)
        # Only reached when ``parent`` was abandoned and cancelled ``scope``.
        raise CallAbandoned(f"{_describe(fn)} was cancelled because its caller was abandoned")

    async def _in_thread(
        self, executors: Executors, fn: Callable[..., T], args: tuple[Any, ...]
    ) -> T:
        call = _Call()
        state = _ThreadState()
        try:
            return await anyio.to_thread.run_sync(
                self._enter,
                executors,
                call,
                state,
                fn,
                args,
                limiter=self._threads,
                abandon_on_cancel=True,
            )
        except BaseException:
            with state.lock:
                if not state.finished:
                    state.abandoned = True
                    with self._lock:
                        self._abandoned_running += 1
                        self._abandoned_total += 1
            if state.abandoned:
                call.abandon()
            raise

    def _enter(
        self,
        executors: Executors,
        call: _Call,
        state: _ThreadState,
        fn: Callable[..., T],
        args: tuple[Any, ...],
    ) -> T:
        role_token = _ROLE.set(self._role)
        call_token = _CALL.set(call)
        executors_token = _EXECUTORS.set(executors)
        try:
            return fn(*args)
        finally:
            _EXECUTORS.reset(executors_token)
            _CALL.reset(call_token)
            _ROLE.reset(role_token)
            with state.lock:
                state.finished = True
                if state.abandoned:
                    with self._lock:
                        self._abandoned_running -= 1


@final
class Executors:
    """The high-level / low-level pair that one runner (or one event loop) uses."""

    def __init__(
        self, high_level_workers: int = DEFAULT_WORKERS, low_level_workers: int = DEFAULT_WORKERS
    ) -> None:
        self.high = ThreadExecutor("high_level", high_level_workers, _Role.HIGH)
        self.low = ThreadExecutor("low_level", low_level_workers, _Role.LOW)


def current_executors() -> Executors:
    """The executors of the current runner task, else this event loop's default pair."""
    executors = _EXECUTORS.get()
    if executors is not None:
        return executors
    try:
        return _DEFAULT_EXECUTORS.get()
    except LookupError:
        executors = Executors()
        _DEFAULT_EXECUTORS.set(executors)
        return executors


def _on_event_loop_thread() -> bool:
    """Whether an event loop (asyncio's or trio's) runs in this thread.

    anyio answers it itself: from 4.12.1 on (the floor in pyproject.toml),
    ``current_token`` raises ``NoEventLoopError`` off the loop thread, anyio's
    worker threads included, on both backends. sniffio is not asked: anyio
    no longer depends on it, so a plain install lacks it.
    """
    try:
        anyio.lowlevel.current_token()
    except anyio.NoEventLoopError:
        return False
    return True


async def _run_blocking_async(
    fn: Callable[..., T], args: tuple[Any, ...], time_limit: float | None
) -> T:
    executors = current_executors()
    # A coroutine started (via anyio.from_thread) by a worker thread carries
    # that thread's context: it works on behalf of that thread's call, and a
    # low-level caller lends its own slot instead of queueing for another.
    return await executors.low.run(
        executors,
        fn,
        args,
        time_limit=time_limit,
        parent=_CALL.get(),
        capped=_ROLE.get() is not _Role.LOW,
    )


def _run_inline(fn: Callable[..., T], args: tuple[Any, ...], timeout: float | None) -> T:
    call = _CALL.get()
    if call is not None and call.abandoned:
        raise CallAbandoned(f"{_describe(fn)} was asked for by an abandoned call")
    started = time.monotonic()
    value = fn(*args)
    if timeout is not None and time.monotonic() - started > timeout:
        raise TimeoutError(
            f"{_describe(fn)} ran inline (nested in a low-level call) and took longer than "
            f"timeout={timeout} s; an inline call cannot be pre-empted, so this is reported "
            "when it returns"
        )
    return value


def _run_in_own_thread(fn: Callable[..., T], args: tuple[Any, ...], timeout: float) -> T:
    outcome: list[Any] = []

    def target() -> None:
        try:
            outcome.append((True, fn(*args)))
        except BaseException as exc:
            outcome.append((False, exc))

    thread = threading.Thread(target=target, name=f"gpupool-{_describe(fn)}", daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome:
        raise TimeoutError(f"{_describe(fn)} did not finish within timeout={timeout} s")
    ok, value = outcome[0]
    if ok:
        return value  # type: ignore[no-any-return]
    raise value


def run_blocking(fn: Callable[..., T], *args: Any, timeout: float | None = None) -> Any:
    """Run the blocking call ``fn(*args)`` on the low-level executor.

    From async code, ``await run_blocking(fn, ...)`` returns its value. From a
    plain task function (a high-level worker thread) or any anyio worker
    thread, ``run_blocking(fn, ...)`` blocks and returns the value, with no
    async code on the caller's side. From a low-level thread (a call nested in
    another ``run_blocking``) it runs ``fn`` inline, so nesting never waits for
    a worker. From a thread with no event loop behind it, it runs ``fn``
    inline, or in a thread of its own when a ``timeout`` must be honoured.

    ``timeout`` (seconds, or ``None``) covers waiting for a worker and running;
    past it the caller gets ``TimeoutError`` and the thread is abandoned (it
    runs on, holding no worker slot). An inline call cannot be pre-empted: it
    raises ``TimeoutError`` when it returns late. ``timeout=0`` is a deadline
    of now, as everywhere in gpupool: the call times out unless it is done at
    once.

    ``fn`` must be a plain function: an ``async def`` one is refused with
    ``TypeError`` (await it instead), since calling it in a thread would only
    make a coroutine object.

    The return type is ``Any`` because one name serves both worlds: an
    awaitable from async code, the value itself from a thread.
    """
    check_callable("fn", fn)
    if is_async_callable(fn):
        raise TypeError(
            f"fn must be a plain (blocking) function, got the async function {_describe(fn)}: "
            "run_blocking would only make a coroutine object; await it instead"
        )
    checked = check_seconds("timeout", timeout)
    if _on_event_loop_thread():
        return _run_blocking_async(fn, args, checked)
    if _ROLE.get() is _Role.LOW:
        return _run_inline(fn, args, checked)
    try:
        ok, outcome = anyio.from_thread.run(_boxed, fn, args, checked)
    except anyio.NoEventLoopError:
        # Raised before anything ran (``fn``'s own errors come back boxed):
        # this thread has no event loop behind it.
        if checked is None:
            return _run_inline(fn, args, None)
        return _run_in_own_thread(fn, args, checked)
    if ok:
        return outcome
    raise outcome


async def _boxed(
    fn: Callable[..., T], args: tuple[Any, ...], time_limit: float | None
) -> tuple[bool, Any]:
    try:
        return True, await _run_blocking_async(fn, args, time_limit)
    except anyio.get_cancelled_exc_class():
        # The worker thread's own caller was cancelled (asyncio delivers that
        # here first, trio through ``_Call.abandon``): the thread sees one
        # error on both backends, never a cancellation it cannot handle.
        return False, CallAbandoned(
            f"{_describe(fn)} was cancelled because its caller was abandoned"
        )
    except Exception as exc:
        return False, exc
