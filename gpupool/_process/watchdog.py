"""A watchdog process that ends a dead parent's jobs: no job outlives the process that ran it.

``run_process`` ends its job on every path its caller lives through (a
timeout, a cancellation, an exception). A caller killed outright (``kill -9``,
the OOM killer, Ray ending a worker actor) runs no code at all, and its job
lives on, holding GPU memory nobody accounts for. On one box the journal's
next run or the ledger's reap kill such leftovers; a Ray worker has neither,
so it starts this watchdog once, lazily, and tells it each job's process
group as the job starts and again when it has ended.

The watchdog reads one line per event from its stdin, a pipe whose only
write end is the parent's (non-inheritable, so no job holds it open). When the
pipe closes, the parent is gone, however it died: the kernel closes its
descriptors. The watchdog then sends SIGTERM to every group still
registered, waits up to each one's grace period, sends SIGKILL to what is
left, and exits. A group is signalled only while it can still be the job's
(its leader's start time, as recorded, or the leader gone and members left:
:func:`gpupool._system.groups.still_running`), so a recycled pid is left
alone.

The watchdog detaches from its parent (a second fork, its own session): Ray
SIGKILLs a worker's direct children when the worker exits
(``RAY_kill_child_processes_on_worker_exit``), which would take the watchdog
with it. A job's leader is such a child, so it may be killed by Ray first;
the rest of its group is then the watchdog's to end.

Protocol (text lines): ``+ PGID START_TIME GRACE`` registers a group
(``START_TIME`` is ``/proc/PID/stat`` field 22 or ``-``), ``- PGID`` forgets it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import IO, final

from .._system import procfs
from .._system.groups import LeftoverProcessGroup, kill_process_groups, still_running

__all__ = ["Watchdog", "main"]

#: How often the watchdog looks whether the signalled groups have gone.
_POLL_S = 0.05


@final
class Watchdog:
    """The parent's side: starts the watchdog process on first use, and tells it of jobs.

    Thread-safe; one per process is enough (:func:`gpupool.integrations.ray.jobs`
    keeps one per worker process).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pipe: IO[bytes] | None = None
        self._pid: int | None = None

    @property
    def pid(self) -> int | None:
        """The watchdog process's pid once started (it is not this process's child)."""
        return self._pid

    def start(self) -> None:
        """Start the watchdog process if it is not running yet (blocks until it runs).

        Call it before starting a job: :meth:`track` from ``on_start`` then only
        writes a line, so the window in which a job runs unregistered is the
        few microseconds between its start and that write.
        """
        with self._lock:
            if self._pipe is None:
                self._start()

    def track(self, pgid: int, grace_period: float) -> None:
        """Register the process group ``pgid`` (a job's, just started) with its grace period."""
        start = procfs.start_time(pgid)
        self._send(f"+ {pgid} {'-' if start is None else start} {grace_period!r}\n")

    def untrack(self, pgid: int) -> None:
        """Forget ``pgid``: its job has ended (``run_process`` returned)."""
        self._send(f"- {pgid}\n")

    def _send(self, line: str) -> None:
        with self._lock:
            if self._pipe is None:
                self._start()
            assert self._pipe is not None
            self._pipe.write(line.encode())
            self._pipe.flush()

    def _start(self) -> None:
        read, write = os.pipe()  # both non-inheritable (PEP 446); the child's is made so below
        pid_read, pid_write = os.pipe()
        try:
            starter = subprocess.Popen(
                [sys.executable, "-m", "gpupool._process.watchdog", str(pid_write)],
                stdin=read,
                pass_fds=(pid_write,),
                stdout=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            os.close(read)
            os.close(pid_write)
        # The starter forks the watchdog, writes its pid and exits at once.
        with os.fdopen(pid_read, "rb") as pids:
            text = pids.read().decode().strip()
        starter.wait()
        if not text.isdigit():
            os.close(write)
            raise RuntimeError(f"the job watchdog did not start (exit code {starter.returncode})")
        self._pid = int(text)
        self._pipe = os.fdopen(write, "wb")


def _end(groups: dict[int, tuple[LeftoverProcessGroup, float]]) -> None:
    """SIGTERM every group that is still the job's, the grace period, then SIGKILL."""
    live = {pgid: entry for pgid, entry in groups.items() if still_running(entry[0])}
    started = time.monotonic()
    for pgid in live:
        try:
            os.killpg(pgid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            continue
    while live:
        live = {p: e for p, e in live.items() if still_running(e[0])}
        overdue = [e[0] for e in live.values() if time.monotonic() - started >= e[1]]
        if overdue:
            kill_process_groups(overdue, wait=2.0)
            for group in overdue:
                live.pop(group.pgid, None)
        time.sleep(_POLL_S)


def _serve(lines: IO[bytes]) -> None:
    groups: dict[int, tuple[LeftoverProcessGroup, float]] = {}
    boot = procfs.boot_id()
    for raw in lines:
        words = raw.decode(errors="replace").split()
        if len(words) == 4 and words[0] == "+" and words[1].isdigit():
            start = None if words[2] == "-" else int(words[2])
            group = LeftoverProcessGroup("job", int(words[1]), start, boot)
            groups[group.pgid] = (group, max(0.0, float(words[3])))
        elif len(words) == 2 and words[0] == "-" and words[1].isdigit():
            groups.pop(int(words[1]), None)
    _end(groups)  # the parent has gone


def main(argv: list[str]) -> None:
    """``python -m gpupool._process.watchdog PID_FD``: fork the watchdog, write its pid to
    ``PID_FD`` and exit; the watchdog serves stdin until it closes."""
    pid_fd = int(argv[0])
    child = os.fork()
    if child:
        os.write(pid_fd, str(child).encode())
        os._exit(0)
    os.close(pid_fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is not for it
    _serve(sys.stdin.buffer)


if __name__ == "__main__":
    main(sys.argv[1:])
