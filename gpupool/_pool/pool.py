"""GPUResourcePool: the async shell around the scheduling core.

The shell does three things and decides nothing: it turns calls into core
inputs (with the current time), it parks each waiter on the backend's own
primitive (``native.py``) until the core names it in a decision, and it reports every wait that
ends early (cancelled, timed out) back to the core, which takes back a grant
that raced in and hands it to the next waiter. There is no polling loop: a
waiter costs nothing while nothing changes.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import warnings
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, final

import anyio
import anyio.abc
import anyio.lowlevel

from .._core.backfill import BackfillPolicy
from .._core.checks import check_finite_seconds, check_int, check_seconds, is_async_callable, shown
from .._core.decisions import Failure, Grant, Outcome
from .._core.errors import (
    AllocationNotHeld,
    GPUPoolError,
    PoolClosed,
    PoolTimeout,
    ProviderError,
    WouldBlock,
)
from .._core.model import GPUAllocation, GPUStats, PoolStatistics, StartedProcess
from .._core.policy import SchedulingPolicy
from .._core.pool_core import PoolCore
from .._core.request import ResourceOptions, Resources, check_experiment_id, request_of
from .._core.scheduler import Scheduler
from .._core.scoring import Scorer, default_score
from .._ledger.location import DEFAULT, prepare_ledger_dir, resolve_ledger
from .._ledger.machine import KEEPALIVE_INTERVAL, POLL_INTERVAL, MachineCore
from ..providers import GPUProvider
from ..providers.nvml import NVMLProvider
from .monitor import GPUMonitor, snapshot_off_loop
from .native import Native, Parked

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["GPUResourcePool"]

logger = logging.getLogger("gpupool")

_pool_ids = itertools.count(1)


@final
class _Allocation:
    """What :meth:`GPUResourcePool.allocation` returns: acquire on enter, release on exit.

    A class rather than an ``@asynccontextmanager`` generator, and the exit
    releases without a shielding cancel scope, since the release never
    awaits (so cancellation cannot interrupt it). Measured on trio, an
    uncontended ``async with pool.allocation()`` took 26.5 us as a generator
    against 6.1 us for ``async with CapacityLimiter``; see docs/benchmarks.md
    for what it takes now.
    """

    __slots__ = ("_experiment_id", "_held", "_limit", "_pool", "_request")

    def __init__(
        self,
        pool: GPUResourcePool,
        request: Resources,
        limit: float | None,
        experiment_id: str | None,
    ) -> None:
        self._pool = pool
        self._request = request
        self._limit = limit
        self._experiment_id = experiment_id
        self._held: GPUAllocation | None = None

    async def __aenter__(self) -> GPUAllocation:
        self._held = await self._pool.acquire(
            self._request, timeout=self._limit, experiment_id=self._experiment_id
        )
        return self._held

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        held, self._held = self._held, None
        if held is not None:
            try:  # noqa: SIM105 - contextlib.suppress would cost a context manager per exit
                self._pool._release(held)
            except AllocationNotHeld:
                pass  # the body released it already (pool.release(alloc) inside the block)


def _check_policy(policy: object) -> None:
    """``None`` or an object with the :class:`SchedulingPolicy` methods (else ``TypeError``)."""
    if policy is None:
        return
    missing = [
        name
        for name in ("push", "remove", "schedule", "__iter__", "__len__")
        if not callable(getattr(policy, name, None))
    ]
    if missing or isinstance(policy, type):
        raise TypeError(
            "policy must be None or a scheduling policy (such as gpupool.BackfillPolicy() or "
            f"gpupool.FifoPolicy(); see docs/scheduling.md), got {shown(policy)}"
        )


@final
class _ProcessAttribution:
    """The pool's ``on_process_started`` hook, carried by every allocation it grants.

    ``run_process(cmd, allocation=alloc)`` calls it (``gpupool._process.started``),
    so the job's processes are attributed to ``alloc`` without the pool being
    passed along. Weak, so an allocation kept after its pool is gone does not keep
    the pool alive; a no-op once the pool has closed; pickled as no hook at all.
    """

    __slots__ = ("_pool",)

    def __init__(self, pool: GPUResourcePool) -> None:
        self._pool = weakref.ref(pool)

    def __call__(self, process: StartedProcess) -> None:
        pool = self._pool()
        if pool is not None and not pool._closed and process.allocation is not None:
            pool.register_process(process.allocation, process.pid)

    def __reduce__(self) -> tuple[object, ...]:
        return (_no_hook, ())


def _no_hook() -> None:
    """What a pickled :class:`_ProcessAttribution` becomes: the copy's pool is not here."""


@final
class GPUResourcePool:
    """Shares a machine's GPUs between concurrent tasks, fairly and safely.

    >>> async with GPUResourcePool(FakeGPUProvider(count=4)) as pool:  # doctest: +SKIP
    ...     async with pool.allocation(Resources(2, min_memory_mb=8000)) as alloc:
    ...         print(alloc.env["CUDA_VISIBLE_DEVICES"])

    ``provider=None`` means the machine's real GPUs through NVML; a machine
    without NVML gets a :class:`ProviderError` that says what to install, or to
    pass a :class:`FakeGPUProvider`. ``max_parallel`` caps how many
    allocations are held at once (``None``: as many as the GPUs allow).
    ``refresh_interval`` bounds how often the provider is asked;
    ``settle_timeout`` bounds how long a GPU waits, after a release, for the
    memory of the released job's processes to come back (see docs/devices.md).
    ``policy`` orders the waiters (default: :class:`BackfillPolicy`, priority
    then arrival with backfilling that starves nobody; see docs/scheduling.md);
    ``scorer`` ranks the GPUs that fit (default: free memory and idleness): a
    plain function that returns a finite number; a call for which it fails
    raises its error and changes nothing (docs/errors.md, "Scorers").
    ``open_timeout`` bounds the wait for the provider's first snapshot on
    entry (``None``: no bound); a driver that does not answer in time is a
    :class:`ProviderError`.

    ``ledger`` is the machine-wide ledger's directory, which every pool on
    the machine given the same directory joins, so that independent
    processes never double-book a GPU and share one fair queue
    (docs/machine.md). By default pools on real GPUs (NVML) join
    ``$GPUPOOL_LEDGER`` or ``/dev/shm/gpupool``, and pools on other
    providers (fakes) join none; ``None`` opts out. With a ledger the
    machine-wide queue is ordered by the default policy and scorer, the same
    in every process, so ``policy`` and ``scorer`` need ``ledger=None``.
    """

    def __init__(
        self,
        provider: GPUProvider | None = None,
        *,
        max_parallel: int | None = None,
        refresh_interval: float = 1.0,
        settle_timeout: float = 30.0,
        policy: SchedulingPolicy | None = None,
        scorer: Scorer = default_score,
        open_timeout: float | None = 60.0,
        ledger: str | os.PathLike[str] | object | None = DEFAULT,
        # Private, for `gpupool reserve`: how this pool's holds are labelled in the
        # ledger ("reservation" lets `gpupool release` end them). Not a user's choice,
        # so it stays out of the docs; the machine core stores whatever it is given.
        _ledger_kind: str = "allocation",
    ) -> None:
        if provider is not None and not callable(getattr(provider, "snapshot", None)):
            raise TypeError(f"provider must have a snapshot() method, got {shown(provider)}")
        if max_parallel is not None:
            check_int("max_parallel", max_parallel, minimum=1)
        interval = check_finite_seconds("refresh_interval", refresh_interval, allow_zero=False)
        settle = check_seconds("settle_timeout", settle_timeout)
        self._open_timeout = check_seconds("open_timeout", open_timeout, allow_zero=False)
        _check_policy(policy)
        if not callable(scorer) or is_async_callable(scorer):
            raise TypeError(
                "scorer must be a plain function of a GPU returning a finite number, "
                f"got {shown(scorer)}"
            )
        self._ledger_dir = resolve_ledger(
            ledger, real_gpus=provider is None or isinstance(provider, NVMLProvider)
        )
        if self._ledger_dir is not None and (policy is not None or scorer is not default_score):
            raise ValueError(
                "policy= and scorer= order the requests of one process; with a machine-wide "
                f"ledger ({self._ledger_dir}) every process orders the machine's queue the "
                "same way, so pass ledger=None to use a policy or scorer of your own"
            )
        if _ledger_kind not in ("allocation", "reservation"):
            raise ValueError(
                f"_ledger_kind must be 'allocation' or 'reservation', got {shown(_ledger_kind)}"
            )
        self._ledger_kind = _ledger_kind
        self._provider = provider
        self._max_parallel = max_parallel
        self._refresh_interval = interval
        self._settle_timeout = float("inf") if settle is None else settle
        self._policy = policy
        self._scorer = scorer
        self._id = next(_pool_ids)
        #: What decides for the pool (set on entry): its own Scheduler, or the ledger's
        #: MachineCore; the pool uses only the PoolCore calls on either.
        self._core: PoolCore | None = None
        self._monitor: GPUMonitor | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        self._monitor_scope: anyio.CancelScope | None = None
        # Made on entry, as the monitor's is: a CancelScope needs a running event loop,
        # and a pool may be constructed outside one.
        self._listener_scope: anyio.CancelScope | None = None
        #: The listener's current sleep on its socket (with a ledger): a new waiter
        #: brings its deadline in to the slow poll's (see _wait).
        self._listener_sleep: anyio.CancelScope | None = None
        self._owned_provider: NVMLProvider | None = None
        self._clock: Callable[[], float] = anyio.current_time
        # The two halves of an acquire's schedule point (see Native.before/after).
        self._before: Callable[[], Awaitable[None]] = anyio.lowlevel.checkpoint
        self._after: Callable[[], Awaitable[None]] | None = None
        self._parked: Callable[[], Parked[Outcome]] | None = None
        #: The parked acquire of each queued ticket, handed the core's decision for it.
        self._waiters: dict[int, Parked[Outcome]] = {}
        self._opened = False
        self._closed = False

    # ------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> GPUResourcePool:
        if self._opened:
            raise RuntimeError("a GPUResourcePool can be entered only once")
        self._opened = True
        provider = self._provider
        if provider is None:
            # Pool-owned: NVML is shut down again when the pool closes.
            provider = self._owned_provider = NVMLProvider()
        try:
            snapshot = await self._first_snapshot(provider)
        except BaseException as exc:
            self._closed = True
            # Cancelled: the snapshot's thread may still be stuck in the driver, holding
            # the provider's lock, so the close must not wait for it on the loop.
            self._close_owned_provider(in_background=not isinstance(exc, Exception))
            raise
        if snapshot is None:
            self._closed = True
            self._close_owned_provider(in_background=True)  # the thread is stuck, as above
            raise ProviderError(
                f"the GPU provider did not answer its first snapshot within open_timeout="
                f"{self._open_timeout} s (a hung driver: does `nvidia-smi` answer?); pass "
                "a larger open_timeout, or None, to wait longer"
            )
        try:
            core: PoolCore
            if self._ledger_dir is not None:
                core = await self._join_ledger(self._ledger_dir, snapshot)
            else:
                core = Scheduler(
                    snapshot,
                    max_parallel=self._max_parallel,
                    scorer=self._scorer,
                    # The pool picks the default policy; the core takes whichever it is given.
                    policy=BackfillPolicy() if self._policy is None else self._policy,
                    settle_timeout=self._settle_timeout,
                    pool_id=self._id,
                    on_process_started=_ProcessAttribution(self),
                )
        except BaseException:
            # A scorer that fails on the first snapshot, or a ledger that cannot be
            # used: the pool never opens.
            self._closed = True
            self._close_owned_provider()
            raise
        monitor = GPUMonitor(
            provider,
            refresh_interval=self._refresh_interval,
            handler=self._on_snapshot,
            epoch=lambda: core.epoch,
            wanted=lambda: core.wants_refresh,
            tick=lambda now: self._dispatch(core.expire(now)),
        )
        # The monitor runs under a cancel scope of its own: cancelling the task group's
        # scope would cancel the body of the user's `async with`, which that group wraps.
        monitor_scope = anyio.CancelScope()
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        try:
            await task_group.start(self._run_monitor, monitor, monitor_scope)
            if isinstance(core, MachineCore):
                self._listener_scope = anyio.CancelScope()
                await task_group.start(self._listen, core, self._listener_scope)
        except BaseException as exc:
            task_group.cancel_scope.cancel()
            if isinstance(core, MachineCore):
                core.close()
            await task_group.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        # The first snapshot counts as a refresh: acquires within refresh_interval reuse it.
        monitor.mark_fresh(anyio.current_time())
        native = Native.current()
        self._clock, self._parked = native.clock, native.parked
        self._before, self._after = native.before, native.after
        self._core, self._monitor, self._task_group = core, monitor, task_group
        self._monitor_scope = monitor_scope
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.aclose()  # its checkpoint raises when the body was cancelled from outside
        finally:
            # Always left, or the task group's cancel scope stays on the task's stack and the
            # enclosing scope's exit fails ("cancel scope that isn't the current task's").
            task_group, self._task_group = self._task_group, None
            if task_group is not None:
                await task_group.__aexit__(None, None, None)

    async def aclose(self) -> None:
        """Close the pool: waiters get :class:`PoolClosed`, nothing more is granted.

        Holders keep their GPUs until they release them (releasing after close
        is allowed). Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        if self._core is not None:
            self._dispatch(self._core.close())
        if self._monitor_scope is not None:
            self._monitor_scope.cancel()
        if self._listener_scope is not None:
            self._listener_scope.cancel()
        # A snapshot in flight may be stuck in a sick driver; its abandoned thread
        # holds the provider's lock until the driver answers.
        self._close_owned_provider(
            in_background=self._monitor is not None and self._monitor.refreshing
        )
        await anyio.lowlevel.checkpoint()

    async def _first_snapshot(self, provider: GPUProvider) -> list[GPUStats] | None:
        """The provider's first snapshot, or ``None`` if it took over ``open_timeout``.

        Any failure of the provider is a :class:`ProviderError`.
        """
        with anyio.move_on_after(self._open_timeout):
            try:
                snapshot, _ = await snapshot_off_loop(provider)
            except ProviderError:
                raise
            except Exception as exc:
                raise ProviderError(
                    f"the GPU provider failed on its first snapshot: {exc!r}"
                ) from exc
            return snapshot
        return None

    def _close_owned_provider(self, *, in_background: bool = False) -> None:
        """Shut down the NVML the pool opened itself.

        ``in_background``: in a daemon thread, because a snapshot may still be
        running in the driver, and the close waits for it to return.
        """
        provider, self._owned_provider = self._owned_provider, None
        if provider is None:
            return
        if in_background:
            threading.Thread(target=provider.close, name="gpupool-nvml-close", daemon=True).start()
        else:
            provider.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        # One line from statistics(), like trio's <CapacityLimiter 2/8 with 3 waiting>.
        if self._core is None:
            return "<GPUResourcePool closed>" if self._closed else "<GPUResourcePool not open>"
        stats = self._core.statistics()
        held = sum(1 for gpu in stats.gpus if gpu.holder_ids)
        closed = "closed, " if self._closed else ""  # holders may outlive the close
        return (
            f"<GPUResourcePool {closed}{held}/{len(stats.gpus)} GPUs held, {stats.waiters} waiting>"
        )

    async def _join_ledger(self, directory: Path, snapshot: Sequence[GPUStats]) -> MachineCore:
        """Join the machine-wide ledger in ``directory`` (file work: off the event loop)."""

        def join() -> MachineCore:
            return MachineCore(
                prepare_ledger_dir(directory),
                snapshot,
                max_parallel=self._max_parallel,
                settle_timeout=self._settle_timeout,
                pool_id=self._id,
                on_process_started=_ProcessAttribution(self),
                kind=self._ledger_kind,
            )

        return await anyio.to_thread.run_sync(join)

    async def _listen(
        self,
        machine: MachineCore,
        scope: anyio.CancelScope,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Hand this pool's waiters what other processes decided for them.

        Sleeps on the member's socket until another process sends a wake-up
        (``gpupool._ledger.wakeup``); while this pool has waiters, it also
        reads the ledger every ``POLL_INTERVAL`` seconds, which bounds a lost
        wake-up and frees what dead processes held.
        """
        with scope:
            machine.listening = True
            task_status.started()
            try:
                while True:
                    # Idle, it still looks every KEEPALIVE_INTERVAL that its lock file
                    # is in place (docs/machine.md: cleaners of /dev/shm).
                    waiting = machine.waiting > 0
                    interval = POLL_INTERVAL if waiting else KEEPALIVE_INTERVAL
                    with anyio.move_on_after(interval) as wait:
                        self._listener_sleep = wait
                        await anyio.wait_readable(machine.membership.socket)
                    self._listener_sleep = None
                    machine.membership.drain()
                    try:
                        outcomes = machine.collect(poll=wait.cancelled_caught and waiting)
                    except GPUPoolError as error:
                        logger.error("gpupool: could not read the machine-wide ledger: %s", error)
                        continue
                    self._dispatch(outcomes)
            finally:
                self._listener_sleep = None
                machine.listening = False
                machine.leave_if_done()

    @staticmethod
    async def _run_monitor(
        monitor: GPUMonitor,
        scope: anyio.CancelScope,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        with scope:
            await monitor.run(task_status=task_status)

    # ------------------------------------------------------------ acquiring

    async def acquire(
        self,
        resources: Resources | int | None = None,
        *,
        timeout: float | None = None,
        experiment_id: str | None = None,
        **options: Unpack[ResourceOptions],
    ) -> GPUAllocation:
        """Wait for GPUs and return them as an allocation; release it with :meth:`release`.

        The request is a :class:`~gpupool.Resources` (``pool.acquire(Resources(2,
        min_memory_mb=8000))``) or its keywords (``pool.acquire(required_gpus=2,
        min_memory_mb=8000)``, or ``pool.acquire(2, ...)``), not both; nothing
        given is one whole GPU. ``required_gpus`` whole GPUs that no other
        allocation holds, each with at least ``min_memory_mb`` free; with
        ``exclusive=False``, GPUs shared with other shared allocations while
        their memory fits. Higher ``priority`` is served first, equal
        priorities in arrival order; a later request starts first only within
        the bounds docs/scheduling.md gives. ``expected_duration`` (seconds) is
        a hint that lets shorter requests use GPUs the queue's head is waiting
        for without delaying it. ``experiment_id`` labels the allocation (it
        goes with a :class:`~gpupool.Resources` as with the keywords).

        The request is decided on the cached snapshot, never after waiting for
        the provider (a stale one is refreshed in the background), so a hung
        driver cannot hold it past its timeout; see docs/pool.md.

        Raises :class:`PoolTimeout` after ``timeout`` seconds,
        :class:`UnsatisfiableRequest` at once when no GPU could ever satisfy
        the request, :class:`PoolClosed` when the pool closes, and
        ``TypeError`` / ``ValueError`` for bad arguments (docs/errors.md).
        Cancellation at any point leaves nothing held.
        """
        request = request_of(resources, options)
        limit = None if timeout is None else check_seconds("timeout", timeout)
        if experiment_id is not None:
            check_experiment_id(experiment_id)
        core, monitor = self._core, self._monitor
        if core is None or monitor is None or self._closed:
            core, monitor = self._require_open()  # raises PoolClosed
        # See any pending cancellation *before* deciding, and after it yield only
        # where cancellation cannot reach (Native.before/after): a grant is never
        # made to a caller that cancellation then takes away.
        await self._before()
        now = self._clock()
        if now >= monitor.stale_at:
            # Decide on the data we have and refresh in the background: waiting for a
            # sick driver here would hold the grant past its timeout (docs/pool.md).
            monitor.refresh_soon()
        allocation = core.grant_at_once(request, now, experiment_id)
        if allocation is None:
            submission = core.submit(request, now, experiment_id=experiment_id)
            if submission.outcomes:
                self._dispatch(submission.outcomes)
            if submission.error is not None:
                raise submission.error
            if submission.allocation is None:
                return await self._wait(core, submission.ticket, request, limit)
            allocation = submission.allocation
        if self._after is not None:
            await self._after()
        return allocation

    def acquire_nowait(
        self,
        resources: Resources | int | None = None,
        *,
        experiment_id: str | None = None,
        **options: Unpack[ResourceOptions],
    ) -> GPUAllocation:
        """Like :meth:`acquire` (the same request forms), but raise :class:`WouldBlock`
        instead of waiting.

        It never jumps the queue: while an earlier request that this one would
        delay is waiting, it raises :class:`WouldBlock` even if GPUs are free.
        It decides on the cached snapshot, however old (it cannot wait for a
        new one), and starts a refresh in the background when that is stale.
        """
        request = request_of(resources, options)
        experiment_id = check_experiment_id(experiment_id)
        core, monitor = self._require_open()
        now = self._clock()
        if now >= monitor.stale_at:
            monitor.refresh_soon()
        submission = core.submit(request, now, nowait=True, experiment_id=experiment_id)
        self._dispatch(submission.outcomes)
        if submission.error is not None:
            raise submission.error
        if submission.allocation is None:
            raise WouldBlock(
                f"no GPUs free now for required_gpus={request.required_gpus}, "
                f"min_memory_mb={request.min_memory_mb} without overtaking "
                f"{core.waiting} waiting request(s)"
            )
        return submission.allocation

    async def release(self, allocation: GPUAllocation) -> None:
        """Give ``allocation``'s GPUs back; they go to the next waiters at once.

        Raises :class:`AllocationNotHeld` if it was released already or came
        from another pool. Never blocks, and completes even when the calling
        task is being cancelled, so it is safe in ``finally`` blocks.
        """
        self._release(allocation)

    def _release(self, allocation: GPUAllocation) -> None:
        """:meth:`release`, which never awaits anything: so it cannot be interrupted."""
        core = self._core
        if core is None:
            raise AllocationNotHeld(
                f"allocation {allocation.id} is not held: the pool never opened"
            )
        outcomes = core.release(allocation, self._clock())
        if outcomes:
            self._dispatch(outcomes)
        if self._monitor is not None and core.wants_refresh:
            self._monitor.wake()

    def allocation(
        self,
        resources: Resources | int | None = None,
        *,
        timeout: float | None = None,
        experiment_id: str | None = None,
        **options: Unpack[ResourceOptions],
    ) -> AbstractAsyncContextManager[GPUAllocation]:
        """``acquire`` on entry and ``release`` on exit, also on error or cancellation.

        Takes the request as :meth:`acquire` does, and checks it at the call.
        """
        request = request_of(resources, options)
        limit = None if timeout is None else check_seconds("timeout", timeout)
        return _Allocation(self, request, limit, check_experiment_id(experiment_id))

    # ------------------------------------------------------------ other calls

    def statistics(self) -> PoolStatistics:
        """GPUs, holders and waiters as the pool accounts for them right now."""
        core = self._core
        if core is None:
            raise PoolClosed("the pool is not open: use `async with GPUResourcePool(...) as pool`")
        return core.statistics()

    def register_process(self, allocation: GPUAllocation, pid: int) -> None:
        """Tell the pool that process ``pid`` (and its session) works for ``allocation``.

        Its GPU memory is then covered by the allocation's reservation rather
        than counted again as foreign, and after the release the GPU is not
        granted again until the process has left it (or ``settle_timeout``).
        :func:`gpupool.run_process` does this itself (the allocation carries the
        pool's hook).
        """
        if not isinstance(allocation, GPUAllocation):
            raise TypeError(
                f"allocation must be a GPUAllocation of this pool, got {shown(allocation)}"
            )
        check_int("pid", pid, minimum=1)
        core, _ = self._require_open()
        core.attach_process(allocation, pid)

    def _ledger_hold(self, allocation: GPUAllocation, *, until: float | None = None) -> int:
        """The machine-wide id of ``allocation``'s hold in the ledger (what ``gpupool
        status`` shows and ``gpupool release`` takes), recording ``until`` (wall
        clock) as when it ends where given. Private: for ``gpupool reserve``."""
        core, _ = self._require_open()
        if not isinstance(core, MachineCore):
            raise ValueError("this pool joined no machine-wide ledger (ledger=None)")
        if until is not None:
            core.set_until(allocation, until)
        return core.hold_id(allocation)

    def mark_unhealthy(
        self,
        gpu_index: int,
        detail: str = "marked unhealthy by the user",
        *,
        reason: str | None = None,
    ) -> None:
        """Stop granting GPU ``gpu_index`` (for example after an Xid error in a job's log).

        ``detail`` says why, as ``GPUStats.health_detail`` does for a provider's
        report (``reason=`` is its old spelling, deprecated). Waiters that could
        now never be served fail with :class:`UnsatisfiableRequest`.
        """
        if reason is not None:
            warnings.warn(
                "mark_unhealthy(reason=) is deprecated, use detail= (the name "
                "GPUStats.health_detail and FakeGPUProvider.set_healthy use)",
                DeprecationWarning,
                stacklevel=2,
            )
            detail = reason
        check_int("gpu_index", gpu_index, minimum=0)
        if not isinstance(detail, str):
            raise TypeError(f"detail must be a str saying why, got {shown(detail)}")
        core, _ = self._require_open()
        self._dispatch(core.mark_unhealthy(gpu_index, anyio.current_time(), detail))

    def mark_healthy(self, gpu_index: int) -> None:
        """Undo :meth:`mark_unhealthy` (the provider's own health report still applies)."""
        check_int("gpu_index", gpu_index, minimum=0)
        core, _ = self._require_open()
        self._dispatch(core.mark_healthy(gpu_index, anyio.current_time()))

    async def refresh(self) -> None:
        """Ask the provider now (sharing a refresh already in flight) and reschedule.

        Unlike ``acquire``, this waits for the driver; cancelling it (or a
        timeout around it) stops the wait, not the snapshot.
        """
        _, monitor = self._require_open()
        await monitor.refresh()

    # ------------------------------------------------------------ internals

    def _require_open(self) -> tuple[PoolCore, GPUMonitor]:
        if self._closed:
            raise PoolClosed("the pool is closed")
        if self._core is None or self._monitor is None:
            raise PoolClosed("the pool is not open: use `async with GPUResourcePool(...) as pool`")
        return self._core, self._monitor

    async def _wait(
        self, core: PoolCore, ticket: int, request: Resources, limit: float | None
    ) -> GPUAllocation:
        assert self._parked is not None  # set on enter, before any acquire
        waiter = self._waiters[ticket] = self._parked()
        if self._monitor is not None:
            self._monitor.wake()
        sleep = self._listener_sleep
        if sleep is not None:
            # The listener may have gone to sleep with no waiter, and so only until its
            # keep-alive: a lost wake-up or a dead holder would go unnoticed that long.
            sleep.deadline = min(sleep.deadline, anyio.current_time() + POLL_INTERVAL)
        try:
            if limit is None:
                outcome = await waiter.wait()
            else:
                with anyio.fail_after(limit):
                    outcome = await waiter.wait()
        except BaseException as exc:
            del self._waiters[ticket]
            # Withdraws the waiter, or hands back a grant that raced with the interruption.
            self._dispatch(core.cancel(ticket, anyio.current_time()))
            if isinstance(exc, TimeoutError):
                raise PoolTimeout(
                    f"no GPUs within {limit} s for required_gpus={request.required_gpus}, "
                    f"min_memory_mb={request.min_memory_mb}, exclusive={request.exclusive}"
                ) from None
            raise
        del self._waiters[ticket]
        if isinstance(outcome, Failure):
            raise outcome.error
        assert isinstance(outcome, Grant)
        return outcome.allocation

    def _dispatch(self, outcomes: Sequence[Outcome]) -> None:
        for outcome in outcomes:
            waiter = self._waiters.get(outcome.ticket)
            if waiter is None:
                # Every queued ticket has a waiter before the first checkpoint, so this
                # is a bug; give a stray grant back rather than leak its GPUs.
                logger.error("gpupool: decision for unknown ticket %s: %s", outcome.ticket, outcome)
                if isinstance(outcome, Grant) and self._core is not None:
                    self._dispatch(self._core.release(outcome.allocation, anyio.current_time()))
                continue
            waiter.give(outcome)

    def _on_snapshot(
        self, snapshot: Sequence[GPUStats], started: float, epoch: int, sessions: Mapping[int, int]
    ) -> None:
        if self._core is None:
            return
        try:
            outcomes = self._core.update(snapshot, started, epoch=epoch, sessions=sessions)
        except Exception as exc:
            # The scorer failed on the new numbers (nothing else in update calls user
            # code). The core changed nothing, so the pool goes on with the last good
            # snapshot, as after a failed provider call; there is no caller to raise to.
            logger.error(
                "gpupool: a GPU snapshot was not taken in, keeping the last one: %s",
                exc,
                exc_info=True,
            )
            return
        self._dispatch(outcomes)
