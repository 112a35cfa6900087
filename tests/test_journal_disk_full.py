"""A journal on a disk that fills up (issue 10 item 7), on a real 2 MiB tmpfs.

The promise (docs/journal.md, "When the journal fails"): the run ends with
one `JournalError`, the journal holds the last state it could commit (no key
with two final events, no event without its task), and the next run, with
space again, resumes: finished results come from the journal, nothing that
finished runs again, nothing is lost.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from gpupool import GPUAllocation, Journal, JournalError, ParallelRunner, TaskStatus
from gpupool._journal.owner import current_identity

ITEMS = list(range(24))
FILL_AT = 10  # the 10th call fills the disk (say, with a checkpoint that grew too big)
FINAL = tuple(s.value for s in TaskStatus if s.is_final)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs of our own, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a 2 MiB tmpfs needs root (CI runs these as root)")
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "--lazy", str(mount_point)], check=True)


def _fill(directory: Path) -> Path:
    """Write a file that takes every free byte of ``directory``'s file system."""
    filler = directory / "filler"
    chunk = b"\0" * 65536
    with open(filler, "wb", buffering=0) as f:
        while chunk:
            try:
                f.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                chunk = chunk[: len(chunk) // 2]
    return filler


class Sweep:
    """A task function that counts its calls and can fill the disk once.

    By call count, not by item: trio runs new tasks in no fixed order.
    """

    def __init__(self, disk: Path) -> None:
        self.disk = disk
        self.calls: list[int] = []
        self.fill_at: int | None = None
        self.filler: Path | None = None

    async def __call__(self, item: int, allocation: GPUAllocation | None) -> str:
        self.calls.append(item)
        await anyio.lowlevel.checkpoint()
        if len(self.calls) == self.fill_at and self.filler is None:
            self.filler = _fill(self.disk)
        return f"result {item} " + "x" * 500


def _sql(path: Path) -> contextlib.closing[sqlite3.Connection]:
    return contextlib.closing(sqlite3.connect(path, isolation_level=None))


def _check_consistent(path: Path) -> dict[str, str]:
    """The journal's invariants; returns each key's recorded status."""
    with _sql(path) as conn:
        final_events = conn.execute(
            "SELECT key, count(*) FROM events WHERE status IN "
            f"({','.join('?' * len(FINAL))}) GROUP BY key HAVING count(*) > 1",
            FINAL,
        ).fetchall()
        assert final_events == [], "a key with two final events"
        orphans = conn.execute(
            "SELECT DISTINCT key FROM events WHERE key NOT IN (SELECT key FROM tasks)"
        ).fetchall()
        assert orphans == [], "events of a task that has no row"
        return dict(conn.execute("SELECT key, status FROM tasks").fetchall())


async def _run(path: Path, sweep: Sweep) -> list[object]:
    async with ParallelRunner(max_parallel=2, journal=path) as runner:
        return list(await runner.map(sweep, ITEMS, key=str))


def _assert_stopped_by_one_journal_error(info: pytest.ExceptionInfo[BaseException]) -> None:
    # Exactly one JournalError: not a raw sqlite3 error, not a group of several.
    assert type(info.value) is JournalError, repr(info.value)
    assert "database or disk is full" in str(info.value)
    assert isinstance(info.value.__cause__, sqlite3.OperationalError)


async def _resume_cleanly(path: Path, sweep: Sweep, first_calls: list[int]) -> set[int]:
    """With space again, the next run answers what finished from the journal;
    returns the items that had finished before the disk filled."""
    assert sweep.filler is not None
    sweep.filler.unlink()
    recorded = _check_consistent(path)
    finished = {int(k) for k, status in recorded.items() if status == "succeeded"}
    with _sql(path) as conn:
        owners = conn.execute("SELECT pid FROM gpupool_owner").fetchall()
    if owners:  # left behind by a close that could not write: recognised as gone
        with Journal(path) as journal:
            assert journal.takeover is not None
            assert journal.takeover.previous_owner == current_identity()
    sweep.calls.clear()
    sweep.fill_at = None
    results = await _run(path, sweep)
    assert all(r.status is TaskStatus.SUCCEEDED for r in results)  # type: ignore[attr-defined]
    assert [r.value for r in results] == [  # type: ignore[attr-defined]
        f"result {i} " + "x" * 500 for i in ITEMS
    ]
    from_journal = {int(r.key) for r in results if r.from_journal}  # type: ignore[attr-defined]
    assert from_journal == finished
    assert sorted(sweep.calls) == sorted(set(ITEMS) - finished)  # nothing re-run, none lost
    assert set(_check_consistent(path).values()) == {"succeeded"}
    assert finished <= set(first_calls)
    return finished


@pytest.mark.anyio
async def test_disk_full_during_the_run_ends_with_one_journal_error(small_disk: Path) -> None:
    path = small_disk / "sweep.sqlite"
    sweep = Sweep(small_disk)
    sweep.fill_at = FILL_AT
    with pytest.raises(BaseException) as info:  # noqa: PT011 - exactly which is checked below
        await _run(path, sweep)
    _assert_stopped_by_one_journal_error(info)
    first_calls = list(sweep.calls)
    filling_item = first_calls[FILL_AT - 1]
    finished = await _resume_cleanly(path, sweep, first_calls)
    # All the calls before it but one that may have run beside it finished.
    assert len(finished) >= FILL_AT - 2
    assert filling_item not in finished  # its result could not be committed: it ran again


@pytest.mark.anyio
async def test_disk_full_before_the_tasks_are_claimed(small_disk: Path) -> None:
    """Every claim fails: nothing runs, nothing is recorded for a key without a row."""
    path = small_disk / "sweep.sqlite"
    sweep = Sweep(small_disk)

    async def fill_then_run() -> None:
        async with ParallelRunner(max_parallel=2, journal=path) as runner:
            sweep.filler = _fill(small_disk)
            await runner.map(sweep, ITEMS, key=str)

    with pytest.raises(BaseException) as info:  # noqa: PT011 - checked below
        await fill_then_run()
    _assert_stopped_by_one_journal_error(info)
    assert sweep.calls == []
    assert await _resume_cleanly(path, sweep, []) == set()
