"""GPU leases for tests: ``@pytest.mark.gpus(n)`` holds ``n`` GPUs in the machine's ledger.

Design. Every pytest process (each pytest-xdist worker, each suite started on
the machine) opens one :class:`~gpupool.GPUResourcePool` on the first test
that needs GPUs, joined to the machine-wide ledger, and keeps it for the
session. A lease is an ordinary ``acquire`` of that pool, labelled with the
test's node id, so the ledger does what it does for any program: a GPU held
by one worker's test is granted to no other process, waiting tests queue
machine-wide by arrival, and a killed worker's GPUs are freed by the
ledger's liveness check (docs/machine.md). There is no locking here.

pytest is synchronous, so the pool lives on an event loop in a thread of its
own (an anyio blocking portal) and a test's thread waits for its grant. A
worker asks for the GPUs its previous test held first (``acquire_nowait``
with ``allowed_gpus``), because CUDA reads ``CUDA_VISIBLE_DEVICES`` once, at
its initialisation in the process: a worker that stays on its GPUs keeps the
device its CUDA context is on. Before its first lease (or when it asks for
another number of GPUs) a pytest-xdist worker prefers the GPUs its number
points at (worker ``gwN`` asking for ``k`` GPUs: indices ``N*k`` to
``N*k + k - 1``, modulo the GPU count), so that ``pytest -n 8`` on 8 GPUs
puts each worker on its own GPU from the start instead of wherever the
race between starting workers leaves it. Only when the preferred GPUs are
not free does it wait in the queue for any.

This module is imported by the plugin only when a test asks for GPUs.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any, NoReturn, final

import attrs
import pytest

from .._core.errors import (
    GPUPoolError,
    LedgerError,
    PoolTimeout,
    ProviderError,
    UnsatisfiableRequest,
    WouldBlock,
)
from .._core.model import GPUAllocation
from .._ledger.location import DEFAULT, LEDGER_ENV, resolve_ledger
from .._ledger.status import machine_status
from .._pool.pool import GPUResourcePool
from ..providers.fake import FakeGPUProvider
from .lease_settings import LeaseSettings

__all__ = ["Lease", "LeaseBroker"]

#: What a lease sets for its test, and puts back afterwards.
_LEASED_VARIABLES = ("CUDA_DEVICE_ORDER", "CUDA_VISIBLE_DEVICES", LEDGER_ENV)


@final
@attrs.frozen
class Lease:
    """GPUs held for one test, and the environment they were given with."""

    allocation: GPUAllocation
    #: The variables of :data:`_LEASED_VARIABLES` as they were before (None: unset).
    saved: tuple[tuple[str, str | None], ...]
    #: The private ledger the test's own pools join (removed afterwards).
    inner_ledger: str


@final
class LeaseBroker:
    """One process's pool over the machine's ledger, and the leases taken from it."""

    def __init__(self, settings: LeaseSettings) -> None:
        self._settings = settings
        self._stack = ExitStack()
        self._pool: GPUResourcePool | None = None
        self._portal: Any = None
        #: Why no test of this session can have GPUs (a skip reason), once known.
        self._unavailable: str | None = None
        #: Why every lease fails (a broken ledger), once known.
        self._broken: str | None = None
        self._ledger: Path | None = None
        self._last: tuple[int, ...] = ()

    # ------------------------------------------------------------ the pool

    def _open(self) -> GPUResourcePool | None:
        if self._pool is not None or self._unavailable or self._broken:
            return self._pool
        settings = self._settings
        fake = settings.fake_count
        ledger: object = DEFAULT if settings.ledger is None else settings.ledger
        resolved = resolve_ledger(ledger, real_gpus=True)
        if resolved is None:
            self._broken = (
                f"the machine-wide ledger is turned off (${LEDGER_ENV}="
                f"{os.environ.get(LEDGER_ENV, '')}), so a GPU lease would not keep other "
                "tests off its GPUs: give a ledger directory with --gpus-ledger DIR "
                f"(or the gpus_ledger ini option), or unset ${LEDGER_ENV}"
            )
            return None
        self._ledger = resolved
        from anyio.from_thread import start_blocking_portal

        portal = self._stack.enter_context(start_blocking_portal(name="gpupool-leases"))
        pool = GPUResourcePool(
            None if fake is None else FakeGPUProvider(count=fake),
            refresh_interval=0.25 if fake is not None else 1.0,
            ledger=resolved,
        )
        try:
            self._stack.enter_context(portal.wrap_async_context_manager(pool))
        except (ProviderError, ImportError) as error:
            self._unavailable = (
                f"needs GPUs, and this machine has none that gpupool can use ({error}); "
                "to run GPU tests on fake GPUs: --gpus-fake N --gpus-ledger DIR"
            )
            return None
        except LedgerError as error:
            self._broken = f"cannot use the machine-wide ledger: {error}"
            return None
        if not portal.call(pool.statistics).gpus:
            self._unavailable = (
                "needs GPUs, and none is visible to this process (NVML lists none, or "
                "CUDA_VISIBLE_DEVICES hides them all)"
            )
            return None
        self._pool, self._portal = pool, portal
        return pool

    def close(self) -> None:
        """Close the pool and its thread (at the end of the session)."""
        self._pool = None
        self._stack.close()

    # ------------------------------------------------------------ leases

    def take(self, nodeid: str, gpus: int, memory_mb: int) -> Lease:
        """Hold ``gpus`` GPUs for test ``nodeid``, waiting fairly; skip or fail it if
        that cannot be (pytest's own exceptions, raised in the test's setup)."""
        what = _request_text(gpus, memory_mb)
        pool = self._open()
        if self._unavailable is not None:
            _skip(f"{what}: {self._unavailable}")
        if pool is None:
            pytest.fail(f"{what}: {self._broken}", pytrace=False)
        label = f"pytest {nodeid}"
        try:
            allocation = self._sticky(pool, gpus, memory_mb, label) or self._wait(
                pool, gpus, memory_mb, label
            )
        except UnsatisfiableRequest as error:
            message = f"{what}, more than this machine has: {error}"
            if self._settings.too_many == "fail":
                pytest.fail(f"{message} (--gpus-too-many=fail)", pytrace=False)
            _skip(message)
        except PoolTimeout:
            pytest.fail(
                f"{what} not granted within {self._settings.timeout:g} s (--gpus-timeout): "
                f"{self._holders()}",
                pytrace=False,
            )
        except GPUPoolError as error:
            pytest.fail(f"{what}: the lease failed: {error}", pytrace=False)
        self._last = allocation.gpu_indices
        return _leased(allocation)

    def _sticky(
        self, pool: GPUResourcePool, gpus: int, memory_mb: int, label: str
    ) -> GPUAllocation | None:
        """The GPUs this process's last test held (or its worker number points at),
        if they are free now without overtaking anyone queued; else None."""
        preferred = self._last if len(self._last) == gpus else self._by_worker(pool, gpus)
        if not preferred:
            return None
        try:
            allocation: GPUAllocation = self._portal.call(
                functools.partial(
                    pool.acquire_nowait,
                    gpus,
                    min_memory_mb=memory_mb,
                    allowed_gpus=preferred,
                    experiment_id=label,
                )
            )
        except WouldBlock:
            return None
        return allocation

    def _by_worker(self, pool: GPUResourcePool, gpus: int) -> tuple[int, ...]:
        """The GPUs pytest-xdist worker ``gwN`` prefers, or () outside a worker."""
        worker = os.environ.get("PYTEST_XDIST_WORKER", "")
        if not (worker.startswith("gw") and worker[2:].isdigit()):
            return ()
        total = len(self._portal.call(pool.statistics).gpus)
        if gpus > total:
            return ()
        first = int(worker[2:]) * gpus
        return tuple(sorted({(first + k) % total for k in range(gpus)}))

    def _wait(self, pool: GPUResourcePool, gpus: int, memory_mb: int, label: str) -> GPUAllocation:
        future = self._portal.start_task_soon(
            functools.partial(
                pool.acquire,
                gpus,
                min_memory_mb=memory_mb,
                timeout=self._settings.timeout,
                experiment_id=label,
            )
        )
        try:
            allocation: GPUAllocation = future.result()
        except BaseException:
            # Interrupted here (Ctrl-C, pytest-timeout): the waiter is cancelled in the
            # pool, which hands back a grant that raced in (the pool's own rule).
            future.cancel()
            raise
        return allocation

    def give_back(self, lease: Lease) -> None:
        """Release ``lease``'s GPUs and put its test's environment back."""
        try:
            for name, value in lease.saved:
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            shutil.rmtree(lease.inner_ledger, ignore_errors=True)
        finally:
            if self._pool is not None:
                self._portal.call(self._pool.release, lease.allocation)

    def _holders(self) -> str:
        """Who holds the GPUs, for a timeout's message."""
        try:
            status = machine_status(
                self._ledger,
                provider=FakeGPUProvider(count=self._settings.fake_count)
                if self._settings.fake_count is not None
                else None,
            )
        except GPUPoolError as error:  # pragma: no cover - a ledger broken meanwhile
            return f"who holds them is unknown ({error})"
        if not status.holders:
            return "the GPUs were held by others, now gone"
        held = "; ".join(
            f"pid {h.pid} ({h.key or h.command}) holds {', '.join(h.gpu_uuids)}"
            for h in status.holders
        )
        return f"{held}; `gpupool status --ledger {self._ledger}` shows the machine"


def _skip(reason: str) -> NoReturn:
    """Skip the test being set up, reported at the test's own line (as a ``skipif``
    marker's skip is) rather than at this module's."""
    raise pytest.skip.Exception(reason, _use_item_location=True)


def _leased(allocation: GPUAllocation) -> Lease:
    """Set ``allocation``'s environment for its test; the :class:`Lease` to undo it with."""
    saved = tuple((name, os.environ.get(name)) for name in _LEASED_VARIABLES)
    # The code under test may open pools of its own (over NVML, they join the
    # default ledger): a private ledger per test lets them share the leased GPUs
    # among themselves, instead of queueing behind the lease that holds them.
    inner = tempfile.mkdtemp(prefix="gpupool-lease-ledger-")
    os.environ.update(allocation.env)
    os.environ[LEDGER_ENV] = inner
    return Lease(allocation, saved, inner)


def _request_text(gpus: int, memory_mb: int) -> str:
    text = f"{gpus} GPU{'' if gpus == 1 else 's'}"
    return f"{text} with {memory_mb} MB free each" if memory_mb else text
