"""The journal's on-disk format: schema, pragmas, and reading records back.

Kept apart from `Journal` (which writes and owns) so that read-only users,
such as ``gpupool journal show``, share the exact same decoding without taking
ownership of the file.

Schema version 2 (version 1 and the migrations from it: :data:`MIGRATIONS`):

* ``gpupool_meta(name, value)``: ``created_at``, ``created_by`` (gpupool
  version).
* ``gpupool_owner``: at most one row, the live owner (pid, start time, boot
  id, host); absent when the last owner closed cleanly.
* ``tasks``: one row per task key with its latest state and, once final, its
  result as JSON. ``starts`` counts how often the task entered RUNNING over
  all runs, ``interrupted`` how often a crash was found to have cut it short.
  ``learned_resources`` (from version 2) is the reservation out-of-memory
  retries moved the task to, as JSON (``{"min_memory_mb": 12288,
  "exclusive": false}``): a resumed run starts the task with it.
* ``events``: every state change, in commit order (an audit trail; also what
  the crash test checks "finished exactly once" against), with the GPUs the
  attempt held (``gpu_indices``, JSON, from version 2; NULL in rows written by
  version 1, where only the task's last attempt's GPUs were kept, in ``tasks``).
* ``process_groups``: process groups of running subprocess jobs.

``PRAGMA application_id`` marks the file as a gpupool journal and
``PRAGMA user_version`` holds the schema version.

Versions: a new journal is made with the version 1 DDL (:data:`SCHEMA_V1`)
and then every migration, the path an old journal takes too, so both end
the same. ``MIGRATIONS[i]`` holds the statements that take version ``i + 1``
to ``i + 2``; an older journal opened for writing is upgraded in the
transaction that takes ownership (:func:`upgrade`), and one opened read-only
(``gpupool journal show``, ``plot``) is read as it is (:func:`read_records`
and :func:`read_events` ask the file's version which columns it has), never
written.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

import attrs

from .._core.errors import JournalError
from .._core.growth import LearnedMemory
from .._core.results import TaskResult, TaskStatus
from .codec import canonical_json, decode_json

__all__ = [
    "APPLICATION_ID",
    "MIGRATIONS",
    "SCHEMA_V1",
    "SCHEMA_VERSION",
    "EventRecord",
    "TaskRecord",
    "check_header",
    "count_statuses",
    "create_schema",
    "decode_learned",
    "encode_learned",
    "read_events",
    "read_records",
    "upgrade",
]

#: "GPPJ" as a big-endian int: marks an SQLite file as a gpupool journal.
APPLICATION_ID = 0x4750504A

_SQLITE_HEADER = b"SQLite format 3\x00"

_STATUSES = ", ".join(f"'{s.value}'" for s in TaskStatus)

#: The version 1 DDL, as gpupool first wrote it: never changed (a new journal is
#: made with it and then migrated, as an old one is).
SCHEMA_V1 = f"""
CREATE TABLE gpupool_meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE gpupool_owner (
    slot INTEGER PRIMARY KEY CHECK (slot = 1),
    pid INTEGER NOT NULL,
    start_time INTEGER,
    boot_id TEXT,
    hostname TEXT NOT NULL,
    since REAL NOT NULL
);
CREATE TABLE tasks (
    key TEXT PRIMARY KEY,
    fn TEXT NOT NULL,
    item TEXT,
    status TEXT NOT NULL CHECK (status IN ({_STATUSES})),
    attempts INTEGER NOT NULL DEFAULT 0,
    starts INTEGER NOT NULL DEFAULT 0,
    interrupted INTEGER NOT NULL DEFAULT 0,
    gpu_indices TEXT NOT NULL DEFAULT '[]',
    value TEXT,
    error TEXT,
    traceback TEXT,
    duration_s REAL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    finished_at REAL
);
CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    status TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    at REAL NOT NULL,
    pid INTEGER NOT NULL,
    note TEXT
);
CREATE INDEX events_by_key ON events (key, seq);
CREATE TABLE process_groups (
    key TEXT NOT NULL,
    pgid INTEGER NOT NULL,
    leader_start_time INTEGER,
    boot_id TEXT,
    recorded_at REAL NOT NULL,
    PRIMARY KEY (key, pgid)
);
PRAGMA application_id = {APPLICATION_ID};
PRAGMA user_version = 1;
"""

#: ``MIGRATIONS[i]``: the statements that take schema version ``i + 1`` to ``i + 2``.
#: Each is self-contained (a column added with its default), and the version is set
#: by :func:`upgrade`, not by them.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        # 2: the reservation out-of-memory retries taught a task (docs/memory.md).
        "ALTER TABLE tasks ADD COLUMN learned_resources TEXT",
        # 2: the GPUs each event's attempt held, so that every attempt of a
        # retried task is drawn on its own GPUs (``gpupool journal plot``).
        # NULL in the rows version 1 wrote: unknown, not "no GPU".
        "ALTER TABLE events ADD COLUMN gpu_indices TEXT",
    ),
)
SCHEMA_VERSION = 1 + len(MIGRATIONS)


def upgrade(conn: sqlite3.Connection, version: int) -> None:
    """Take a journal of schema ``version`` to :data:`SCHEMA_VERSION`.

    Runs inside the caller's transaction (the one that takes ownership), so
    an upgrade that fails half-way leaves the file at its old version.
    """
    for statements in MIGRATIONS[version - 1 :]:
        for statement in statements:
            conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def create_schema(conn: sqlite3.Connection) -> None:
    """The tables of a new journal, in the caller's transaction: the version 1
    DDL, then every migration (the path an old journal takes)."""
    # Not executescript(), which COMMITs first: this runs inside the open's transaction.
    for statement in SCHEMA_V1.split(";"):
        if statement.strip():
            conn.execute(statement)
    upgrade(conn, 1)


def check_header(path: str) -> None:
    """Refuse a file that exists but is not an SQLite database, before SQLite
    touches it (SQLite would create ``-wal``/``-shm`` files beside it first).
    An empty file is fine: SQLite treats it as a new database."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(_SQLITE_HEADER))
    except FileNotFoundError:
        return
    except IsADirectoryError:
        raise JournalError(f"journal path {path!r} is a directory, not a file") from None
    except OSError as exc:
        raise JournalError(f"cannot read journal {path!r}: {exc.strerror}") from None
    if head and head != _SQLITE_HEADER:
        raise JournalError(
            f"{path!r} is not a gpupool journal (not an SQLite database); "
            "pass a new file name or an existing journal"
        )


def check_schema(conn: sqlite3.Connection, path: str) -> int:
    """Check the file is a gpupool journal this version can read; its schema version.

    Returns 0 for a fresh, empty database (the caller creates the schema).
    """
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if app_id == 0 and version == 0:
        tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if tables == 0:
            return 0
    if app_id != APPLICATION_ID:
        raise JournalError(
            f"{path!r} is an SQLite database but not a gpupool journal "
            f"(application_id {app_id:#x}); pass a new file name or an existing journal"
        )
    if version > SCHEMA_VERSION:
        raise JournalError(
            f"journal {path!r} has schema version {version}, written by a newer gpupool; "
            f"this version reads schema versions up to {SCHEMA_VERSION}: upgrade gpupool"
        )
    if version < 1:
        raise JournalError(f"journal {path!r} has no schema version (user_version {version})")
    return int(version)


@attrs.frozen
class TaskRecord:
    """One task's row in a journal, decoded."""

    key: str
    fn: str
    item: Any
    status: TaskStatus
    attempts: int
    starts: int
    interrupted: int
    gpu_indices: tuple[int, ...]
    value: Any
    error: str | None
    traceback: str | None
    duration_s: float | None
    created_at: float
    updated_at: float
    finished_at: float | None
    #: The reservation out-of-memory retries moved the task to (None: never).
    learned_resources: LearnedMemory | None = None

    def to_result(self) -> TaskResult:
        """The `TaskResult` a resumed run returns for this task."""
        return TaskResult(
            key=self.key,
            status=self.status,
            value=self.value,
            error=self.error,
            traceback=self.traceback,
            attempts=self.attempts,
            gpu_indices=self.gpu_indices,
            from_journal=True,
            duration_s=self.duration_s,
        )


_COLUMNS = (
    "key, fn, item, status, attempts, starts, interrupted, gpu_indices, value, error, "
    "traceback, duration_s, created_at, updated_at, finished_at"
)
# What each schema version has beyond version 1's columns (a version 1 journal
# read as it is gives NULL for them).
_COLUMNS_BY_VERSION = {1: f"{_COLUMNS}, NULL", 2: f"{_COLUMNS}, learned_resources"}


def _columns(conn: sqlite3.Connection) -> str:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    return _COLUMNS_BY_VERSION[min(max(version, 1), SCHEMA_VERSION)]


def encode_learned(learned: LearnedMemory) -> str:
    """``learned`` as the ``learned_resources`` column holds it (canonical JSON)."""
    return canonical_json({"min_memory_mb": learned.min_memory_mb, "exclusive": learned.exclusive})


def decode_learned(text: object) -> LearnedMemory | None:
    """The ``learned_resources`` column read back; ``ValueError``/``TypeError`` if damaged."""
    if text is None:
        return None
    value = decode_json(_typed("learned_resources", text, str))
    if not isinstance(value, dict) or set(value) != {"min_memory_mb", "exclusive"}:
        raise ValueError(f"learned_resources is {text!r}, not a learned reservation")
    return LearnedMemory(value["min_memory_mb"], value["exclusive"])


def _record(row: tuple[Any, ...]) -> TaskRecord:
    """Decode one ``tasks`` row; a damaged one raises `JournalError` naming the task."""
    try:
        return _decode_row(row)
    except (ValueError, TypeError) as exc:  # json.JSONDecodeError is a ValueError
        raise JournalError(
            f"the journal's row for task {row[0]!r} is damaged ({exc}); "
            "restore the journal from a copy, or start a new one"
        ) from None


def _decode_row(row: tuple[Any, ...]) -> TaskRecord:
    (key, fn, item, status, attempts, starts, interrupted, gpus, value, error, tb) = row[:11]
    return TaskRecord(
        key=_typed("key", key, str),
        fn=_typed("fn", fn, str),
        item=None if item is None else decode_json(_typed("item", item, str)),
        status=TaskStatus(status),
        attempts=_typed("attempts", attempts, int),
        starts=_typed("starts", starts, int),
        interrupted=_typed("interrupted", interrupted, int),
        gpu_indices=_gpu_list(gpus),
        value=None if value is None else decode_json(_typed("value", value, str)),
        error=None if error is None else _typed("error", error, str),
        traceback=None if tb is None else _typed("traceback", tb, str),
        duration_s=None if row[11] is None else _typed("duration_s", row[11], (int, float)),
        created_at=_typed("created_at", row[12], (int, float)),
        updated_at=_typed("updated_at", row[13], (int, float)),
        finished_at=None if row[14] is None else _typed("finished_at", row[14], (int, float)),
        learned_resources=decode_learned(row[15]),
    )


def _typed(column: str, value: Any, kind: type | tuple[type, ...]) -> Any:
    """``value`` if SQLite gave it the column's type (a damaged page may not)."""
    if not isinstance(value, kind):  # SQLite gives int, float, str, bytes or None: never bool
        raise TypeError(f"{column} is {value!r}")
    return value


def read_record(conn: sqlite3.Connection, key: str) -> TaskRecord | None:
    row = conn.execute(f"SELECT {_columns(conn)} FROM tasks WHERE key = ?", (key,)).fetchone()
    return None if row is None else _record(row)


def read_records(conn: sqlite3.Connection) -> Iterator[TaskRecord]:
    """Every task, in the order the tasks were first submitted."""
    for row in conn.execute(f"SELECT {_columns(conn)} FROM tasks ORDER BY rowid"):
        yield _record(row)


@attrs.frozen
class EventRecord:
    """One row of ``events``: a task moved to ``status`` at ``at`` (Unix time).

    ``gpu_indices`` is None where the journal did not record them (schema
    version 1): unknown, which is not the same as ``()``, a CPU-only attempt.
    ``note`` is why a task was queued again, or a failed attempt's error.
    """

    seq: int
    key: str
    status: TaskStatus
    attempt: int
    at: float
    pid: int
    note: str | None
    gpu_indices: tuple[int, ...] | None


def read_events(conn: sqlite3.Connection, version: int) -> Iterator[EventRecord]:
    """Every event, in commit order, from a journal of schema ``version``."""
    gpus = "gpu_indices" if version >= 2 else "NULL"
    rows = conn.execute(
        f"SELECT seq, key, status, attempt, at, pid, note, {gpus} FROM events ORDER BY seq"
    )
    for row in rows:
        try:
            yield _event(row)
        except (ValueError, TypeError) as exc:
            raise JournalError(
                f"the journal's event {row[0]!r} (task {row[1]!r}) is damaged ({exc}); "
                "restore the journal from a copy, or start a new one"
            ) from None


def _event(row: tuple[Any, ...]) -> EventRecord:
    seq, key, status, attempt, at, pid, note, gpus = row
    return EventRecord(
        seq=_typed("seq", seq, int),
        key=_typed("key", key, str),
        status=TaskStatus(status),
        attempt=_typed("attempt", attempt, int),
        at=float(_typed("at", at, (int, float))),
        pid=_typed("pid", pid, int),
        note=None if note is None else _typed("note", note, str),
        gpu_indices=None if gpus is None else _gpu_list(gpus),
    )


def _gpu_list(text: Any) -> tuple[int, ...]:
    """A ``gpu_indices`` column: a JSON list of ints."""
    gpu_indices = decode_json(_typed("gpu_indices", text, str))
    if not isinstance(gpu_indices, list) or not all(type(index) is int for index in gpu_indices):
        raise ValueError(f"gpu_indices is {text!r}, not a JSON list of ints")
    return tuple(gpu_indices)


def count_statuses(conn: sqlite3.Connection) -> dict[TaskStatus, int]:
    """How many tasks are in each state (every state present, zeros included)."""
    counts = dict.fromkeys(TaskStatus, 0)
    for status, n in conn.execute("SELECT status, count(*) FROM tasks GROUP BY status"):
        try:
            counts[TaskStatus(status)] = n
        except ValueError:
            raise JournalError(
                f"the journal is damaged: {n} task(s) have the unknown status {status!r}"
            ) from None
    return counts
