"""Who owns a journal: process identities that survive pid reuse, and leftovers.

A pid alone does not identify a process for long: after the owner dies the
kernel hands its pid to someone else, and a journal that trusted the pid
would stay locked forever (or, worse, be taken from a live owner). So an
owner is recorded as (pid, start time, boot id): the start time is field 22
of ``/proc/<pid>/stat`` (clock ticks since boot, read by
``gpupool._system.procfs``) and the boot id tells two boots apart. Where ``/proc`` does not exist (macOS) only the pid is checked,
which errs on the side of "still alive".

Process groups of subprocess jobs are recorded the same way, so a restarted
runner can end the leftovers of a crashed one before it hands their GPUs out
again; the killer itself, :func:`kill_process_groups`, lives in
``gpupool._system.groups`` (the machine-wide ledger needs it too, and sits
below the journal), and is re-exported here for the journal's store.
"""

from __future__ import annotations

import os
import socket

import attrs

from .._system import procfs
from .._system.groups import LeftoverProcessGroup, kill_process_groups

__all__ = [
    "LeftoverProcessGroup",
    "ProcessIdentity",
    "current_identity",
    "is_alive",
    "kill_process_groups",
]


@attrs.frozen
class ProcessIdentity:
    """A process as recorded in a journal: pid plus what makes it unique."""

    pid: int
    start_time: int | None
    boot_id: str | None
    hostname: str

    def describe(self) -> str:
        return f"pid {self.pid} on {self.hostname}"


def current_identity() -> ProcessIdentity:
    pid = os.getpid()
    return ProcessIdentity(pid, procfs.start_time(pid), procfs.boot_id(), socket.gethostname())


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, belongs to someone else
        return True
    return True


def is_alive(owner: ProcessIdentity) -> bool | None:
    """Whether ``owner`` still runs: True, False, or None when it cannot be told.

    None means the owner ran on another host, whose processes this one cannot
    see; the caller must not take such a journal over on its own.
    """
    me = current_identity()
    if owner.hostname != me.hostname:
        return None
    if owner.boot_id is not None and me.boot_id is not None and owner.boot_id != me.boot_id:
        return False  # recorded before the last reboot
    if owner.start_time is not None and me.start_time is not None:
        return procfs.start_time(owner.pid) == owner.start_time
    return _pid_exists(owner.pid)
