"""The ledger's tables, as values: what is read at the start of a transaction and
written back at its end.

The schema is small and every transaction reads all of it (a machine has a
handful of GPUs, holders and waiters), which is what lets each process run
the scheduling core over the whole machine's state (``replica.py``). A row
that does not decode (a damaged or tampered file) raises :class:`Damaged`,
and the store rebuilds the ledger from the live members rather than trust it.

Formats. ``meta`` holds ``schema``, the format the file is in, and
``min_schema``, the oldest format a gpupool may know and still share the
file. Format 1 is :data:`SCHEMA_V1`, frozen; ``MIGRATIONS[i]`` takes format
``i + 1`` to ``i + 2``. Unlike the journal, which one process owns, a ledger
is shared by every gpupool on the machine at once, whatever its version, so
a migration must leave the tables an older gpupool reads and writes as they
were: that gpupool selects ``*`` and inserts whole rows by position, so a
column added to ``holds`` or ``waiters`` would make its writes fail, and it
would take the file for damaged and rebuild it (in its older format) again
and again. Format 2 therefore adds a table of its own, ``estimates``, which a
format-1 gpupool never reads (it keeps working and its decisions ignore the
estimates, as before). A gpupool that meets a ``min_schema`` above what it
knows refuses the file (:class:`TooNew`) and never rebuilds it.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, final

import attrs

__all__ = [
    "MIGRATIONS",
    "MIN_SCHEMA",
    "SCHEMA",
    "SCHEMA_V1",
    "SCHEMA_VERSION",
    "Damaged",
    "GPURow",
    "HoldRow",
    "LedgerState",
    "MemberRow",
    "SettleRow",
    "TooNew",
    "WaiterRow",
    "copy",
    "estimates",
    "load",
    "save",
    "upgrade",
]

#: The tables with a version each in ``meta`` (``estimates`` from format 2).
TABLES = ("members", "gpus", "marks", "holds", "waiters", "settles", "estimates")

#: The format 1 DDL, as gpupool first wrote it: never changed (an older gpupool
#: sharing the ledger reads and writes these tables by position).
SCHEMA_V1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE members (
    id TEXT PRIMARY KEY, pid INTEGER NOT NULL, pid_namespace TEXT, uid INTEGER NOT NULL,
    user TEXT NOT NULL, command TEXT NOT NULL, joined REAL NOT NULL, max_parallel INTEGER
) WITHOUT ROWID;
CREATE TABLE gpus (
    uuid TEXT PRIMARY KEY, idx INTEGER NOT NULL, name TEXT NOT NULL,
    memory_total_mb INTEGER NOT NULL, memory_used_mb INTEGER NOT NULL, utilization_pct REAL,
    healthy INTEGER NOT NULL, health_detail TEXT, processes TEXT NOT NULL, reported REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE marks (
    uuid TEXT NOT NULL, member TEXT NOT NULL, detail TEXT NOT NULL, PRIMARY KEY (uuid, member)
) WITHOUT ROWID;
CREATE TABLE holds (
    id INTEGER PRIMARY KEY, member TEXT NOT NULL, ticket INTEGER, gpus TEXT NOT NULL,
    memory_mb INTEGER NOT NULL, exclusive INTEGER NOT NULL, priority INTEGER NOT NULL,
    expected_duration REAL, experiment_id TEXT, granted_at REAL NOT NULL, since REAL NOT NULL,
    jobs TEXT NOT NULL, kind TEXT NOT NULL, until REAL, orphaned INTEGER NOT NULL
);
CREATE TABLE waiters (
    ticket INTEGER PRIMARY KEY, member TEXT NOT NULL, required_gpus INTEGER NOT NULL,
    min_memory_mb INTEGER NOT NULL, exclusive INTEGER NOT NULL, priority INTEGER NOT NULL,
    gpus TEXT NOT NULL, expected_duration REAL, experiment_id TEXT,
    submitted_at REAL NOT NULL, since REAL NOT NULL,
    front_at REAL, front_last INTEGER, reserved_start REAL,
    state TEXT NOT NULL, hold INTEGER, error TEXT
);
CREATE TABLE settles (
    uuid TEXT PRIMARY KEY, member TEXT NOT NULL, pids TEXT NOT NULL, epoch INTEGER NOT NULL,
    deadline REAL NOT NULL
) WITHOUT ROWID;
"""

#: ``MIGRATIONS[i]``: the statements that take format ``i + 1`` to ``i + 2``, each
#: idempotent (an upgrade may meet a file another process upgraded already).
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        # 2: the durations the system estimated (``Resources.estimated_duration``):
        # ``id`` is a hold's id or a waiter's ticket (one counter hands out both, so
        # they never collide); a hold without a row of its own has its ticket's.
        "CREATE TABLE IF NOT EXISTS estimates (id INTEGER PRIMARY KEY, seconds REAL NOT NULL)",
    ),
)
SCHEMA_VERSION = 1 + len(MIGRATIONS)
#: The oldest format whose gpupool may share a ledger of this one: format 1's
#: gpupool ignores ``estimates`` and works on.
MIN_SCHEMA = 1

#: The DDL of a fresh ledger: format 1 and every migration (the path an old file takes).
SCHEMA = SCHEMA_V1 + "".join(f"{s};\n" for m in MIGRATIONS for s in m)


class Damaged(Exception):
    """The ledger's content is not what gpupool writes: it is rebuilt, never trusted."""


class TooNew(Exception):
    """The ledger is in a format this gpupool cannot share: refused, never rebuilt."""


@final
@attrs.frozen
class MemberRow:
    id: str
    pid: int
    pid_namespace: str | None
    uid: int
    user: str
    command: str
    #: Wall-clock time it joined.
    joined: float
    #: Its pool's ``max_parallel`` (``None``: no cap).
    max_parallel: int | None


@final
@attrs.frozen
class GPURow:
    """A GPU as the last member to take a snapshot saw it."""

    uuid: str
    index: int
    name: str
    memory_total_mb: int
    memory_used_mb: int
    utilization_pct: float | None
    healthy: bool
    health_detail: str | None
    #: (pid, used MB or None, session id or None) of each process on it.
    processes: tuple[tuple[int, int | None, int | None], ...]
    #: Wall-clock time of the snapshot.
    reported: float


@final
@attrs.frozen
class HoldRow:
    """One allocation, machine-wide."""

    id: int
    member: str
    #: The waiter's ticket, for a grant made to a waiter (a cancel takes it back).
    ticket: int | None
    gpus: tuple[str, ...]
    memory_mb: int
    exclusive: bool
    priority: int
    expected_duration: float | None
    experiment_id: str | None
    #: Machine monotonic time of the grant (for the backfilling plan).
    granted_at: float
    #: Wall-clock time of the grant (for people).
    since: float
    #: (pid, start time or None) of each job process registered for it.
    jobs: tuple[tuple[int, int | None], ...]
    kind: str
    until: float | None
    #: Its member died while jobs of it still ran.
    orphaned: bool
    #: The system's estimate of how long it is held (``Resources.estimated_duration``).
    estimated_duration: float | None = attrs.field(default=None, kw_only=True)


@final
@attrs.frozen
class WaiterRow:
    """One request in the machine-wide queue, or decided and not yet collected."""

    ticket: int
    member: str
    required_gpus: int
    min_memory_mb: int
    exclusive: bool
    priority: int
    #: The GPUs it may take (its member's GPUs, within its ``allowed_gpus``).
    gpus: tuple[str, ...]
    expected_duration: float | None
    experiment_id: str | None
    submitted_at: float
    since: float
    #: BackfillPolicy's promise, once it reached the front.
    front_at: float | None
    front_last: int | None
    reserved_start: float | None
    #: "waiting", "granted" (``hold`` is its allocation) or "failed" (``error``).
    state: str
    hold: int | None
    error: str | None
    #: The system's estimate of how long it will hold its GPUs once granted.
    estimated_duration: float | None = attrs.field(default=None, kw_only=True)


@final
@attrs.frozen
class SettleRow:
    """A released GPU waiting for the released job's processes to leave it."""

    uuid: str
    #: The member that released it: only its snapshots can end the settle early.
    member: str
    pids: frozenset[int]
    epoch: int
    deadline: float


@final
@attrs.define
class LedgerState:
    """Everything in the ledger, read in one transaction."""

    next_id: int
    generation: str
    rebuild_until: float | None
    members: dict[str, MemberRow]
    gpus: dict[str, GPURow]
    marks: dict[tuple[str, str], str]
    holds: dict[int, HoldRow]
    waiters: dict[int, WaiterRow]
    settles: dict[str, SettleRow]
    #: Each table's version as read (``meta`` key ``v:<table>``): every transaction
    #: that rewrites a table adds one, so a process that kept the table as it last
    #: saw it knows when it is still the same without reading it (see :func:`load`).
    versions: dict[str, int] = attrs.Factory(dict)
    #: The file's format (``meta`` key ``schema``): below :data:`SCHEMA_VERSION`, it
    #: lacks the tables of the later formats (and their content reads as absent).
    schema: int = SCHEMA_VERSION

    def take_id(self) -> int:
        value = self.next_id
        self.next_id += 1
        return value


def _estimate(value: object) -> float | None:
    """An ``estimates.seconds`` value: positive and finite, as the request's field is."""
    if value is None:
        return None
    seconds = float(value)  # type: ignore[arg-type]  # a TypeError is Damaged too
    if not 0 < seconds < math.inf:
        raise ValueError(f"an estimated duration must be positive and finite, got {value!r}")
    return seconds


def _json(text: object) -> Any:
    if not isinstance(text, str):
        raise Damaged(f"expected JSON text, found {text!r}")
    return json.loads(text)


def _member(row: Sequence[Any]) -> MemberRow:
    return MemberRow(
        str(row[0]),
        int(row[1]),
        row[2],
        int(row[3]),
        str(row[4]),
        str(row[5]),
        float(row[6]),
        None if row[7] is None else int(row[7]),
    )


def _gpu(row: Sequence[Any]) -> GPURow:
    processes = tuple(
        (int(p[0]), None if p[1] is None else int(p[1]), None if p[2] is None else int(p[2]))
        for p in _json(row[8])
    )
    return GPURow(
        str(row[0]),
        int(row[1]),
        str(row[2]),
        int(row[3]),
        int(row[4]),
        None if row[5] is None else float(row[5]),
        bool(row[6]),
        row[7],
        processes,
        float(row[9]),
    )


def _hold(row: Sequence[Any]) -> HoldRow:
    jobs = tuple((int(j[0]), None if j[1] is None else int(j[1])) for j in _json(row[11]))
    return HoldRow(
        int(row[0]),
        str(row[1]),
        None if row[2] is None else int(row[2]),
        tuple(str(u) for u in _json(row[3])),
        int(row[4]),
        bool(row[5]),
        int(row[6]),
        None if row[7] is None else float(row[7]),
        row[8],
        float(row[9]),
        float(row[10]),
        jobs,
        str(row[12]),
        None if row[13] is None else float(row[13]),
        bool(row[14]),
        estimated_duration=_estimate(row[15]),
    )


def _waiter(row: Sequence[Any]) -> WaiterRow:
    return WaiterRow(
        int(row[0]),
        str(row[1]),
        int(row[2]),
        int(row[3]),
        bool(row[4]),
        int(row[5]),
        tuple(str(u) for u in _json(row[6])),
        None if row[7] is None else float(row[7]),
        row[8],
        float(row[9]),
        float(row[10]),
        None if row[11] is None else float(row[11]),
        None if row[12] is None else int(row[12]),
        None if row[13] is None else float(row[13]),
        str(row[14]),
        None if row[15] is None else int(row[15]),
        row[16],
        estimated_duration=_estimate(row[17]),
    )


def _settle(row: Sequence[Any]) -> SettleRow:
    pids = frozenset(int(p) for p in _json(row[2]))
    return SettleRow(str(row[0]), str(row[1]), pids, int(row[3]), float(row[4]))


#: Decoded rows by their raw tuple, per table: most rows a transaction reads are the
#: ones the last transaction read (a GPU's row changes with its snapshot, a hold's
#: once). Decoding only the rows not seen before took the read of a busy ledger
#: (8 members, 4 GPUs, 4 holds, 4 waiters) from 98 us to 46 us.
_decoded: dict[str, dict[tuple[Any, ...], Any]] = {}
#: Rows kept per table before that table's cache starts afresh (memory stays bounded).
_DECODED_MAX = 2048

R = TypeVar("R")


#: How each format's holds and waiters are read: the format 1 columns, then the
#: estimate (NULL where the file has no ``estimates`` table).
_HOLDS = {
    1: "SELECT *, NULL FROM holds ORDER BY id",
    2: "SELECT holds.*, coalesce(own.seconds, asked.seconds) FROM holds"
    " LEFT JOIN estimates AS own ON own.id = holds.id"
    " LEFT JOIN estimates AS asked ON asked.id = holds.ticket ORDER BY holds.id",
}
_WAITERS = {
    1: "SELECT *, NULL FROM waiters ORDER BY ticket",
    2: "SELECT waiters.*, estimates.seconds FROM waiters"
    " LEFT JOIN estimates ON estimates.id = waiters.ticket ORDER BY waiters.ticket",
}


def _rows(
    conn: sqlite3.Connection,
    table: str,
    decode: Callable[[Sequence[Any]], R],
    query: str | None = None,
) -> list[R]:
    cache: dict[tuple[Any, ...], R] = _decoded.setdefault(table, {})
    found = []
    for raw in conn.execute(query or f"SELECT * FROM {table}"):
        row = cache.get(raw)
        if row is None:
            if len(cache) >= _DECODED_MAX:
                cache.clear()
            row = cache[raw] = decode(raw)
        found.append(row)
    return found


def load(conn: sqlite3.Connection, previous: LedgerState | None = None) -> LedgerState:
    """Read the ledger; :class:`Damaged` if anything in it does not decode.

    ``previous`` is the state as this process last committed it: a table
    whose version is still the one in it is copied from it instead of read,
    and ``previous`` itself is returned when nothing changed at all. Reading
    only the tables that changed took the read of a busy ledger (8 members,
    4 GPUs, 4 holds, 4 waiters) from 46 us to 25 us when its holds and
    waiters changed, and to 6 us when nothing did.
    """
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        schema = _schema(meta)
        versions = {t: int(meta[f"v:{t}"]) for t in TABLES if f"v:{t}" in meta}
        next_id = int(meta["next_id"])
        generation = str(meta["generation"])
        raw_until = meta.get("rebuild_until")
        rebuild_until = None if raw_until is None else float(raw_until)
        if previous is not None and previous.generation != generation:
            previous = None
        if (
            previous is not None
            and len(versions) == len(TABLES)
            and previous.versions == versions
            and (previous.next_id, previous.rebuild_until) == (next_id, rebuild_until)
            and previous.schema == schema
        ):
            return previous
        if previous is not None and previous.schema != schema:
            previous = None

        def table(name: str, read: Callable[[], dict[Any, Any]], *also: str) -> Any:
            # Holds and waiters carry their estimates: either table changing rereads them.
            if previous is not None and all(
                t in versions and previous.versions.get(t) == versions[t] for t in (name, *also)
            ):
                return dict(getattr(previous, name))
            return read()

        state = LedgerState(
            next_id=next_id,
            generation=generation,
            rebuild_until=rebuild_until,
            members=table("members", lambda: {m.id: m for m in _rows(conn, "members", _member)}),
            gpus=table("gpus", lambda: {g.uuid: g for g in _rows(conn, "gpus", _gpu)}),
            marks=table(
                "marks",
                lambda: {
                    (str(u), str(m)): str(d)
                    for u, m, d in conn.execute("SELECT uuid, member, detail FROM marks")
                },
            ),
            holds=table(
                "holds",
                lambda: {
                    h.id: h
                    for h in _rows(conn, "holds", _hold, _HOLDS[min(schema, SCHEMA_VERSION)])
                },
                "estimates",
            ),
            waiters=table(
                "waiters",
                lambda: {
                    w.ticket: w
                    for w in _rows(conn, "waiters", _waiter, _WAITERS[min(schema, SCHEMA_VERSION)])
                },
                "estimates",
            ),
            settles=table("settles", lambda: {s.uuid: s for s in _rows(conn, "settles", _settle)}),
            versions=versions,
            schema=schema,
        )
    except (KeyError, ValueError, TypeError, IndexError) as error:
        raise Damaged(f"unreadable ledger content: {error!r}") from None
    return state


def _schema(meta: dict[Any, Any]) -> int:
    """The file's format, from ``meta``; :class:`TooNew` if this gpupool may not share it."""
    schema = int(meta.get("schema", 1))
    needed = int(meta.get("min_schema", 1))
    if needed > SCHEMA_VERSION:
        raise TooNew(
            f"is in format {schema}, which a gpupool must know format {needed} or later to "
            f"share; this gpupool knows formats up to {SCHEMA_VERSION}"
        )
    if schema < 1:
        raise ValueError(f"schema {schema!r}")
    return schema


def upgrade(conn: sqlite3.Connection, schema: int) -> None:
    """Take a ledger of format ``schema`` to :data:`SCHEMA_VERSION`, in the caller's
    transaction (under the ledger's lock). Idempotent: every statement may meet
    what it makes already, and ``min_schema`` is never lowered."""
    for statements in MIGRATIONS[schema - 1 :]:
        for statement in statements:
            conn.execute(statement)
    conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
    conn.execute(
        "INSERT OR REPLACE INTO meta VALUES ('min_schema', max(?, coalesce("
        "(SELECT value FROM meta WHERE key = 'min_schema'), 0)))",
        (MIN_SCHEMA,),
    )
    conn.executemany(
        "INSERT OR IGNORE INTO meta VALUES (?, 0)", [(f"v:{table}",) for table in TABLES]
    )


def estimates(state: LedgerState) -> dict[int, float]:
    """The ``estimates`` table's content for ``state``: by hold id and by waiter ticket."""
    found = {
        h.id: h.estimated_duration for h in state.holds.values() if h.estimated_duration is not None
    }
    for w in state.waiters.values():
        if w.estimated_duration is not None:
            found[w.ticket] = w.estimated_duration
    return found


def copy(state: LedgerState) -> LedgerState:
    """A copy whose tables can change without changing ``state`` (the rows are frozen)."""
    return attrs.evolve(
        state,
        members=dict(state.members),
        gpus=dict(state.gpus),
        marks=dict(state.marks),
        holds=dict(state.holds),
        waiters=dict(state.waiters),
        settles=dict(state.settles),
        versions=dict(state.versions),
    )


def save(conn: sqlite3.Connection, state: LedgerState, before: LedgerState | None = None) -> bool:
    """Write ``state`` back: each table that differs from ``before`` (all of them
    without it) is rewritten in full, and its version goes up by one; the tables
    are small, so that is the simple way. Returns whether anything was written."""
    written = False

    def changed(table: str, differs: bool | None = None) -> bool:
        nonlocal written
        if differs is None:
            differs = before is None or getattr(before, table) != getattr(state, table)
        if differs:
            conn.execute(f"DELETE FROM {table}")
            written = True
            state.versions[table] = version = state.versions.get(table, 0) + 1
            conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (f"v:{table}", version))
            return True
        return False

    if before is None or before.next_id != state.next_id:
        written = True
        conn.execute("UPDATE meta SET value = ? WHERE key = 'next_id'", (state.next_id,))
    if before is None or before.rebuild_until != state.rebuild_until:
        written = True
        conn.execute(
            "UPDATE meta SET value = ? WHERE key = 'rebuild_until'", (state.rebuild_until,)
        )
    if changed("members"):
        conn.executemany(
            "INSERT INTO members VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [attrs.astuple(m) for m in state.members.values()],
        )
    if changed("gpus"):
        conn.executemany(
            "INSERT INTO gpus VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    g.uuid,
                    g.index,
                    g.name,
                    g.memory_total_mb,
                    g.memory_used_mb,
                    g.utilization_pct,
                    g.healthy,
                    g.health_detail,
                    json.dumps(g.processes),
                    g.reported,
                )
                for g in state.gpus.values()
            ],
        )
    if changed("marks"):
        conn.executemany(
            "INSERT INTO marks VALUES (?, ?, ?)", [(u, m, d) for (u, m), d in state.marks.items()]
        )
    if changed("holds"):
        conn.executemany(
            "INSERT INTO holds VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    h.id,
                    h.member,
                    h.ticket,
                    json.dumps(h.gpus),
                    h.memory_mb,
                    h.exclusive,
                    h.priority,
                    h.expected_duration,
                    h.experiment_id,
                    h.granted_at,
                    h.since,
                    json.dumps(h.jobs),
                    h.kind,
                    h.until,
                    h.orphaned,
                )
                for h in state.holds.values()
            ],
        )
    if changed("waiters"):
        conn.executemany(
            "INSERT INTO waiters VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    w.ticket,
                    w.member,
                    w.required_gpus,
                    w.min_memory_mb,
                    w.exclusive,
                    w.priority,
                    json.dumps(w.gpus),
                    w.expected_duration,
                    w.experiment_id,
                    w.submitted_at,
                    w.since,
                    w.front_at,
                    w.front_last,
                    w.reserved_start,
                    w.state,
                    w.hold,
                    w.error,
                )
                for w in state.waiters.values()
            ],
        )
    if changed("settles"):
        conn.executemany(
            "INSERT INTO settles VALUES (?, ?, ?, ?, ?)",
            [
                (s.uuid, s.member, json.dumps(sorted(s.pids)), s.epoch, s.deadline)
                for s in state.settles.values()
            ],
        )
    # Derived from the holds and waiters, so unchanged while they are. A file still in
    # format 1 has no table for them (the store upgrades it before any change).
    if state.schema >= 2 and (
        before is None or before.holds != state.holds or before.waiters != state.waiters
    ):
        found = estimates(state)
        if changed("estimates", before is None or estimates(before) != found):
            conn.executemany("INSERT INTO estimates VALUES (?, ?)", list(found.items()))
    return written
