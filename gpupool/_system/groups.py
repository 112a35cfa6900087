"""Ending the process groups a dead owner left behind (a runner's jobs, a ledger holder's).

A subprocess job runs in a process group of its own (``run_process`` starts
it in a new session), and whoever starts it records the group: the journal
for a runner's jobs, the machine-wide ledger for a holder's. When that owner
dies (``kill -9``, the OOM killer), its jobs may live on and keep GPU memory
busy. The next owner (a restarted runner, or the ledger cleaning up after a
dead holder) must end them before those GPUs are granted again, and must not
end anyone else's processes by mistake.

A recorded pgid is only trusted while it can still be the recorded job's:
the group leader's start time (``/proc/PID/stat`` field 22) and the boot id
are recorded with it, so pid reuse and reboots are told apart
(:func:`_still_ours`). This module is in ``_system`` because both the journal
and the ledger need it and the ledger sits below the journal in the layers.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable

import attrs

from . import procfs

__all__ = ["LeftoverProcessGroup", "kill_process_groups", "still_running"]


@attrs.frozen
class LeftoverProcessGroup:
    """A subprocess job's process group recorded by an owner that died."""

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


def still_running(group: LeftoverProcessGroup) -> bool:
    """Whether processes of the recorded job still run in ``group.pgid``."""
    return _still_ours(group) and (not procfs.has_proc() or bool(_group_members(group.pgid)))


def kill_process_groups(groups: Iterable[LeftoverProcessGroup], *, wait: float = 5.0) -> list[int]:
    """SIGKILL every leftover group that still has processes; return their pgids.

    The owner that started them is dead, so there is nobody to shut them down
    gracefully for; what matters is that they stop holding GPU memory before
    the GPUs are granted again. So this waits (up to ``wait`` seconds) until
    the killed processes have exited: a signal is delivered asynchronously.
    """
    killed = []
    for group in groups:
        if not still_running(group):
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
