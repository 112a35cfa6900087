"""RunnerJournal: the runner's protocol (finished / record) over a Journal."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
from pathlib import Path

import attrs
import pytest

from gpupool import Journal, JournalInUse, TaskResult, TaskStatus
from gpupool._core.model import StartedProcess
from gpupool._journal.adapter import RunnerJournal, open_journal


@attrs.frozen
class Event:
    key: str
    status: TaskStatus
    attempt: int = 1
    gpu_indices: tuple[int, ...] = ()
    error: str | None = None


def _groups(path: Path) -> list[tuple[str, int]]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute("SELECT key, pgid FROM process_groups").fetchall()


def train(item: object, allocation: object) -> None:
    """A task function."""


@pytest.mark.anyio
async def test_lifecycle_is_committed_and_resumed(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    rj = open_journal(path)
    rj.open()
    rj.describe("k", train, {"lr": 0.1})
    assert await rj.finished("k") is None
    await rj.record(Event("k", TaskStatus.QUEUED, 0), None)
    await rj.record(Event("k", TaskStatus.WAITING_FOR_GPU), None)
    await rj.record(Event("k", TaskStatus.RUNNING, gpu_indices=(1,)), None)
    # What run_process does inside the task, through the hook the runner sets.
    rj.on_process_started("k")(StartedProcess(4242))
    assert rj.journal.leftover_process_groups == ()  # ours, not a dead owner's
    assert _groups(path) == [("k", 4242)]
    assert rj.journal.get("k").status is TaskStatus.RUNNING  # type: ignore[union-attr]
    result = TaskResult("k", TaskStatus.SUCCEEDED, value=3, attempts=1, gpu_indices=(1,))
    await rj.record(Event("k", TaskStatus.SUCCEEDED), result)
    assert _groups(path) == []  # the final state forgets what the task left
    record = rj.journal.get("k")
    assert record is not None
    assert (record.fn, record.item, record.value, record.gpu_indices) == (
        f"{__name__}.train",
        {"lr": 0.1},
        3,
        (1,),
    )
    rj.close()
    rj.close()
    again = RunnerJournal(path)
    again.open()
    prior = await again.finished("k")
    assert prior is not None
    assert (prior.value, prior.from_journal) == (3, True)
    again.close()


@pytest.mark.anyio
async def test_cancelled_before_claim_records_nothing(tmp_path: Path) -> None:
    rj = RunnerJournal(tmp_path / "j.sqlite")
    rj.open()
    cancelled = TaskResult("k", TaskStatus.CANCELLED)
    await rj.record(Event("k", TaskStatus.CANCELLED), cancelled)
    assert rj.journal.records() == []
    rj.close()


@pytest.mark.anyio
async def test_borrowed_journal_is_not_closed(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.sqlite", synchronous="full") as journal:
        rj = RunnerJournal(journal, retry_failed=True)
        rj.open()
        assert await rj.finished("k") is None
        await rj.record(Event("k", TaskStatus.FAILED), TaskResult("k", TaskStatus.FAILED))
        assert await rj.finished("k") is None  # retry_failed
        rj.close()
        assert not journal.closed


def test_open_kills_leftovers_before_anything_runs(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    sleeper = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        journal = Journal(path)
        assert journal.claim("k") is None
        journal.record_process_group("k", sleeper.pid)
        journal._conn.close()  # type: ignore[union-attr]  # the owner dies without closing
        del journal
        rj = RunnerJournal(path)
        rj.open()
        assert rj.killed_leftovers == [sleeper.pid]
        assert sleeper.wait(timeout=10) == -9
        rj.close()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_bad_arguments_and_use_before_open(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="journal must be a path or a Journal, got 3"):
        RunnerJournal(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="retry_failed must be a bool"):
        RunnerJournal(tmp_path / "j.sqlite", retry_failed=1)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="not open"):
        RunnerJournal(tmp_path / "j.sqlite").journal  # noqa: B018
    with Journal(tmp_path / "j.sqlite"), pytest.raises(JournalInUse):
        RunnerJournal(tmp_path / "j.sqlite").open()
