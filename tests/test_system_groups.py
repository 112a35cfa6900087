"""gpupool._system.groups: ending a dead owner's leftover process groups, with real processes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpupool._journal import owner
from gpupool._system import groups, procfs
from gpupool._system.groups import LeftoverProcessGroup, kill_process_groups

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")


def _live_members(pgid: int) -> list[int]:
    found = []
    for pid in procfs.list_pids():
        info = procfs.read_stat(pid)
        if info is not None and info.pgid == pgid and info.alive:
            found.append(pid)
    return found


def _kill_all(pgid: int) -> None:
    for pid in _live_members(pgid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _start(script: str) -> subprocess.Popen[bytes]:
    """A shell job in a process group of its own (as run_process starts one), once it says ready."""
    child = subprocess.Popen(["sh", "-c", script], start_new_session=True, stdout=subprocess.PIPE)
    assert child.stdout is not None
    assert child.stdout.readline() == b"ready\n"
    return child


@pytest.fixture
def job() -> Iterator[subprocess.Popen[bytes]]:
    """A shell and two sleeps in one process group."""
    with _start("sleep 30 & sleep 30 & echo ready; wait") as child:
        try:
            yield child
        finally:
            _kill_all(child.pid)
            child.kill()


def _recorded(child: subprocess.Popen[bytes], **changes: object) -> LeftoverProcessGroup:
    fields: dict[str, object] = {
        "key": "job-1",
        "pgid": child.pid,
        "leader_start_time": procfs.start_time(child.pid),
        "boot_id": procfs.boot_id(),
    }
    fields.update(changes)
    return LeftoverProcessGroup(**fields)  # type: ignore[arg-type]


def test_a_recorded_group_is_killed_whole(job: subprocess.Popen[bytes]) -> None:
    assert len(_live_members(job.pid)) == 3
    assert kill_process_groups([_recorded(job)]) == [job.pid]
    assert _live_members(job.pid) == []  # it waited for them to go


def test_a_group_whose_leader_is_gone_is_still_killed() -> None:
    with _start("sleep 30 & sleep 30 & echo ready") as child:
        recorded = LeftoverProcessGroup(
            "job", child.pid, procfs.start_time(child.pid), procfs.boot_id()
        )
        child.wait()  # the leader is gone (reaped), its two sleeps live on in its group
        try:
            assert procfs.read_stat(child.pid) is None
            assert len(_live_members(child.pid)) == 2
            assert kill_process_groups([recorded]) == [child.pid]
            assert _live_members(child.pid) == []
        finally:
            _kill_all(child.pid)


def test_a_reused_pid_is_not_killed(job: subprocess.Popen[bytes]) -> None:
    """The leader's start time differs: this group is someone else's now."""
    start = procfs.start_time(job.pid)
    assert start is not None
    assert kill_process_groups([_recorded(job, leader_start_time=start - 1)]) == []
    assert len(_live_members(job.pid)) == 3


def test_a_group_of_an_earlier_boot_is_not_killed(job: subprocess.Popen[bytes]) -> None:
    assert kill_process_groups([_recorded(job, boot_id="an-earlier-boot")]) == []
    assert len(_live_members(job.pid)) == 3


def test_a_group_with_no_members_left_is_skipped() -> None:
    with subprocess.Popen(["sleep", "30"], start_new_session=True) as child:
        recorded = LeftoverProcessGroup(
            "job", child.pid, procfs.start_time(child.pid), procfs.boot_id()
        )
        child.kill()
    assert kill_process_groups([recorded], wait=0.1) == []


def test_the_journal_still_exports_them_from_their_new_home() -> None:
    assert owner.LeftoverProcessGroup is groups.LeftoverProcessGroup
    assert owner.kill_process_groups is groups.kill_process_groups
    assert {"LeftoverProcessGroup", "kill_process_groups"} <= set(owner.__all__)
