"""Immutable value types shared by every layer: what a GPU looks like, what a
request asks for and what an allocation grants.

These are plain ``attrs`` frozen classes: hashable, comparable, cheap to copy
between threads, and free of any behaviour that does I/O.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import final

import attrs

from .checks import int_validator, number_validator

__all__ = [
    "GPUAllocation",
    "GPUProcess",
    "GPUStatistics",
    "GPUStats",
    "OnProcessStarted",
    "PoolStatistics",
    "StartedProcess",
    "memory_fraction",
]


@final
@attrs.frozen
class GPUProcess:
    """A compute process that a provider saw on a GPU."""

    pid: int
    #: Memory the process holds on this GPU, or ``None`` where the driver cannot say.
    used_memory_mb: int | None = None


_non_negative_int = int_validator(minimum=0)
_optional_percent = number_validator(minimum=0, maximum=100, optional=True)


@final
@attrs.frozen
class GPUStats:
    """One GPU as a provider sees it at one moment.

    ``memory_used_mb`` is everything the driver reports as used, by processes of
    this pool and outside it alike; the pool works out which part is foreign.
    ``utilization_pct`` is ``None`` where the device cannot report it (MIG).
    """

    index: int = attrs.field(validator=_non_negative_int)
    uuid: str
    name: str
    memory_total_mb: int = attrs.field(validator=_non_negative_int)
    memory_used_mb: int = attrs.field(validator=_non_negative_int)
    utilization_pct: float | None = attrs.field(validator=_optional_percent)
    healthy: bool = True
    pci_bus_id: str | None = None
    processes: tuple[GPUProcess, ...] = ()
    #: Why the GPU is unhealthy, where ``healthy`` is false.
    health_detail: str | None = None

    @property
    def memory_free_mb(self) -> int:
        """Total minus used, never below zero."""
        return max(0, self.memory_total_mb - self.memory_used_mb)


@final
@attrs.frozen
class GPUAllocation:
    """GPUs granted to one holder until it releases them.

    ``memory_mb`` is the memory reserved on *each* of the GPUs. An exclusive
    allocation holds its GPUs whole whatever ``memory_mb`` says; a shared one
    holds only ``memory_mb`` on each.
    """

    id: int
    gpu_indices: tuple[int, ...]
    gpu_uuids: tuple[str, ...]
    memory_mb: int
    exclusive: bool = True
    experiment_id: str | None = None
    #: Identifies the pool that granted it; a release in another pool is refused.
    pool_id: int = attrs.field(default=0, repr=False)
    #: The granting pool's hook, so that ``run_process(cmd, allocation=alloc)``
    #: tells that pool which processes work for the allocation without being
    #: handed the pool (see ``gpupool._process.started``). Not part of the value:
    #: ignored by ``==`` and ``hash``, and dropped by pickling.
    on_process_started: OnProcessStarted | None = attrs.field(default=None, eq=False, repr=False)
    #: The total memory of each GPU, in the order of ``gpu_indices`` (empty where
    #: the grant did not say: an allocation made by hand, say). What a shared
    #: allocation's memory caps are computed from (:attr:`memory_env`).
    gpu_memory_total_mb: tuple[int, ...] = ()

    @property
    def env(self) -> dict[str, str]:
        """Environment variables for a child process: :attr:`memory_env`, then
        :attr:`device_env` (``run_process`` puts the caller's ``env=`` between the two)."""
        return {**self.memory_env, **self.device_env}

    @property
    def device_env(self) -> dict[str, str]:
        """Environment variables that confine a child process to these GPUs.

        UUIDs rather than indices, because CUDA's default order (fastest first)
        need not match NVML's (PCI bus order); UUIDs name the same device in
        both, and stay right under any mask the parent process inherited.
        """
        return {
            "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
            "CUDA_VISIBLE_DEVICES": ",".join(self.gpu_uuids),
        }

    @property
    def memory_env(self) -> dict[str, str]:
        """The framework settings that hold a shared allocation's process to its reservation.

        Empty for an exclusive allocation: its process owns the GPUs, and the
        frameworks' defaults are left alone. For a shared one (docs/memory.md):
        ``GPUPOOL_RESERVED_MB`` (the reservation on each GPU),
        ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` and, where the GPUs' sizes are
        known, ``XLA_PYTHON_CLIENT_MEM_FRACTION`` (:func:`memory_fraction`) for
        JAX, and ``TF_FORCE_GPU_ALLOW_GROWTH=true`` for TensorFlow.
        """
        if self.exclusive:
            return {}
        env = {
            "GPUPOOL_RESERVED_MB": str(self.memory_mb),
            "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
            "TF_FORCE_GPU_ALLOW_GROWTH": "true",
        }
        largest = max(self.gpu_memory_total_mb, default=0)
        if largest > 0:
            fraction = memory_fraction(self.memory_mb, largest)
            env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{fraction:.{FRACTION_PLACES}f}"
        return env


#: Decimal places of a memory fraction: 1e-4 of an 80 GiB GPU is 8 MiB.
FRACTION_PLACES = 4
_FRACTION_SCALE = 10_000  # 10 ** FRACTION_PLACES


def memory_fraction(reserved_mb: int, total_mb: int) -> float:
    """``reserved_mb / total_mb`` rounded *down* to :data:`FRACTION_PLACES` places,
    at least ``1e-4`` and at most 1: a cap that never grants more than was reserved
    (beyond the smallest step a framework could be given).

    JAX applies one fraction to each GPU's own total, so for an allocation of
    GPUs of different sizes ``total_mb`` is the *largest* of them: that is the
    fraction that stays within the reservation on every one.
    """
    if total_mb <= 0:
        raise ValueError(f"total_mb must be > 0, got {total_mb!r}")
    steps = reserved_mb * _FRACTION_SCALE // total_mb
    return min(_FRACTION_SCALE, max(1, steps)) / _FRACTION_SCALE


@final
@attrs.frozen
class StartedProcess:
    """A process that ``run_process`` started: what its ``on_process_started`` hooks learn.

    It lives in the core, below the pool, the journal and ``_process`` (which
    may not import each other), so that each of them can name it.
    """

    #: Also the process group and session id: the job has a session of its own.
    pid: int
    #: The allocation the process works for; ``None`` for a CPU-only job.
    allocation: GPUAllocation | None = None

    @property
    def pgid(self) -> int:
        """The job's process group id (equal to :attr:`pid`)."""
        return self.pid


#: A hook told of every process ``run_process`` starts, once the process
#: exists. It may return a function to call once the process has ended and been
#: reaped (the journal forgets the process group then), or ``None``. See
#: ``gpupool._process.started`` for who sets hooks and in which order they run.
OnProcessStarted = Callable[[StartedProcess], "Callable[[], object] | None"]


@final
@attrs.frozen
class GPUStatistics:
    """One GPU as the pool accounts for it."""

    index: int
    uuid: str
    healthy: bool
    memory_total_mb: int
    #: Reserved by this pool's allocations (counted as used from the grant on).
    memory_reserved_mb: int
    #: Used by processes outside the pool, as the provider last reported.
    memory_foreign_mb: int
    memory_free_mb: int
    utilization_pct: float | None
    #: Ids of the allocations that hold this GPU.
    holder_ids: tuple[int, ...]
    #: True while an exclusive allocation holds the GPU whole.
    exclusive: bool
    #: True while the GPU waits for a released job's memory to come back.
    settling: bool

    @property
    def holders(self) -> tuple[int, ...]:
        """Deprecated: :attr:`holder_ids` (``PoolStatistics.holders`` was a count)."""
        _renamed("GPUStatistics.holders", "GPUStatistics.holder_ids")
        return self.holder_ids


@final
@attrs.frozen
class PoolStatistics:
    """A consistent picture of the pool at one moment (see ``GPUResourcePool.statistics``)."""

    gpus: tuple[GPUStatistics, ...]
    #: Allocations held now.
    holder_count: int
    #: Requests queued now.
    waiters: int
    max_parallel: int | None
    #: Allocations granted since the pool opened.
    grants_total: int

    @property
    def free_gpus(self) -> tuple[int, ...]:
        """Indices of the healthy GPUs that no allocation holds."""
        return tuple(g.index for g in self.gpus if g.healthy and not g.holder_ids)

    @property
    def holders(self) -> int:
        """Deprecated: :attr:`holder_count` (``GPUStatistics.holders`` was a tuple of ids)."""
        _renamed("PoolStatistics.holders", "PoolStatistics.holder_count")
        return self.holder_count


def _renamed(old: str, new: str) -> None:
    # stacklevel 3: the user's line that read the old name, not the property.
    warnings.warn(
        f"{old} is deprecated, use {new}: the two statistics classes gave one name "
        "to a count and to a tuple of ids",
        DeprecationWarning,
        stacklevel=3,
    )
