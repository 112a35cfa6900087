"""Cached, single-flight GPU snapshots, taken off the event loop.

NVML calls block (milliseconds normally, seconds or forever on a sick driver),
so every snapshot runs in a worker thread. However many acquires arrive, the
provider is asked at most once per ``refresh_interval``, and at most one
snapshot is ever in flight (single-flight): one that takes longer than the
interval stays the only one until it returns, so threads never pile up on a
sick driver. The refresh runs in the pool's own task group, so a caller that
is cancelled while waiting does not throw the snapshot away for the others.

Nobody has to wait for a refresh to be served: an acquire that finds the cache
stale starts one with :meth:`GPUMonitor.refresh_soon` and decides on the data
it has (the pool's reservations are exact; the provider's numbers are advisory
anyway). When the snapshot lands, the handler re-examines the waiters.

While the pool has waiters (or GPUs waiting for memory to settle), a
background loop refreshes every ``refresh_interval`` so that memory freed by
processes outside the pool is noticed, and ends settles whose deadline passed
even when the provider fails or hangs; with nobody waiting it sleeps on an
event and costs nothing.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence

import anyio
import anyio.abc
import anyio.to_thread

from .._core.model import GPUStats
from ..providers import GPUProvider

__all__ = ["GPUMonitor", "SnapshotHandler", "snapshot_off_loop", "take_snapshot"]

logger = logging.getLogger("gpupool")

#: Called on the event loop with (snapshot, time it was started, epoch, pid -> session id).
SnapshotHandler = Callable[[Sequence[GPUStats], float, int, Mapping[int, int]], None]


async def snapshot_off_loop(provider: GPUProvider) -> tuple[list[GPUStats], dict[int, int]]:
    """:func:`take_snapshot` in a worker thread, or inline for a provider that never blocks.

    A provider whose ``snapshot_blocks`` attribute is false (a
    :class:`FakeGPUProvider` with no simulated latency) is asked on the event
    loop: a thread hop would cost more than the call, and under trio's
    ``MockClock(autojump_threshold=0)`` virtual time would jump while the
    thread ran, firing every deadline in a test.

    A cancelled caller does not wait for a hung driver: the thread is
    abandoned (it ends when the call returns, and its result is dropped), so
    closing the pool or a caller's own timeout is never held up by NVML.
    """
    if getattr(provider, "snapshot_blocks", True):
        return await anyio.to_thread.run_sync(take_snapshot, provider, abandon_on_cancel=True)
    return take_snapshot(provider)


def take_snapshot(provider: GPUProvider) -> tuple[list[GPUStats], dict[int, int]]:
    """Ask ``provider`` (blocking; run in a thread) and look up each process's session.

    The session ids let the core attribute a job's children to its allocation:
    ``run_process`` starts every job in a session of its own.
    """
    snapshot = list(provider.snapshot())
    for stats in snapshot:
        if not isinstance(stats, GPUStats):
            raise TypeError(f"provider {provider!r} returned {stats!r}, not GPUStats")
    sessions: dict[int, int] = {}
    for stats in snapshot:
        for process in stats.processes:
            try:
                sessions[process.pid] = os.getsid(process.pid)
            except (ProcessLookupError, PermissionError):
                continue  # gone already, or not ours to inspect: attributed by pid alone
    return snapshot, sessions


class GPUMonitor:
    """Keeps the scheduler fed with snapshots; see the module docstring."""

    def __init__(
        self,
        provider: GPUProvider,
        *,
        refresh_interval: float,
        handler: SnapshotHandler,
        epoch: Callable[[], int],
        wanted: Callable[[], bool],
        tick: Callable[[float], None],
    ) -> None:
        self._provider = provider
        self._refresh_interval = refresh_interval
        self._handler = handler
        self._epoch = epoch
        self._wanted = wanted
        self._tick = tick
        #: From this time on (the pool's clock) the last snapshot counts as stale.
        #: An attribute, not a method, because every acquire reads it.
        self.stale_at = -math.inf
        self._inflight: anyio.Event | None = None
        self._wake: anyio.Event | None = None
        self._task_group: anyio.abc.TaskGroup | None = None

    def mark_fresh(self, started: float) -> None:
        """Count a snapshot taken elsewhere (the pool's first) as a refresh started at ``started``."""
        self.stale_at = started + self._refresh_interval

    def wake(self) -> None:
        """Tell the background loop that a refresh may now be wanted."""
        if self._wake is not None:
            self._wake.set()

    @property
    def refreshing(self) -> bool:
        """Whether a snapshot is in flight (its thread may be stuck in a sick driver)."""
        return self._inflight is not None

    def refresh_soon(self) -> anyio.Event | None:
        """Start a refresh in the background unless one is in flight; never waits.

        What an acquire on a stale cache calls: the acquire decides on the data
        it has, and the handler re-examines the waiters when the snapshot lands.
        Returns the event the refresh in flight sets when done (``None`` when
        the background loop is not running, so nothing was started).
        """
        event = self._inflight
        if event is None and self._task_group is not None:
            event = self._inflight = anyio.Event()
            self._task_group.start_soon(self._refresh_once, event)
        return event

    async def refresh(self) -> None:
        """Get a fresh snapshot to the handler, sharing any refresh already in flight."""
        event = self.refresh_soon()
        if event is None:
            # The background loop is not running: refresh in this task.
            event = self._inflight = anyio.Event()
            await self._refresh_once(event)
        else:
            await event.wait()

    async def _refresh_for_at_most(self, seconds: float) -> None:
        """Refresh, but stop waiting for a snapshot that is stuck after ``seconds``.

        The snapshot stays in flight (and lands whenever the driver answers);
        the loop does not start another meanwhile, so threads never pile up.
        """
        event = self.refresh_soon()
        if event is not None:
            with anyio.move_on_after(seconds):
                await event.wait()

    async def _refresh_once(self, done: anyio.Event) -> None:
        try:
            started = anyio.current_time()
            self.mark_fresh(started)
            epoch = self._epoch()
            try:
                snapshot, sessions = await snapshot_off_loop(self._provider)
            except Exception as exc:
                logger.warning("GPU snapshot failed; keeping the last good one: %s", exc)
            else:
                self._handler(snapshot, started, epoch, sessions)
        finally:
            self._inflight = None
            done.set()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """The background loop; runs in the pool's task group until cancelled."""
        async with anyio.create_task_group() as task_group:
            self._task_group = task_group
            task_status.started()
            try:
                while True:
                    if not self._wanted():
                        self._wake = anyio.Event()
                        await self._wake.wait()
                        self._wake = None
                        continue
                    delay = self.stale_at - anyio.current_time()
                    if delay > 0:
                        # Someone may refresh meanwhile: decide again after the sleep.
                        await anyio.sleep(delay)
                        continue
                    # Refresh on the sleep's verdict alone. The pool's acquire reads
                    # the same stale_at (now >= stale_at, the same comparison), so both
                    # agree to the last bit; recomputing it here from the interval
                    # could disagree by a rounding error and spin without ever
                    # awaiting, which under a MockClock hangs the event loop.
                    await self._refresh_for_at_most(self._refresh_interval)
                    # Deadlines that need no snapshot (settle_timeout) hold even when
                    # the snapshot failed or is still stuck in the driver.
                    self._tick(anyio.current_time())
            finally:
                self._task_group = None
