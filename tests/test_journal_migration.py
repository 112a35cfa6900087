"""Journals written by an older gpupool (schema version 1): upgraded in one transaction when
a ``Journal`` opens one for writing, read as they are by ``gpupool journal show``,
``export`` and ``plot`` (gpupool/_journal/schema.py)."""

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
from gpupool._journal import schema
from gpupool._journal.schema import MIGRATIONS, SCHEMA_VERSION, check_schema, read_events

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

# A finished task and a failed one, as version 1 wrote them.
V1_TASKS = """
INSERT INTO gpupool_meta VALUES ('created_by', 'gpupool 0.1');
INSERT INTO tasks (key, fn, item, status, attempts, value, created_at, updated_at, finished_at)
    VALUES ('done', 'train', '{"lr":0.1}', 'succeeded', 1, '0.25', 1.0, 2.0, 2.0);
INSERT INTO tasks (key, fn, status, attempts, error, created_at, updated_at)
    VALUES ('broken', 'train', 'failed', 2, 'ValueError: nan', 1.0, 2.0);
"""

# A retried GPU task (GPU 1 on its last attempt) and a CPU-only one, as version 1 wrote them.
V1_SWEEP = """
INSERT INTO gpupool_meta VALUES ('created_at', '1000.0'), ('created_by', 'gpupool 0.1');
INSERT INTO tasks VALUES ('g', 'sweep.train', '{"lr":0.1}', 'succeeded', 2, 2, 0, '[1]',
    '0.5', NULL, NULL, 3.0, 1000.0, 1009.0, 1009.0);
INSERT INTO tasks VALUES ('c', 'sweep.prep', '{"n":1}', 'succeeded', 1, 1, 0, '[]',
    'null', NULL, NULL, 1.0, 1000.0, 1002.0, 1002.0);
INSERT INTO events (key, status, attempt, at, pid, note) VALUES
    ('g', 'queued', 0, 1000.0, 7, NULL), ('g', 'waiting_for_gpu', 1, 1000.0, 7, NULL),
    ('c', 'queued', 0, 1000.0, 7, NULL), ('c', 'running', 1, 1001.0, 7, NULL),
    ('g', 'running', 1, 1001.0, 7, NULL), ('c', 'succeeded', 1, 1002.0, 7, NULL),
    ('g', 'retrying', 1, 1004.0, 7, NULL), ('g', 'waiting_for_gpu', 2, 1005.0, 7, NULL),
    ('g', 'running', 2, 1006.0, 7, NULL), ('g', 'succeeded', 2, 1009.0, 7, NULL);
"""


def _v1_journal(path: Path, rows: str) -> Path:
    """A version 1 journal at ``path`` (WAL, as gpupool 0.1 opened it) holding ``rows``."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.executescript(V1_DDL + rows)
        conn.execute("PRAGMA journal_mode = WAL")
    return path


def _version(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]


@contextlib.contextmanager
def _captured() -> Iterator[io.StringIO]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        yield out


def test_schema_version_counts_the_migrations() -> None:
    assert SCHEMA_VERSION == 1 + len(MIGRATIONS) == 2


def test_a_v1_journal_opened_for_writing_is_upgraded_and_keeps_its_tasks(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    _v1_journal(path, V1_TASKS)
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
    _v1_journal(path, V1_TASKS)
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
    _v1_journal(path, V1_TASKS)
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


def test_version_2_adds_the_gpus_of_each_event() -> None:
    assert SCHEMA_VERSION == 2
    assert "ALTER TABLE events ADD COLUMN gpu_indices TEXT" in MIGRATIONS[0]


def test_a_new_journal_is_version_1_plus_every_migration(tmp_path: Path) -> None:
    new = tmp_path / "new.sqlite"
    Journal(new).close()
    old = _v1_journal(tmp_path / "old.sqlite", V1_SWEEP)
    Journal(old).close()
    with (
        contextlib.closing(sqlite3.connect(new)) as a,
        contextlib.closing(sqlite3.connect(old)) as b,
    ):
        for table in ("tasks", "events", "process_groups", "gpupool_owner", "gpupool_meta"):
            assert _columns(a, table) == _columns(b, table)
        assert check_schema(a, "new") == check_schema(b, "old") == SCHEMA_VERSION


def test_opening_a_version_1_journal_for_writing_upgrades_it_and_keeps_its_rows(
    tmp_path: Path,
) -> None:
    path = _v1_journal(tmp_path / "sweep.sqlite", V1_SWEEP)
    with Journal(path) as journal:
        assert journal.get("g").gpu_indices == (1,)  # type: ignore[union-attr]
        assert journal.claim("g") is not None  # finished in version 1: not run again
        assert journal.claim("new") is None
        journal.record("new", TaskStatus.RUNNING, attempt=1, gpu_indices=(0, 2))
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
        events = list(read_events(conn, 2))
    old = [e for e in events if e.key in ("g", "c")]
    assert len(old) == 10
    assert all(e.gpu_indices is None for e in old)
    assert [(e.status, e.gpu_indices) for e in events if e.key == "new"] == [
        (TaskStatus.QUEUED, ()),
        (TaskStatus.RUNNING, (0, 2)),
    ]


def test_a_failed_migration_leaves_the_version_1_file_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _v1_journal(tmp_path / "sweep.sqlite", V1_SWEEP)
    # A migration whose second statement fails: the first must be rolled back with it.
    broken = ((*schema.MIGRATIONS[0], "ALTER TABLE no_such_table ADD COLUMN x TEXT"),)
    monkeypatch.setattr(schema, "MIGRATIONS", broken)
    with pytest.raises(JournalError, match="no_such_table"):
        Journal(path)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
        assert "gpu_indices" not in _columns(conn, "events")
        assert conn.execute("SELECT count(*) FROM gpupool_owner").fetchone()[0] == 0


@pytest.mark.parametrize("command", ["show", "plot"])
def test_reading_a_version_1_journal_writes_nothing(
    tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib")
    path = _v1_journal(tmp_path / "sweep.sqlite", V1_SWEEP)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    before = _digest(path)
    argv = ["journal", command, str(path)]
    if command == "plot":
        argv += ["-o", str(tmp_path / "run.svg")]
    assert journal_cli.main(argv) == 0, capsys.readouterr().err
    assert _digest(path) == before
    assert _version(path) == 1
    if command == "plot":
        svg = (tmp_path / "run.svg").read_text()
        # The CPU-only task in the CPU lane; the retried task's first attempt in "GPU ?".
        for lane in ("GPU 1", "GPU ?", "CPU"):
            assert f">{lane}</text>" in svg
