"""The job watchdog (gpupool/_process/watchdog.py): a parent killed with ``kill -9`` leaves
no job behind; a job that ignores SIGTERM gets SIGKILL after its grace period; a
recycled group id is left alone."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

#: A parent that starts the watchdog, then one job per argument (a shell command, in a
#: session of its own), tracks each with a grace period of 1 s, forgets the ones
#: prefixed "done:" once they end, prints their pids and sleeps until killed.
PARENT = """
import subprocess, sys, time
from gpupool._process.watchdog import Watchdog
watchdog = Watchdog()
watchdog.start()
pids = []
for command in sys.argv[1:]:
    done = command.startswith("done:")
    job = subprocess.Popen(["sh", "-c", command.removeprefix("done:")], start_new_session=True)
    watchdog.track(job.pid, 1.0)
    if done:
        job.wait()
        watchdog.untrack(job.pid)
    pids.append(job.pid)
print(watchdog.pid, *pids, flush=True)
time.sleep(600)
"""


def gone(pid: int, within: float = 30) -> bool:
    """Whether ``pid`` exits (or is left a zombie) within ``within`` s (polled)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.02)
    return False


def stop(parent: subprocess.Popen[str]) -> None:
    parent.kill()
    parent.communicate()


def start_parent(*commands: str) -> tuple[subprocess.Popen[str], list[int]]:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, *commands], stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    return parent, [int(word) for word in parent.stdout.readline().split()]


def test_the_jobs_of_a_parent_killed_with_kill_9_are_ended(tmp_path: Path) -> None:
    child = tmp_path / "child"
    parent, (watchdog, job) = start_parent(f"sleep 300 & echo $! > {child}; wait")
    try:
        while not child.exists() or not child.read_text().strip():
            time.sleep(0.02)
        grandchild = int(child.read_text())
        assert not gone(job, within=0.5)  # running while the parent lives
        parent.kill()
        parent.wait()
        assert gone(job)
        assert gone(grandchild)  # the whole process group, not only its leader
        assert gone(watchdog)  # and the watchdog ends once it has done its work
    finally:
        stop(parent)


def test_a_job_that_ignores_sigterm_is_killed_after_its_grace_period(tmp_path: Path) -> None:
    trapped = tmp_path / "trapped"
    parent, (_, job) = start_parent(
        f"trap 'echo TERM >> {trapped}' TERM; while :; do sleep 0.1; done"
    )
    try:
        time.sleep(0.3)  # the shell has set its trap
        parent.kill()
        parent.wait()
        assert gone(job)
        assert trapped.read_text() == "TERM\n"  # SIGTERM first, once; then SIGKILL
    finally:
        stop(parent)


def test_the_watchdog_exits_when_its_parent_dies_with_only_ended_jobs(tmp_path: Path) -> None:
    parent, (watchdog, _) = start_parent("done:true")
    stop(parent)
    assert gone(watchdog, within=10)


def test_signals_only_go_to_groups_that_are_still_the_jobs() -> None:
    # A pgid whose leader is alive but started at another time (a recycled pid) is left
    # alone: here this test process's own group, registered with a wrong start time.
    from gpupool._system import procfs

    me = os.getpgrp()
    start = procfs.start_time(me)
    assert start is not None
    watchdog = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from gpupool._process.watchdog import _serve; _serve(sys.stdin.buffer)",
        ],
        stdin=subprocess.PIPE,
        start_new_session=True,
    )
    assert watchdog.stdin is not None
    watchdog.stdin.write(f"+ {me} {start + 1} 0.1\n".encode())
    watchdog.stdin.close()
    assert watchdog.wait(timeout=30) == 0
    os.kill(os.getpid(), 0)  # still here: SIGTERM to this group would have ended pytest
