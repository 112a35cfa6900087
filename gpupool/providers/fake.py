"""A scriptable stand-in for NVML, for tests, demos and machines without GPUs."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import final

import attrs

from .._errors import ProviderError
from .._model import GPUProcess, GPUStats

__all__ = ["FakeGPUProvider"]

DEFAULT_MEMORY_MB = 24_576


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
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"count must be an int >= 0, got {count!r}")
        if isinstance(memory_mb, int) and not isinstance(memory_mb, bool):
            totals = [memory_mb] * count
        else:
            totals = list(memory_mb)  # type: ignore[arg-type]
            if len(totals) != count:
                raise ValueError(
                    f"memory_mb must be an int or a sequence of {count} ints, got {memory_mb!r}"
                )
        for total in totals:
            if isinstance(total, bool) or not isinstance(total, int) or total <= 0:
                raise ValueError(f"memory_mb must be > 0 for every GPU, got {total!r}")
        self._lock = threading.Lock()
        self._gpus = [
            _FakeGPU(i, fake_uuid(i), f"{name} {i}", total, utilization_pct=utilization_pct)
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
        if (
            isinstance(index, bool)
            or not isinstance(index, int)
            or not 0 <= index < len(self._gpus)
        ):
            raise ValueError(f"index must be a GPU index in [0, {len(self._gpus)}), got {index!r}")
        return self._gpus[index]

    def set_memory_used(self, index: int, memory_mb: int) -> None:
        """Memory on GPU ``index`` used by something outside the pool (no process listed)."""
        if isinstance(memory_mb, bool) or not isinstance(memory_mb, int) or memory_mb < 0:
            raise ValueError(f"memory_mb must be an int >= 0, got {memory_mb!r}")
        with self._lock:
            self._gpu(index).foreign_used_mb = memory_mb

    def set_utilization(self, index: int, utilization_pct: float | None) -> None:
        """Utilization of GPU ``index``, or ``None`` for a device that cannot report it."""
        if utilization_pct is not None and not 0 <= utilization_pct <= 100:
            raise ValueError(
                f"utilization_pct must be in [0, 100] or None, got {utilization_pct!r}"
            )
        with self._lock:
            self._gpu(index).utilization_pct = utilization_pct

    def add_process(self, index: int, pid: int, used_memory_mb: int | None) -> None:
        """A compute process ``pid`` holding ``used_memory_mb`` on GPU ``index``."""
        with self._lock:
            self._gpu(index).processes[pid] = used_memory_mb

    def remove_process(self, index: int, pid: int) -> None:
        with self._lock:
            self._gpu(index).processes.pop(pid, None)

    def set_healthy(self, index: int, healthy: bool, detail: str | None = None) -> None:
        """Mark GPU ``index`` lost (``False``) or recovered (``True``)."""
        with self._lock:
            gpu = self._gpu(index)
            gpu.healthy = healthy
            gpu.health_detail = None if healthy else (detail or "GPU is lost")

    def fail_next(self, error: BaseException | None = None, times: int = 1) -> None:
        """Make the next ``times`` snapshots raise ``error`` (a ``ProviderError`` by default)."""
        if times < 1:
            raise ValueError(f"times must be >= 1, got {times!r}")
        with self._lock:
            for _ in range(times):
                self._failures.append(error or ProviderError("injected provider failure"))

    def set_latency(self, seconds: float) -> None:
        """Make every snapshot take ``seconds`` (a slow driver), blocking its thread."""
        if not seconds >= 0:
            raise ValueError(f"seconds must be >= 0, got {seconds!r}")
        with self._lock:
            self._latency_s = seconds
