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
again.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterable

import attrs

from .._system import procfs

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


@attrs.frozen
class LeftoverProcessGroup:
    """A subprocess job's process group recorded by a runner that died."""

    key: str
    pgid: int
    #: Start time of the group leader (pid == pgid) when it was recorded.
    leader_start_time: int | None
    boot_id: str | None


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes in process group ``pgid``."""
    members = []
    for pid in procfs.list_pids():
        info = procfs.read_stat(pid)
        if info is not None and info.pgid == pgid and info.alive:
            members.append(pid)
    return members


def _still_ours(group: LeftoverProcessGroup) -> bool:
    """Whether processes in ``group.pgid`` can still be the recorded job's.

    If the leader is alive its start time must match. If it is gone, Linux
    never gives out a pid that is still some group's id, so surviving members
    belong to the recorded group unless the whole group died and the number
    was reused since, which needs a full wrap of the pid space: accepted.
    """
    if group.boot_id is not None and group.boot_id != procfs.boot_id():
        return False
    leader_start = procfs.start_time(group.pgid)
    if leader_start is not None and group.leader_start_time is not None:
        return leader_start == group.leader_start_time
    return True


def kill_process_groups(groups: Iterable[LeftoverProcessGroup], *, wait: float = 5.0) -> list[int]:
    """SIGKILL every leftover group that still has processes; return their pgids.

    The runner that started them is dead, so there is nobody to shut them down
    gracefully for; what matters is that they stop holding GPU memory before
    the GPUs are granted again. So this waits (up to ``wait`` seconds) until
    the killed processes have exited: a signal is delivered asynchronously.
    """
    killed = []
    for group in groups:
        if not _still_ours(group):
            continue
        if procfs.has_proc() and not _group_members(group.pgid):
            continue
        try:
            os.killpg(group.pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            continue
        killed.append(group.pgid)
    deadline = time.monotonic() + wait
    pending = killed if procfs.has_proc() else []
    while pending and time.monotonic() < deadline:
        time.sleep(0.005)
        pending = [pgid for pgid in pending if _group_members(pgid)]
    return killed
