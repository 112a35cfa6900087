"""What :func:`gpupool.machine_status` returns: the machine as the ledger and NVML see it.

Frozen attrs values, so that ``gpupool status --json`` and user code read the
same thing. Times are wall-clock seconds since the epoch (``time.time()``),
because they are shown to people and compared across processes.
"""

from __future__ import annotations

from typing import Literal, final

import attrs

__all__ = ["LedgerHolder", "LedgerWaiter", "MachineGPU", "MachineStatus", "OtherProcess"]

#: How a holder got its GPUs: an allocation of a pool (a script, ``gpupool run``,
#: a ParallelRunner), or a ``gpupool reserve`` reservation.
HolderKind = Literal["allocation", "reservation"]


@final
@attrs.frozen
class LedgerHolder:
    """GPUs held by one allocation of one process, machine-wide."""

    #: The allocation's id, unique on the machine while the ledger lives
    #: (what ``gpupool release ID`` takes for a reservation).
    id: int
    kind: HolderKind
    pid: int
    #: False when the holder runs in another PID namespace (a container
    #: sharing the ledger directory): ``pid`` is then its pid *there*.
    same_pid_namespace: bool
    uid: int
    user: str
    #: The holder's command line, as ``/proc/PID/cmdline`` has it.
    command: str
    gpu_uuids: tuple[str, ...]
    #: Memory reserved on each of its GPUs (an exclusive holder has them whole).
    memory_mb: int
    exclusive: bool
    #: When it was granted.
    since: float
    #: The job or experiment key (``experiment_id``), where there is one.
    key: str | None = None
    #: When a reservation made with ``--for`` ends; ``None`` otherwise.
    until: float | None = None
    #: Process ids registered as working for it (``run_process`` jobs).
    job_pids: tuple[int, ...] = ()
    #: True once the holder has died while jobs it started still run: the
    #: GPUs stay held until those jobs are gone (docs/machine.md, "Liveness").
    orphaned: bool = False


@final
@attrs.frozen
class LedgerWaiter:
    """A request waiting in the machine-wide queue."""

    ticket: int
    pid: int
    same_pid_namespace: bool
    uid: int
    user: str
    command: str
    required_gpus: int
    min_memory_mb: int
    exclusive: bool
    priority: int
    #: The GPUs it may take (its process's CUDA_VISIBLE_DEVICES and allowed_gpus).
    gpu_uuids: tuple[str, ...]
    #: When it started waiting.
    since: float
    key: str | None = None


@final
@attrs.frozen
class OtherProcess:
    """A process NVML lists on a GPU that no ledger holder accounts for."""

    pid: int
    #: Memory it uses on that GPU, or ``None`` where the driver cannot say.
    memory_mb: int | None
    #: Its name (``/proc/PID/comm``), or ``None`` if it cannot be read.
    name: str | None
    #: False when no such process exists any more (memory the driver still
    #: counts for a process that is gone).
    alive: bool


@final
@attrs.frozen
class MachineGPU:
    """One GPU: NVML's numbers plus every ledger holder on it."""

    index: int
    uuid: str
    name: str
    memory_total_mb: int
    #: Everything NVML reports as used, by anyone.
    memory_used_mb: int
    #: Memory the ledger's shared holders reserved on it (an exclusive holder:
    #: the whole GPU, see ``holders``).
    memory_reserved_mb: int
    utilization_pct: float | None
    healthy: bool
    health_detail: str | None
    holders: tuple[LedgerHolder, ...]
    #: Processes on it that are not managed by gpupool, and processes that are gone.
    other_processes: tuple[OtherProcess, ...]


@final
@attrs.frozen
class MachineStatus:
    """The machine-wide view that ``gpupool status`` prints."""

    #: The ledger directory.
    ledger: str
    #: When this view was taken.
    taken_at: float
    gpus: tuple[MachineGPU, ...]
    #: Every holder, oldest first (also listed under each of its GPUs).
    holders: tuple[LedgerHolder, ...]
    #: The machine-wide queue, in order of service.
    waiters: tuple[LedgerWaiter, ...]
    #: Remarks on how the view was made, for people (for example that NVML could
    #: not be used, so the GPUs are as a pool last recorded them in the ledger).
    notes: tuple[str, ...] = ()
