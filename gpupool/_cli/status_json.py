"""``gpupool status --json``: a :class:`MachineStatus` as one JSON object.

The schema is documented in docs/machine.md ("gpupool status --json"), and
``tests/test_cli_status.py`` checks this module against that section field by
field. A change of meaning of an existing field bumps :data:`SCHEMA`; adding
a field does not. Each GPU object keeps every field of the old ``--json``
(before the ledger: one array of GPU objects) that the view still carries, so
a reader of ``.gpus[]`` finds ``index``, ``uuid``, ``memory_used_mb`` where it
found them.
"""

from __future__ import annotations

import datetime
from typing import Any

from .._ledger.view import LedgerHolder, LedgerWaiter, MachineGPU, MachineStatus, OtherProcess

__all__ = ["SCHEMA", "status_to_json"]

#: The ``"schema"`` field: the version of this format.
SCHEMA = 1


def status_to_json(status: MachineStatus) -> dict[str, Any]:
    """The machine as plain JSON values: times in epoch seconds (and ISO 8601), sizes in MiB."""
    indices = {gpu.uuid: gpu.index for gpu in status.gpus}
    return {
        "schema": SCHEMA,
        "ledger": status.ledger,
        **_time("taken_at", status.taken_at),
        "gpus": [_gpu(gpu, indices) for gpu in status.gpus],
        "holders": [_holder(holder, indices) for holder in status.holders],
        "waiters": [_waiter(waiter, indices) for waiter in status.waiters],
    }


def _time(name: str, moment: float | None) -> dict[str, Any]:
    """``{name: epoch seconds, name_iso: "2024-05-01T13:51:07.250+00:00"}`` (UTC)."""
    if moment is None:
        return {name: None, f"{name}_iso": None}
    when = datetime.datetime.fromtimestamp(moment, tz=datetime.timezone.utc)
    return {name: moment, f"{name}_iso": when.isoformat(timespec="milliseconds")}


def _gpu(gpu: MachineGPU, indices: dict[str, int]) -> dict[str, Any]:
    return {
        "index": gpu.index,
        "uuid": gpu.uuid,
        "name": gpu.name,
        "memory_total_mb": gpu.memory_total_mb,
        "memory_used_mb": gpu.memory_used_mb,
        "memory_free_mb": max(0, gpu.memory_total_mb - gpu.memory_used_mb),
        "memory_reserved_mb": gpu.memory_reserved_mb,
        "utilization_pct": gpu.utilization_pct,
        "healthy": gpu.healthy,
        "health_detail": gpu.health_detail,
        # The same objects as the top level's "holders", repeated here so that
        # `.gpus[] | select(.index == 3) | .holders[].user` needs no join.
        "holders": [_holder(holder, indices) for holder in gpu.holders],
        "other_processes": [_other(process) for process in gpu.other_processes],
    }


def _holder(holder: LedgerHolder, indices: dict[str, int]) -> dict[str, Any]:
    return {
        "id": holder.id,
        "kind": holder.kind,
        "pid": holder.pid,
        "same_pid_namespace": holder.same_pid_namespace,
        "uid": holder.uid,
        "user": holder.user,
        "command": holder.command,
        "key": holder.key,
        "gpu_uuids": list(holder.gpu_uuids),
        "gpu_indices": [indices.get(uuid) for uuid in holder.gpu_uuids],
        "memory_mb": holder.memory_mb,
        "exclusive": holder.exclusive,
        **_time("since", holder.since),
        **_time("until", holder.until),
        "job_pids": list(holder.job_pids),
        "orphaned": holder.orphaned,
    }


def _waiter(waiter: LedgerWaiter, indices: dict[str, int]) -> dict[str, Any]:
    return {
        "ticket": waiter.ticket,
        "pid": waiter.pid,
        "same_pid_namespace": waiter.same_pid_namespace,
        "uid": waiter.uid,
        "user": waiter.user,
        "command": waiter.command,
        "key": waiter.key,
        "required_gpus": waiter.required_gpus,
        "min_memory_mb": waiter.min_memory_mb,
        "exclusive": waiter.exclusive,
        "priority": waiter.priority,
        "gpu_uuids": list(waiter.gpu_uuids),
        "gpu_indices": [indices.get(uuid) for uuid in waiter.gpu_uuids],
        **_time("since", waiter.since),
    }


def _other(process: OtherProcess) -> dict[str, Any]:
    return {
        "pid": process.pid,
        "memory_mb": process.memory_mb,
        "name": process.name,
        "alive": process.alive,
    }
