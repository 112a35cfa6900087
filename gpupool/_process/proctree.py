"""Finding and ending every process a job started, read from ``/proc``.

A job is started in a session of its own, so its pid is also its process
group id and session id. That catches most helpers (data loaders, shells,
``cmd &``), but a grandchild may leave both with ``setsid`` and may outlive
its parent, after which the kernel reparents it to init and no parent chain
leads back to the job any more. Three nets catch those:

* membership: same process group, or same session, or a parent chain that
  ends at the job's leader;
* a per-job token in the environment, which every descendant inherits unless
  it deliberately clears its environment (``/proc/PID/environ`` shows the
  environment a process was started with);
* pids recorded while the job ran (``JobTracker``), with their start time so
  that a recycled pid is never mistaken for one of ours.

Every process is identified by ``(pid, start time)``; a signal goes to a pid
only after its start time was re-read and still matches. The leader itself
is the caller's child, which ``run_process`` signals through its process
object and reaps; this module never reaps anything.

``/proc`` is read by ``gpupool._system.procfs`` (the one parser). Linux
only: where ``/proc`` is missing, scans find nothing and only the process
group is signalled.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable

import attrs

from .._system.procfs import ProcInfo, list_pids, read_environ, read_stat

__all__ = [
    "TOKEN_VARIABLE",
    "JobTracker",
    "killpg_quietly",
    "scan_job",
    "signal_all",
]

#: The environment variable that carries a job's token to all its descendants.
TOKEN_VARIABLE = "GPUPOOL_JOB_TOKEN"


def _all_processes() -> list[ProcInfo]:
    """Every process but init and this one."""
    me = os.getpid()
    found = []
    for pid in list_pids():
        if pid in (1, me):
            continue
        info = read_stat(pid)
        if info is not None:
            found.append(info)
    return found


def _has_token(pid: int, token: bytes) -> bool:
    environ = read_environ(pid)
    return environ is not None and token in environ


def scan_job(
    leader: int,
    *,
    token: str | None = None,
    known: Iterable[tuple[int, int]] = (),
) -> list[ProcInfo]:
    """Every living process that belongs to the job whose leader is ``leader``.

    ``leader`` is also the job's process group and session id. ``token`` is the
    job's token (see :data:`TOKEN_VARIABLE`); ``known`` are ``(pid, start time)``
    identities recorded earlier. The leader itself is included while alive.
    Zombies are left out: they are dead and hold nothing.
    """
    processes = _all_processes()
    known_ids = set(known)
    members: dict[int, ProcInfo] = {}
    for info in processes:
        if (
            info.pid == leader
            or info.pgid == leader
            or info.session == leader
            or info.identity in known_ids
        ):
            members[info.pid] = info
    # Descendants of members by parent chain, to a fixed point.
    by_parent: dict[int, list[ProcInfo]] = {}
    for info in processes:
        by_parent.setdefault(info.ppid, []).append(info)
    stack = list(members)
    while stack:
        for child in by_parent.get(stack.pop(), ()):
            if child.pid not in members:
                members[child.pid] = child
                stack.append(child.pid)
    if token is not None:
        needle = f"{TOKEN_VARIABLE}={token}".encode()
        for info in processes:
            if info.pid not in members and _has_token(info.pid, needle):
                members[info.pid] = info
    return sorted((m for m in members.values() if m.alive), key=lambda m: m.pid)


def signal_all(processes: Iterable[ProcInfo], signum: int) -> int:
    """Send ``signum`` to each process that is still the same process; count them.

    The start time is re-read just before the signal, so a pid that was
    recycled since the scan is left alone.
    """
    sent = 0
    for info in processes:
        now = read_stat(info.pid)
        if now is None or now.start_time != info.start_time or not now.alive:
            continue
        try:
            os.kill(info.pid, signum)
        except (ProcessLookupError, PermissionError):
            continue
        sent += 1
    return sent


def killpg_quietly(pgid: int, signum: int) -> None:
    """``os.killpg`` that ignores a group that is already empty."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


@attrs.define(eq=False)
class JobTracker:
    """Remembers every process seen in a job while it runs.

    ``poll()`` is cheap (``/proc/*/stat`` only, no environments) and is
    called now and then while the job runs, so that a grandchild which later
    leaves the session and loses its parent is still known by identity.
    """

    leader: int
    token: str | None = None
    seen: set[tuple[int, int]] = attrs.Factory(set)

    def poll(self) -> None:
        for info in scan_job(self.leader, known=self.seen):
            if info.pid != self.leader:
                self.seen.add(info.identity)

    def members(self) -> list[ProcInfo]:
        """The job's living processes now, by every net (token included)."""
        return scan_job(self.leader, token=self.token, known=self.seen)
