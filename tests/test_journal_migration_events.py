"""Schema version 1 -> 2 on a real version 1 file, for the GPUs of each event: upgraded in one transaction when a
`Journal` opens it (a writer), read as it is by ``gpupool journal show`` and ``plot``."""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
from pathlib import Path

import pytest

from gpupool import Journal, JournalError, TaskStatus
from gpupool._cli.journal import main
from gpupool._journal import schema
from gpupool._journal.schema import MIGRATIONS, SCHEMA_VERSION, check_schema, read_events

# The tables exactly as gpupool's first journal format wrote them (not imported from
# gpupool, so that a change to schema.py cannot change what "version 1" means here).
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
    value TEXT, error TEXT, traceback TEXT, duration_s REAL, created_at REAL NOT NULL,
    updated_at REAL NOT NULL, finished_at REAL
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

# A retried GPU task (GPU 1 on its last attempt) and a CPU-only one, as version 1 wrote them.
V1_ROWS = """
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


def _v1_journal(path: Path) -> Path:
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.executescript(V1_DDL + V1_ROWS)
        conn.execute("PRAGMA journal_mode = WAL")
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]


def test_version_2_adds_the_gpus_of_each_event() -> None:
    assert SCHEMA_VERSION == 2
    assert "ALTER TABLE events ADD COLUMN gpu_indices TEXT" in MIGRATIONS[0]


def test_a_new_journal_is_version_1_plus_every_migration(tmp_path: Path) -> None:
    new = tmp_path / "new.sqlite"
    Journal(new).close()
    old = _v1_journal(tmp_path / "old.sqlite")
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
    path = _v1_journal(tmp_path / "sweep.sqlite")
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
    path = _v1_journal(tmp_path / "sweep.sqlite")
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
    path = _v1_journal(tmp_path / "sweep.sqlite")
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    before = _digest(path)
    argv = ["journal", command, str(path)]
    if command == "plot":
        argv += ["-o", str(tmp_path / "run.svg")]
    assert main(argv) == 0, capsys.readouterr().err
    assert _digest(path) == before
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    if command == "plot":
        svg = (tmp_path / "run.svg").read_text()
        # The CPU-only task in the CPU lane; the retried task's first attempt in "GPU ?".
        for lane in ("GPU 1", "GPU ?", "CPU"):
            assert f">{lane}</text>" in svg
