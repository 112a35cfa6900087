"""``machine_status()``: the machine as the ledger and NVML see it, read without joining.

The view is read, never written: no lock is taken on a healthy ledger, no
member joins, nothing is reaped (the members that run do that). So what
it shows about the dead is worked out here, the way the next member's reap
will decide it: a holder whose member's lock is free is dead; its GPUs are
shown as still held (``orphaned``) only while a job it registered lives,
because those are the GPUs the reap keeps held; otherwise it is left out,
as it will be freed within the members' poll interval.

The GPUs come from NVML over the whole machine (``CUDA_VISIBLE_DEVICES``
of the calling process is ignored: this is the machine's view, not this
process's). Where NVML cannot be used (no driver in this container, no
nvidia-ml-py), the GPUs are the ones the ledger records, as the member
that last took a snapshot saw them, and :attr:`MachineStatus.notes` says so.

A process NVML lists on a GPU is the ledger's when it is a live member, a
registered job, or in a job's process group or session (``run_process``
and ``gpupool reserve`` start jobs as the leaders of both); every other one
is an :class:`OtherProcess`, flagged ``alive=False`` when no such process
exists any more (memory the driver still counts for it).
"""

from __future__ import annotations

import os
import pwd
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

from .._core.checks import shown
from .._core.errors import LedgerError, ProviderError
from .._core.model import GPUProcess, GPUStats
from .._system import procfs
from . import location
from .members import is_alive
from .replica import stats_of
from .rows import HoldRow, LedgerState, MemberRow, WaiterRow
from .store import DB_NAME, LedgerStore
from .view import (
    HolderKind,
    LedgerHolder,
    LedgerWaiter,
    MachineGPU,
    MachineStatus,
    OtherProcess,
)

if TYPE_CHECKING:
    from ..providers import GPUProvider

__all__ = ["machine_status"]

_KINDS: frozenset[str] = frozenset({"allocation", "reservation"})


def machine_status(
    ledger: str | os.PathLike[str] | None = None, *, provider: GPUProvider | None = None
) -> MachineStatus:
    """The machine-wide view of ``ledger``: every GPU, holder, waiter and foreign process.

    ``ledger`` is the ledger's directory, ``None`` for the machine's default
    (``$GPUPOOL_LEDGER``, else ``/dev/shm/gpupool``). ``provider`` gives the
    GPUs' numbers (default: NVML, over every GPU of the machine; if NVML
    cannot be used, the GPUs the ledger last recorded). A directory in which
    no pool has made a ledger yet is an idle machine: no holders, no
    waiters. Raises :class:`~gpupool.LedgerError` when the ledger is turned
    off (``GPUPOOL_LEDGER=off``) with no ``ledger`` given, or when a given
    directory does not exist; ``TypeError`` for arguments of the wrong type.
    Synchronous: it reads a small SQLite file and asks NVML once.
    """
    if ledger is not None and not isinstance(ledger, (str, os.PathLike)):
        raise TypeError(
            "ledger must be the ledger's directory (a str or os.PathLike[str]) or None for "
            f"the default, got {shown(ledger)}"
        )
    if provider is not None and not callable(getattr(provider, "snapshot", None)):
        raise TypeError(
            "provider must be a GPUProvider (an object with a snapshot() method) or None "
            f"for NVML, got {shown(provider)}"
        )
    directory = _directory(ledger)
    notes: list[str] = []
    state = _read(directory) if _has_ledger(directory, given=ledger is not None) else None
    gpus = _gpus(provider, state, notes)
    return _build(directory, state, gpus, notes)


# -- where, and what is there ------------------------------------------------------


def _directory(ledger: str | os.PathLike[str] | None) -> Path:
    if ledger is None:
        path = location.resolve_ledger(location.DEFAULT, real_gpus=True)
        if path is None:
            raise LedgerError(
                f"the machine-wide ledger is turned off here (${location.LEDGER_ENV}="
                f"{os.environ.get(location.LEDGER_ENV, '')}), so there is no machine-wide "
                "view to show: pass the ledger's directory (ledger=PATH, or --ledger PATH), "
                f"or unset ${location.LEDGER_ENV}"
            )
        return Path(os.path.abspath(path))
    path = location.resolve_ledger(ledger, real_gpus=True)
    assert path is not None  # resolve_ledger returns None only for None
    return Path(os.path.abspath(path))


def _has_ledger(directory: Path, *, given: bool) -> bool:
    """Whether ``directory`` holds a ledger to read.

    A directory given explicitly must exist (a typo must not look like an
    idle machine); the default one is made by the first pool that joins, so
    until then the machine simply has nobody in its ledger. Nothing is
    created either way: a directory without a ledger file is read as empty.
    """
    if not directory.is_dir():
        if given:
            raise LedgerError(
                f"there is no ledger at {directory}: the directory does not exist (a pool "
                "given ledger=PATH, or any gpupool command given --ledger PATH, creates it)"
            )
        return False
    return (directory / DB_NAME).exists()


def _read(directory: Path) -> LedgerState:
    store = LedgerStore(directory)
    try:
        return store.read()
    finally:
        store.close_connection()


# -- the GPUs ------------------------------------------------------------------------


def _gpus(
    provider: GPUProvider | None, state: LedgerState | None, notes: list[str]
) -> list[GPUStats]:
    if provider is not None:
        return sorted(provider.snapshot(), key=lambda g: g.index)
    from ..providers.nvml import NVMLProvider

    # The machine's view: every GPU, whatever this process's CUDA_VISIBLE_DEVICES says.
    environ = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    try:
        with NVMLProvider(environ=environ) as nvml:
            return sorted(nvml.snapshot(), key=lambda g: g.index)
    except ProviderError as error:
        recorded = [] if state is None else list(state.gpus.values())
        if recorded:
            newest = max(g.reported for g in recorded)
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(newest))
            notes.append(
                f"NVML cannot be used here ({error}); the GPUs are shown as a pool last "
                f"recorded them in the ledger (at {when})"
            )
        else:
            raise  # nothing to show: the provider's own message says what to do
        return [
            stats_of(row, row.index) for row in sorted(recorded, key=lambda g: (g.index, g.uuid))
        ]


# -- the view --------------------------------------------------------------------------


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _build(
    directory: Path, state: LedgerState | None, gpus: list[GPUStats], notes: list[str]
) -> MachineStatus:
    here = _pid_namespace()
    holders: list[LedgerHolder] = []
    waiters: list[LedgerWaiter] = []
    managed: set[int] = set()  # pids NVML may list that are the ledger's
    job_groups: set[int] = set()  # process groups and sessions of registered jobs
    if state is not None:
        alive = {m: is_alive(directory, m) for m in state.members}
        for member_id, member in state.members.items():
            if alive[member_id] and member.pid_namespace == here:
                managed.add(member.pid)
        for hold in state.holds.values():
            holder = _holder(hold, state.members.get(hold.member), alive, here)
            if holder is None:
                continue
            holders.append(holder)
            if holder.same_pid_namespace:
                managed.update(holder.job_pids)
                job_groups.update(holder.job_pids)
        queued = [w for w in state.waiters.values() if w.state == "waiting" and alive.get(w.member)]
        queued.sort(key=lambda w: (-w.priority, w.ticket))
        waiters = [_waiter(w, state.members[w.member], here) for w in queued]
    holders.sort(key=lambda h: (h.since, h.id))
    shown_gpus = list(gpus)
    # A GPU a holder holds is never hidden, even if the provider does not list it.
    listed = {g.uuid for g in gpus}
    if state is not None:
        held = {u for h in holders for u in h.gpu_uuids}
        for uuid in sorted(held - listed):
            row = state.gpus.get(uuid)
            if row is not None:
                shown_gpus.append(stats_of(row, row.index))
    machine_gpus = tuple(
        _machine_gpu(g, [h for h in holders if g.uuid in h.gpu_uuids], managed, job_groups)
        for g in shown_gpus
    )
    return MachineStatus(
        ledger=str(directory),
        taken_at=time.time(),
        gpus=machine_gpus,
        holders=tuple(holders),
        waiters=tuple(waiters),
        notes=tuple(notes),
    )


def _holder(
    hold: HoldRow, member: MemberRow | None, alive: dict[str, bool], here: str | None
) -> LedgerHolder | None:
    """The holder of ``hold``, or ``None`` if it is dead and will be freed."""
    orphaned = False
    live_jobs: list[int] = []
    if member is None or not alive.get(hold.member, False):
        # Dead (or reaped already, with ``hold.orphaned`` set): still held only while
        # a job it registered runs, and only jobs in this PID namespace can be seen.
        if member is not None and member.pid_namespace != here:
            return None
        live_jobs = [pid for pid, started in hold.jobs if _job_alive(pid, started)]
        if not live_jobs:
            return None
        orphaned = True
    if member is not None:
        pid, uid, user, command = member.pid, member.uid, member.user, member.command
        same = member.pid_namespace == here
    else:
        # Its member's row is gone with the member: the job tells who it was.
        pid = live_jobs[0]
        uid = _owner(pid)
        user, command, same = _user(uid), _cmdline(pid), True
    return LedgerHolder(
        id=hold.id,
        kind=cast(HolderKind, hold.kind if hold.kind in _KINDS else "allocation"),
        pid=pid,
        same_pid_namespace=same,
        uid=uid,
        user=user,
        command=command,
        gpu_uuids=hold.gpus,
        memory_mb=hold.memory_mb,
        exclusive=hold.exclusive,
        since=hold.since,
        key=hold.experiment_id,
        until=hold.until,
        job_pids=tuple(pid for pid, _ in hold.jobs),
        orphaned=orphaned or hold.orphaned,
    )


def _waiter(row: WaiterRow, member: MemberRow, here: str | None) -> LedgerWaiter:
    return LedgerWaiter(
        ticket=row.ticket,
        pid=member.pid,
        same_pid_namespace=member.pid_namespace == here,
        uid=member.uid,
        user=member.user,
        command=member.command,
        required_gpus=row.required_gpus,
        min_memory_mb=row.min_memory_mb,
        exclusive=row.exclusive,
        priority=row.priority,
        gpu_uuids=row.gpus,
        since=row.since,
        key=row.experiment_id,
    )


def _machine_gpu(
    gpu: GPUStats, holders: Sequence[LedgerHolder], managed: set[int], job_groups: set[int]
) -> MachineGPU:
    if any(h.exclusive for h in holders):
        reserved = gpu.memory_total_mb
    else:
        reserved = sum(h.memory_mb for h in holders)
    return MachineGPU(
        index=gpu.index,
        uuid=gpu.uuid,
        name=gpu.name,
        memory_total_mb=gpu.memory_total_mb,
        memory_used_mb=gpu.memory_used_mb,
        memory_reserved_mb=reserved,
        utilization_pct=gpu.utilization_pct,
        healthy=gpu.healthy,
        health_detail=gpu.health_detail,
        holders=tuple(holders),
        other_processes=tuple(_others(gpu.processes, managed, job_groups)),
    )


def _others(
    processes: Iterable[GPUProcess], managed: set[int], job_groups: set[int]
) -> list[OtherProcess]:
    found = []
    for process in processes:
        if process.pid in managed:
            continue
        info = procfs.read_stat(process.pid)
        if info is not None and (info.session in job_groups or info.pgid in job_groups):
            continue  # a helper of a registered job (a data loader, a kernel)
        alive = info is not None and info.alive
        found.append(
            OtherProcess(
                pid=process.pid,
                memory_mb=process.used_memory_mb,
                name=None if info is None else _comm(process.pid),
                alive=alive,
            )
        )
    return found


# -- facts about processes ---------------------------------------------------------------


def _job_alive(pid: int, started: int | None) -> bool:
    """Whether job ``pid`` (which started at ``started``) still runs: a recycled pid does not."""
    info = procfs.read_stat(pid)
    if info is None or not info.alive:
        return False
    return started is None or info.start_time == started


def _comm(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/comm", "rb") as file:
            return file.read().decode(errors="replace").rstrip("\n") or None
    except OSError:
        return None


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            return file.read().replace(b"\0", b" ").decode(errors="replace").strip() or "?"
    except OSError:
        return "?"


def _owner(pid: int) -> int:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return -1


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return "?" if uid < 0 else str(uid)
