"""A scriptable stand-in for NVML, for tests, demos and machines without GPUs."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import final

import attrs

from .._core.checks import (
    check_bool,
    check_finite_seconds,
    check_int,
    check_number,
    check_str,
    is_int,
    shown,
)
from .._core.errors import ProviderError
from .._core.model import GPUProcess, GPUStats

__all__ = ["MAX_FAKE_GPUS", "FakeGPUProvider"]

DEFAULT_MEMORY_MB = 24_576

#: The most GPUs a :class:`FakeGPUProvider` (and ``--fake-gpus``) will pretend to have.
#: Far beyond any real machine (NVML numbers a node's GPUs in the tens), and small
#: enough that every snapshot stays cheap: ten million fake GPUs took minutes to build.
MAX_FAKE_GPUS = 1024


def _check_utilization(value: object) -> float | None:
    if value is None:
        return None
    return check_number("utilization_pct", value, minimum=0, maximum=100)


@attrs.define
class _FakeGPU:
    index: int
    uuid: str
    name: str
    memory_total_mb: int
    foreign_used_mb: int = 0
    utilization_pct: float | None = 0.0
    healthy: bool = True
    health_detail: str | None = None
    processes: dict[int, int | None] = attrs.Factory(dict)

    def stats(self) -> GPUStats:
        process_mb = sum(mb for mb in self.processes.values() if mb is not None)
        return GPUStats(
            index=self.index,
            uuid=self.uuid,
            name=self.name,
            memory_total_mb=self.memory_total_mb,
            memory_used_mb=min(self.memory_total_mb, self.foreign_used_mb + process_mb),
            utilization_pct=self.utilization_pct,
            healthy=self.healthy,
            pci_bus_id=f"00000000:{0x10 + self.index:02X}:00.0",
            processes=tuple(GPUProcess(pid, mb) for pid, mb in sorted(self.processes.items())),
            health_detail=self.health_detail,
        )


def fake_uuid(index: int) -> str:
    """The UUID :class:`FakeGPUProvider` gives GPU ``index``: stable across runs."""
    return f"GPU-fa4e0000-0000-4000-8000-{index:012d}"


@final
class FakeGPUProvider:
    """``count`` pretend GPUs whose usage, processes and faults a test sets.

    ``count`` is at most :data:`MAX_FAKE_GPUS` (1024). Every argument is
    checked at the call (``TypeError`` for a wrong type, ``ValueError`` for
    a wrong value), so a bad one never surfaces later as a failed snapshot.
    Every setter is thread-safe and takes effect at the next :meth:`snapshot`;
    the pool only notices at its next refresh, exactly as with real GPUs.
    ``snapshot_count`` tells a test how often the provider was asked.

    >>> fake = FakeGPUProvider(count=2, memory_mb=16_000)
    >>> fake.set_memory_used(1, 12_000)      # a colleague's job on GPU 1
    >>> [g.memory_free_mb for g in fake.snapshot()]
    [16000, 4000]
    """

    def __init__(
        self,
        count: int = 4,
        memory_mb: int | Sequence[int] = DEFAULT_MEMORY_MB,
        *,
        name: str = "Fake GPU",
        utilization_pct: float = 0.0,
    ) -> None:
        check_int("count", count, 0, MAX_FAKE_GPUS)
        if is_int(memory_mb):
            totals = [memory_mb] * count
        elif isinstance(memory_mb, Sequence) and not isinstance(memory_mb, (str, bytes)):
            totals = list(memory_mb)
            if len(totals) != count:
                raise ValueError(
                    f"memory_mb must be an int or a sequence of {count} ints, "
                    f"got {shown(memory_mb)}"
                )
        else:
            raise TypeError(
                f"memory_mb must be an int or a sequence of {count} ints, got {shown(memory_mb)}"
            )
        for total in totals:
            check_int("memory_mb (for every GPU)", total, 1)
        check_str("name", name)
        utilization = _check_utilization(utilization_pct)
        self._lock = threading.Lock()
        self._gpus = [
            _FakeGPU(i, fake_uuid(i), f"{name} {i}", total, utilization_pct=utilization)
            for i, total in enumerate(totals)
        ]
        self._snapshot_count = 0
        self._failures: list[BaseException] = []
        self._latency_s = 0.0

    @property
    def snapshot_count(self) -> int:
        """How many times :meth:`snapshot` has been called, failed calls included."""
        with self._lock:
            return self._snapshot_count

    @property
    def count(self) -> int:
        return len(self._gpus)

    @property
    def snapshot_blocks(self) -> bool:
        """Whether :meth:`snapshot` may block: only with a simulated latency.

        The pool asks a provider that does not block on the event loop itself,
        which keeps tests on trio's ``MockClock`` deterministic.
        """
        with self._lock:
            return self._latency_s > 0

    def snapshot(self) -> list[GPUStats]:
        with self._lock:
            self._snapshot_count += 1
            latency = self._latency_s
            failure = self._failures.pop(0) if self._failures else None
            stats = [gpu.stats() for gpu in self._gpus]
        if latency:
            time.sleep(latency)
        if failure is not None:
            raise failure
        return stats

    def _gpu(self, index: int) -> _FakeGPU:
        check_int("index", index, 0, len(self._gpus) - 1)
        return self._gpus[index]

    def set_memory_used(self, index: int, memory_mb: int) -> None:
        """Memory on GPU ``index`` used by something outside the pool (no process listed)."""
        check_int("memory_mb", memory_mb, 0)
        with self._lock:
            self._gpu(index).foreign_used_mb = memory_mb

    def set_utilization(self, index: int, utilization_pct: float | None) -> None:
        """Utilization of GPU ``index``, or ``None`` for a device that cannot report it."""
        utilization = _check_utilization(utilization_pct)
        with self._lock:
            self._gpu(index).utilization_pct = utilization

    def add_process(self, index: int, pid: int, used_memory_mb: int | None) -> None:
        """A compute process ``pid`` holding ``used_memory_mb`` on GPU ``index``
        (``None``: the driver does not say how much, as in some containers)."""
        check_int("pid", pid, 1)
        if used_memory_mb is not None:
            check_int("used_memory_mb", used_memory_mb, 0)
        with self._lock:
            self._gpu(index).processes[pid] = used_memory_mb

    def remove_process(self, index: int, pid: int) -> None:
        check_int("pid", pid, 1)
        with self._lock:
            self._gpu(index).processes.pop(pid, None)

    def set_healthy(self, index: int, healthy: bool, detail: str | None = None) -> None:
        """Mark GPU ``index`` lost (``False``) or recovered (``True``)."""
        check_bool("healthy", healthy)
        if detail is not None:
            check_str("detail", detail, allowed="a str or None")
        with self._lock:
            gpu = self._gpu(index)
            gpu.healthy = healthy
            gpu.health_detail = None if healthy else (detail or "GPU is lost")

    def fail_next(self, error: BaseException | None = None, times: int = 1) -> None:
        """Make the next ``times`` snapshots raise ``error`` (a ``ProviderError`` by default)."""
        given: object = error  # checked as what a caller may really pass
        if not (
            given is None
            or isinstance(given, BaseException)
            or (isinstance(given, type) and issubclass(given, BaseException))
        ):
            raise TypeError(f"error must be an exception or None, got {shown(error)}")
        check_int("times", times, 1)
        with self._lock:
            for _ in range(times):
                self._failures.append(error or ProviderError("injected provider failure"))

    def set_latency(self, seconds: float) -> None:
        """Make every snapshot take ``seconds`` (a slow driver), blocking its thread."""
        latency = check_finite_seconds("seconds", seconds)
        with self._lock:
            self._latency_s = latency
