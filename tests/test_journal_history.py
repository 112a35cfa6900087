"""What a journal tells of how long tasks ran (``gpupool._journal.history``), read from a
real SQLite file, while its owner holds it too."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpupool import Journal, JournalError, TaskResult, TaskStatus
from gpupool._journal.history import read_durations


def _finish(journal: Journal, key: str, status: TaskStatus, attempts: int, seconds: float) -> None:
    journal.claim(key)
    journal.record(key, TaskStatus.RUNNING, attempt=attempts)
    journal.finish(TaskResult(key=key, status=status, attempts=attempts, duration_s=seconds))


def test_only_first_attempt_successes_are_samples(tmp_path: Path) -> None:
    path = tmp_path / "sweep.sqlite"
    with Journal(path) as journal:
        _finish(journal, "ok", TaskStatus.SUCCEEDED, 1, 12.5)
        _finish(journal, "retried", TaskStatus.SUCCEEDED, 2, 40.0)  # spans two attempts
        _finish(journal, "failed", TaskStatus.FAILED, 1, 0.5)
        _finish(journal, "timed-out", TaskStatus.TIMED_OUT, 1, 60.0)
        _finish(journal, "instant", TaskStatus.SUCCEEDED, 1, 0.0)
        journal.claim("still-queued")
        # Read while this Journal owns the file: a reader needs no ownership.
        assert read_durations(journal) == {"ok": [12.5], "instant": [0.0]}
    assert read_durations(path) == read_durations(str(path)) == {"ok": [12.5], "instant": [0.0]}


def test_a_task_run_again_counts_as_it_ran_last(tmp_path: Path) -> None:
    path = tmp_path / "sweep.sqlite"
    with Journal(path, retry_failed=True) as journal:
        _finish(journal, "k", TaskStatus.FAILED, 1, 3.0)
        _finish(journal, "k", TaskStatus.SUCCEEDED, 1, 7.0)
    assert read_durations(path) == {"k": [7.0]}


def test_what_is_no_journal_is_refused(tmp_path: Path) -> None:
    with pytest.raises(JournalError, match="no journal at"):
        read_durations(tmp_path / "missing.sqlite")
    text = tmp_path / "notes.txt"
    text.write_text("not a database")
    with pytest.raises(JournalError, match="not a gpupool journal"):
        read_durations(text)
    with pytest.raises(TypeError, match="a history must be a journal's path"):
        read_durations(42)  # type: ignore[arg-type]
