"""Journals written by an older gpupool: upgraded when opened for writing, read as
they are by ``gpupool journal show``/``export`` (gpupool/_journal/schema.py)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpupool import Journal, JournalError, LearnedMemory, TaskStatus
from gpupool._cli import journal as journal_cli
from gpupool._journal.schema import MIGRATIONS, SCHEMA_VERSION

# Version 1 as gpupool 0.1 wrote it, spelled out here (not imported), so that a
# change to the code's copy cannot make this test agree with itself.
V1_DDL = """
CREATE TABLE gpupool_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE gpupool_owner (
    slot INTEGER PRIMARY KEY CHECK (slot = 1), pid INTEGER NOT NULL, start_time INTEGER,
    boot_id TEXT, hostname TEXT NOT NULL, since REAL NOT NULL
);
CREATE TABLE tasks (
    key TEXT PRIMARY KEY, fn TEXT NOT NULL, item TEXT,
    status TEXT NOT NULL CHECK (status IN ('queued', 'waiting_for_gpu', 'running',
        'retrying', 'succeeded', 'failed', 'timed_out', 'cancelled')),
    attempts INTEGER NOT NULL DEFAULT 0, starts INTEGER NOT NULL DEFAULT 0,
    interrupted INTEGER NOT NULL DEFAULT 0, gpu_indices TEXT NOT NULL DEFAULT '[]',
    value TEXT, error TEXT, traceback TEXT, duration_s REAL,
    created_at REAL NOT NULL, updated_at REAL NOT NULL, finished_at REAL
);
CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, status TEXT NOT NULL,
    attempt INTEGER NOT NULL, at REAL NOT NULL, pid INTEGER NOT NULL, note TEXT
);
CREATE INDEX events_by_key ON events (key, seq);
CREATE TABLE process_groups (
    key TEXT NOT NULL, pgid INTEGER NOT NULL, leader_start_time INTEGER, boot_id TEXT,
    recorded_at REAL NOT NULL, PRIMARY KEY (key, pgid)
);
PRAGMA application_id = 1196445770;
PRAGMA user_version = 1;
"""


def _v1_journal(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.executescript(V1_DDL)
        conn.execute("INSERT INTO gpupool_meta VALUES ('created_by', 'gpupool 0.1')")
        conn.execute(
            "INSERT INTO tasks (key, fn, item, status, attempts, value, created_at, updated_at,"
            " finished_at) VALUES ('done', 'train', '{\"lr\":0.1}', 'succeeded', 1, '0.25',"
            " 1.0, 2.0, 2.0)"
        )
        conn.execute(
            "INSERT INTO tasks (key, fn, status, attempts, error, created_at, updated_at)"
            " VALUES ('broken', 'train', 'failed', 2, 'ValueError: nan', 1.0, 2.0)"
        )
    finally:
        conn.close()


def _version(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextlib.contextmanager
def _captured() -> Iterator[io.StringIO]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        yield out


def test_schema_version_counts_the_migrations() -> None:
    assert SCHEMA_VERSION == 1 + len(MIGRATIONS) == 2


def test_a_v1_journal_opened_for_writing_is_upgraded_and_keeps_its_tasks(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    _v1_journal(path)
    with Journal(path) as journal:
        assert _version(path) == SCHEMA_VERSION
        done = journal.get("done")
        assert done is not None
        assert (done.status, done.value, done.item) == (TaskStatus.SUCCEEDED, 0.25, {"lr": 0.1})
        assert done.learned_resources is None
        assert journal.claim("done") is not None  # still finished: not run again
        assert journal.claim("new") is None
        journal.record("new", TaskStatus.RETRYING, attempt=1, learned=LearnedMemory(8192, False))
        assert journal.learned_resources("new") == LearnedMemory(8192, False)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(tasks)")]
    assert columns[-1] == "learned_resources"
    with Journal(path) as journal:  # opening again changes nothing more
        assert journal.learned_resources("new") == LearnedMemory(8192, False)


def test_a_failed_upgrade_leaves_the_journal_at_version_1(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    _v1_journal(path)
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        # A column the migration would add, there already: its ALTER TABLE fails.
        conn.execute("ALTER TABLE tasks ADD COLUMN learned_resources TEXT")
    with pytest.raises(JournalError, match="duplicate column name"):
        Journal(path)
    assert _version(path) == 1
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT count(*) FROM gpupool_owner").fetchone()[0] == 0


def test_show_and_export_read_a_v1_journal_without_writing_it(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    _v1_journal(path)
    before = _digest(path)
    with _captured() as out:
        assert journal_cli.main(["journal", "show", str(path)]) == 0
    assert "2 tasks" in out.getvalue()
    assert "ValueError: nan" in out.getvalue()
    with _captured() as out:
        assert journal_cli.main(["journal", "export", str(path)]) == 0
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(r["key"], r["learned_resources"]) for r in rows] == [("done", None), ("broken", None)]
    assert _version(path) == 1
    assert _digest(path) == before


def test_show_lists_what_out_of_memory_retries_taught(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite"
    with Journal(path) as journal:
        journal.claim("train", item={"line": 3, "command": "python train.py"})
        journal.record("train", TaskStatus.RETRYING, attempt=1, learned=LearnedMemory(16384, False))
        journal.claim("big")
        journal.record("big", TaskStatus.RETRYING, attempt=3, learned=LearnedMemory(16384, True))
    with _captured() as out:
        assert journal_cli.main(["journal", "show", str(path)]) == 0
    text = " ".join(out.getvalue().split())
    assert "memory learned from out-of-memory retries" in text
    assert "line 3: python train.py 16384 MB shared" in text
    assert "exclusive GPUs (at least 16384 MB free)" in text
    with _captured() as out:
        assert journal_cli.main(["journal", "export", str(path), "--format", "csv"]) == 0
    assert '"{""min_memory_mb"": 16384, ""exclusive"": false}"' in out.getvalue()
