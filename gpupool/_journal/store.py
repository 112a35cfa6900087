"""The task journal: durable task states in one SQLite (WAL) file.

Design notes (the invariants the rest of gpupool relies on):

* **Commit, then act.** Every method that changes a task commits before it
  returns, and the runner calls it before it acts on the change (before it
  starts the function, before it returns a result). So after a crash the
  journal never claims less progress than happened; at worst a task that was
  RUNNING ran partly and runs again (at-least-once for interrupted tasks,
  exactly-once for finished ones).
* **Inline, not on a thread.** A commit here is one small transaction on a
  local file: 0.06 to 0.2 ms with ``synchronous=NORMAL`` on the CI machine,
  and the same commit behind a worker-thread hop measured 2 to 4 times
  slower (``benchmarks/bench_journal.py``). Calls are therefore synchronous
  and made inline, even from the event loop; they cannot be interrupted by
  cancellation half-way, which is what "commit, then act" needs.
  ``synchronous="full"`` adds an fsync per change (milliseconds): choose it
  for tasks that run minutes, where it does not matter. Opening and closing
  can wait for seconds (SQLite's lock, the WAL switch, a dead owner's jobs),
  so the runner calls them on a worker thread.
* **A failed commit changes nothing.** What this object keeps in memory (the
  keys in flight) changes only once the COMMIT went through, so after a
  failed write (a full disk) memory and file agree, and the runner stops
  rather than record more (``docs/journal.md``).
* **One owner.** The owner's identity (pid, process start time, boot id,
  host) is stored in the file. Opening a journal whose owner is alive raises
  `JournalInUse`; an owner that died is taken over: its queued and running
  tasks are queued again and the process groups of its subprocess jobs are
  handed to the new owner to kill (`kill_leftovers`).
* **No fork sharing.** SQLite connections must not cross ``fork()``. A
  journal remembers the pid that opened it; in a forked child every method
  raises, and the child never closes the inherited connection (closing could
  run a checkpoint against the parent's WAL).
* **Thread-safe.** A lock serialises all calls, so worker threads (plain task
  functions, ``run_process`` from a thread) may record process groups.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Literal, final

import attrs

from .._core.checks import check_bool, check_choice, check_int
from .._core.errors import JournalEncodingError, JournalError, JournalInUse
from .._core.growth import LearnedMemory
from .._core.results import TaskResult, TaskStatus
from .._system import procfs
from .._system.groups import LeftoverProcessGroup, kill_process_groups
from .codec import canonical_json, check_key
from .owner import ProcessIdentity, current_identity, is_alive
from .schema import (
    SCHEMA_VERSION,
    TaskRecord,
    check_header,
    check_schema,
    count_statuses,
    create_schema,
    decode_learned,
    encode_learned,
    read_record,
    read_records,
    upgrade,
)

__all__ = [
    "Journal",
    "Takeover",
    "storable",
]

Synchronous = Literal["normal", "full"]
_SYNCHRONOUS_LEVEL = {"normal": 1, "full": 2}
_BUSY_TIMEOUT_MS = 5000
# SQLite's primary result codes for "another connection holds a lock".
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6
_NOT_DONE = tuple(s.value for s in TaskStatus if not s.is_final or s is TaskStatus.CANCELLED)

# Journals open in this process, by file identity: a second Journal on the same
# file in the same process would double-run tasks just as a second process would.
_open_journals: dict[tuple[int, int], weakref.ref[Journal]] = {}
_registry_lock = threading.Lock()
# Connections inherited through fork() are parked here so they are never closed
# (and never checkpoint) in the child.
_forked_connections: list[sqlite3.Connection] = []


def _after_fork_in_child() -> None:
    for ref in list(_open_journals.values()):
        journal = ref()
        if journal is not None and journal._conn is not None:
            _forked_connections.append(journal._conn)
    _open_journals.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


@attrs.frozen
class Takeover:
    """What a journal's new owner found left behind by a dead one."""

    previous_owner: ProcessIdentity
    #: Tasks that were running when the owner died (they run again).
    interrupted: tuple[str, ...]
    #: Tasks that were queued or waiting (they run again too).
    requeued: tuple[str, ...]


@final
class Journal:
    """A durable record of task states, owned by one runner at a time.

    ``Journal(path)`` opens (creating if needed) and takes ownership;
    ``close()`` (or leaving the ``with`` block) gives it up. See
    ``docs/journal.md`` for what is promised after a crash or a power loss.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: Synchronous = "normal",
        retry_failed: bool = False,
    ):
        if not isinstance(path, (str, os.PathLike)) or not isinstance(os.fspath(path), str):
            raise TypeError(f"journal path must be a str or os.PathLike, got {path!r}")
        if not os.fspath(path) or "\0" in os.fspath(path):
            # SQLite would open "" as a private temporary database, which is no journal.
            raise ValueError(
                f"journal path must name a file (non-empty, no NUL byte), got {path!r}"
            )
        check_choice("synchronous", synchronous, _SYNCHRONOUS_LEVEL)
        check_bool("retry_failed", retry_failed, allowed="a bool")
        self.path = os.fspath(path)
        self.synchronous: Synchronous = synchronous
        #: Whether `claim` runs failed and timed-out tasks again by default.
        self.retry_failed = retry_failed
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._pid = os.getpid()
        self._identity = current_identity()
        self._active: set[str] = set()
        self._file_id: tuple[int, int] | None = None
        self.takeover: Takeover | None = None
        self._leftovers: tuple[LeftoverProcessGroup, ...] = ()
        self._open()

    # -- opening and ownership ------------------------------------------------

    def _open(self) -> None:
        path = self.path
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise JournalError(
                f"cannot open journal {path!r}: directory {directory!r} does not exist"
            )
        check_header(path)
        existed = os.path.exists(path)
        try:
            conn = sqlite3.connect(
                path, timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise JournalError(f"cannot open journal {path!r}: {_explain(exc, path)}") from None
        try:
            self._configure(conn)
            self._claim_ownership(conn)
        except BaseException as exc:
            # Remove what this open created, so a failed first open leaves
            # nothing half-written; never a database that holds anything (a
            # concurrent opener may have created it meanwhile).
            remove = not existed and _holds_nothing(conn)
            conn.close()
            if remove:
                _remove_new_file(path)
            if isinstance(exc, sqlite3.Error):
                raise JournalError(f"cannot open journal {path!r}: {_explain(exc, path)}") from None
            raise
        self._conn = conn

    def _configure(self, conn: sqlite3.Connection) -> None:
        """Set and verify the pragmas; run on every connection this opens."""
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        mode = _switch_to_wal(conn)
        if str(mode).lower() != "wal":
            raise JournalError(
                f"journal {self.path!r} could not be put in WAL mode (SQLite kept {mode!r}); "
                "put the journal on a local file system"
            )
        level = _SYNCHRONOUS_LEVEL[self.synchronous]
        conn.execute(f"PRAGMA synchronous = {level}")
        got = conn.execute("PRAGMA synchronous").fetchone()[0]
        if got != level:
            raise JournalError(
                f"journal {self.path!r}: PRAGMA synchronous is {got}, wanted {level}"
            )
        conn.execute("PRAGMA foreign_keys = ON")

    def _claim_ownership(self, conn: sqlite3.Connection) -> None:
        st = os.stat(self.path)
        file_id = (st.st_dev, st.st_ino)
        with _registry_lock:
            ref = _open_journals.get(file_id)
            if ref is not None and ref() is not None:
                raise JournalInUse(
                    f"journal {self.path!r} is already open in this process (another "
                    "runner uses it); close it first or use another file"
                )
            conn.execute("BEGIN IMMEDIATE")
            try:
                version = check_schema(conn, self.path)
                if not version:
                    _create_schema(conn)
                elif version < SCHEMA_VERSION:
                    upgrade(conn, version)  # in this transaction: all of it or none
                self._take_owner_slot(conn)
                self._requeue_unfinished(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            _open_journals[file_id] = weakref.ref(self)
            self._file_id = file_id

    def _take_owner_slot(self, conn: sqlite3.Connection) -> None:
        row = conn.execute(
            "SELECT pid, start_time, boot_id, hostname FROM gpupool_owner WHERE slot = 1"
        ).fetchone()
        if row is not None:
            owner = ProcessIdentity(*row)
            # Our own identity with no open Journal in the registry: an earlier
            # Journal object of this process was dropped without close().
            alive = False if owner == self._identity else is_alive(owner)
            if alive is None:
                raise JournalInUse(
                    f"journal {self.path!r} is owned by {owner.describe()}, which this host "
                    "cannot check; if that process is gone, run "
                    f"`gpupool journal unlock {self.path}`"
                )
            if alive:
                raise JournalInUse(
                    f"journal {self.path!r} is in use by {owner.describe()}; wait for that "
                    "run to finish or stop it (one runner per journal)"
                )
            self.takeover = Takeover(owner, (), ())
        me = self._identity
        conn.execute(
            "INSERT OR REPLACE INTO gpupool_owner VALUES (1, ?, ?, ?, ?, ?)",
            (me.pid, me.start_time, me.boot_id, me.hostname, time.time()),
        )

    def _requeue_unfinished(self, conn: sqlite3.Connection) -> None:
        """Queue again every task a previous run left unfinished or cancelled."""
        now = time.time()
        previous = self.takeover.previous_owner.describe() if self.takeover else None
        interrupted, requeued = [], []
        rows = conn.execute(
            "SELECT key, status, attempts FROM tasks WHERE status IN "
            f"({','.join('?' * len(_NOT_DONE))})",
            _NOT_DONE,
        ).fetchall()
        for key, status, attempts in rows:
            if status == TaskStatus.RUNNING.value and previous is not None:
                interrupted.append(key)
                note = f"interrupted: {previous} died while it ran"
            elif status == TaskStatus.QUEUED.value:
                continue
            else:
                requeued.append(key)
                note = f"requeued from {status}"
            conn.execute(
                "UPDATE tasks SET status = 'queued', updated_at = ?, "
                "interrupted = interrupted + ? WHERE key = ?",
                (now, int(status == TaskStatus.RUNNING.value and previous is not None), key),
            )
            self._event(conn, key, TaskStatus.QUEUED, attempts, now, note, ())
        groups = conn.execute(
            "SELECT key, pgid, leader_start_time, boot_id FROM process_groups ORDER BY rowid"
        ).fetchall()
        self._leftovers = tuple(LeftoverProcessGroup(*g) for g in groups)
        if self.takeover is not None:
            self.takeover = attrs.evolve(
                self.takeover, interrupted=tuple(interrupted), requeued=tuple(requeued)
            )

    # -- closing --------------------------------------------------------------

    def close(self) -> None:
        """Give up ownership and close the file. Idempotent.

        Tasks still in flight stay recorded as they are; the next owner queues
        them again. The file is closed on every path; when the owner row
        cannot be removed (a full disk) this raises `JournalError` after
        closing, and the row left behind names this process, which the next
        open recognises as gone (it is closed, or dead) and takes over.
        """
        with self._lock:
            if self._conn is None or os.getpid() != self._pid:
                return
            conn, self._conn = self._conn, None
            self._active.clear()
            try:
                conn.execute("DELETE FROM gpupool_owner WHERE slot = 1 AND pid = ?", (self._pid,))
            except sqlite3.Error as exc:
                raise JournalError(
                    f"journal {self.path!r}: could not give up ownership on close ({exc}); "
                    "nothing recorded is lost, and the next open finds this process gone "
                    "and takes the journal over"
                ) from exc
            finally:
                _close_quietly(conn)
                with _registry_lock:
                    if self._file_id is not None:
                        _open_journals.pop(self._file_id, None)

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._conn is None

    def _connection(self) -> sqlite3.Connection:
        if os.getpid() != self._pid:
            raise JournalError(
                f"journal {self.path!r} was opened by process {self._pid} and cannot be used "
                f"in the forked child {os.getpid()}; SQLite connections must not cross fork()"
            )
        if self._conn is None:
            raise JournalError(f"journal {self.path!r} is closed")
        return self._conn

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One committed transaction; SQLite's own errors (disk full, I/O)
        become `JournalError`s naming the journal, and nothing of the
        transaction is kept."""
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise JournalError(f"journal {self.path!r}: {exc}") from exc

    def _event(
        self,
        conn: sqlite3.Connection,
        key: str,
        status: TaskStatus,
        attempt: int,
        now: float,
        note: str | None = None,
        gpu_indices: tuple[int, ...] | None = None,
    ) -> None:
        gpus = None if gpu_indices is None else canonical_json(list(gpu_indices))
        conn.execute(
            "INSERT INTO events (key, status, attempt, at, pid, note, gpu_indices) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (key, status.value, attempt, now, self._pid, note, gpus),
        )

    # -- task states ----------------------------------------------------------

    def claim(
        self, key: str, *, fn: str = "", item: object = None, retry_failed: bool | None = None
    ) -> TaskResult | None:
        """Register task ``key`` before it runs; say whether it must run.

        Returns the recorded result (``from_journal=True``) when the task
        already succeeded (or failed or timed out, unless ``retry_failed``,
        which defaults to the journal's): do not run it. Returns None when it must run; it is then QUEUED and in
        flight until `finish`. A cancelled task always runs again. ``item`` is
        stored for reference when it has a JSON form. Raises `JournalError` if
        ``key`` is already in flight in this journal (the runner submits a key once).
        """
        check_key(key)
        if retry_failed is None:
            retry_failed = self.retry_failed
        try:
            item_json: str | None = canonical_json(item)
        except JournalEncodingError:
            item_json = None
        with self._lock:  # the in-flight check and the add below are one step
            with self._transaction() as conn:
                if key in self._active:
                    raise JournalError(f"task {key!r} is already in flight in this journal")
                record = read_record(conn, key)
                if record is not None and _reusable(record.status, retry_failed):
                    return record.to_result()
                now = time.time()
                conn.execute(
                    "INSERT INTO tasks (key, fn, item, status, created_at, updated_at) "
                    "VALUES (?, ?, ?, 'queued', ?, ?) ON CONFLICT (key) DO UPDATE SET "
                    "status = 'queued', attempts = 0, value = NULL, error = NULL, "
                    "traceback = NULL, duration_s = NULL, finished_at = NULL, "
                    "gpu_indices = '[]', updated_at = excluded.updated_at, "
                    # A task run again is described as it is now (a jobs-file line may have
                    # moved); an item with no JSON form keeps the last description.
                    "fn = excluded.fn, item = COALESCE(excluded.item, item)",
                    (key, fn, item_json, now, now),
                )
                self._event(conn, key, TaskStatus.QUEUED, 0, now, gpu_indices=())
            # Only now that the COMMIT went through: a claim that failed to commit
            # leaves nothing in flight, so nothing of it is ever recorded later.
            self._active.add(key)
        return None

    def record(
        self,
        key: str,
        status: TaskStatus,
        *,
        attempt: int,
        gpu_indices: tuple[int, ...] = (),
        learned: LearnedMemory | None = None,
        note: str | None = None,
    ) -> None:
        """Commit a non-final state change of an in-flight task.

        Entering RUNNING counts a start of the task (``TaskRecord.starts``).
        ``learned`` (with RETRYING after an attempt ran out of GPU memory) is
        the reservation the task's next attempt asks for, kept for the task's
        later starts (:meth:`learned_resources`) in the same commit. ``note``
        goes with the event (with RETRYING: the failed attempt's ``"Type:
        message"``, and what its next attempt asks for after running out of
        GPU memory).
        """
        if not isinstance(status, TaskStatus) or status.is_final:
            raise ValueError(f"record() takes a non-final TaskStatus, got {status!r}; use finish()")
        with self._transaction() as conn:
            self._check_active(key)
            now = time.time()
            conn.execute(
                "UPDATE tasks SET status = ?, attempts = ?, gpu_indices = ?, updated_at = ?, "
                "starts = starts + ? WHERE key = ?",
                (
                    status.value,
                    attempt,
                    canonical_json(list(gpu_indices)),
                    now,
                    int(status is TaskStatus.RUNNING),
                    key,
                ),
            )
            if learned is not None:
                conn.execute(
                    "UPDATE tasks SET learned_resources = ? WHERE key = ?",
                    (encode_learned(learned), key),
                )
            self._event(conn, key, status, attempt, now, note, gpu_indices)

    def finish(self, result: TaskResult) -> TaskResult:
        """Commit the final state of an in-flight task and return its result.

        The value of a successful result is stored as JSON. A value with no
        JSON form turns the result into a FAILED one whose error says so (the
        returned result is the one to hand to the caller).
        """
        if not result.status.is_final:
            raise ValueError(f"finish() takes a final result, got status {result.status!r}")
        result = storable(result)
        value_json: str | None = None
        if result.status is TaskStatus.SUCCEEDED:
            value_json = canonical_json(result.value)
        with self._lock:
            with self._transaction() as conn:
                self._check_active(result.key)
                now = time.time()
                conn.execute(
                    "UPDATE tasks SET status = ?, attempts = ?, gpu_indices = ?, value = ?, "
                    "error = ?, traceback = ?, duration_s = ?, updated_at = ?, finished_at = ? "
                    "WHERE key = ?",
                    (
                        result.status.value,
                        result.attempts,
                        canonical_json(list(result.gpu_indices)),
                        value_json,
                        result.error,
                        result.traceback,
                        result.duration_s,
                        now,
                        now,
                        result.key,
                    ),
                )
                conn.execute("DELETE FROM process_groups WHERE key = ?", (result.key,))
                self._event(
                    conn,
                    result.key,
                    result.status,
                    result.attempts,
                    now,
                    gpu_indices=result.gpu_indices,
                )
            self._active.discard(result.key)  # committed: no longer in flight
        return result

    def learned_resources(self, key: str) -> LearnedMemory | None:
        """The reservation out-of-memory retries moved task ``key`` to, in this
        run or an earlier one; ``None`` if they never did."""
        with self._lock:
            row = (
                self._connection()
                .execute("SELECT learned_resources FROM tasks WHERE key = ?", (key,))
                .fetchone()
            )
        if row is None:
            return None
        try:
            return decode_learned(row[0])
        except (ValueError, TypeError) as exc:
            raise JournalError(
                f"the journal's row for task {key!r} is damaged ({exc}); "
                "restore the journal from a copy, or start a new one"
            ) from None

    def in_flight(self, key: str) -> bool:
        """Whether ``key`` was claimed and has not finished yet."""
        return key in self._active

    def _check_active(self, key: str) -> None:
        if key not in self._active:
            raise JournalError(f"task {key!r} is not in flight in this journal; claim() it first")

    # -- process groups -------------------------------------------------------

    def record_process_group(self, key: str, pgid: int) -> None:
        """Remember that task ``key`` runs a subprocess in process group ``pgid``.

        Call it as soon as the group exists; a runner that takes over after a
        crash kills the recorded groups before granting GPUs again.
        """
        check_int("pgid", pgid, 1)
        with self._transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO process_groups VALUES (?, ?, ?, ?, ?)",
                (key, pgid, procfs.start_time(pgid), self._identity.boot_id, time.time()),
            )

    def forget_process_group(self, key: str, pgid: int) -> None:
        """The group ``pgid`` of task ``key`` is gone (the job was reaped)."""
        with self._transaction() as conn:
            conn.execute("DELETE FROM process_groups WHERE key = ? AND pgid = ?", (key, pgid))

    @property
    def leftover_process_groups(self) -> tuple[LeftoverProcessGroup, ...]:
        """Process groups recorded by a previous owner and not yet killed."""
        return self._leftovers

    def kill_leftovers(self) -> list[int]:
        """SIGKILL the previous owner's leftover process groups; forget them.

        Returns the pgids that still had processes. A runner calls this when it
        starts, before it grants any GPU.
        """
        with self._lock:
            self._connection()
            killed = kill_process_groups(self._leftovers)
            with self._transaction() as conn:
                for group in self._leftovers:
                    conn.execute(
                        "DELETE FROM process_groups WHERE key = ? AND pgid = ?",
                        (group.key, group.pgid),
                    )
            self._leftovers = ()
        return killed

    # -- reading --------------------------------------------------------------

    def get(self, key: str) -> TaskRecord | None:
        with self._lock:
            return read_record(self._connection(), key)

    def records(self) -> list[TaskRecord]:
        """Every task, in the order the tasks were first submitted."""
        with self._lock:
            return list(read_records(self._connection()))

    def keys(self, prefix: str = "") -> list[str]:
        """The keys that start with ``prefix``, in the order first submitted.

        ``runner.optimize`` lists a study's trials with it on resume.
        """
        with self._lock:
            rows = self._connection().execute(
                "SELECT key FROM tasks WHERE substr(key, 1, ?) = ? ORDER BY rowid",
                (len(prefix), prefix),
            )
            return [key for (key,) in rows]

    def counts(self) -> dict[TaskStatus, int]:
        with self._lock:
            return count_statuses(self._connection())


def storable(result: TaskResult) -> TaskResult:
    """``result`` as a journal stores it: a success whose value has no JSON
    form becomes a FAILED result whose error says why (the task's own
    failure, not the runner's). Other results are returned unchanged."""
    if result.status is not TaskStatus.SUCCEEDED:
        return result
    try:
        canonical_json(result.value, what=f"result of task {result.key!r}")
    except JournalEncodingError as exc:
        return attrs.evolve(
            result,
            status=TaskStatus.FAILED,
            value=None,
            error=f"JournalEncodingError: {exc}",
            traceback=None,
            exception=exc,
        )
    return result


def _reusable(status: TaskStatus, retry_failed: bool) -> bool:
    if status is TaskStatus.SUCCEEDED:
        return True
    return status in (TaskStatus.FAILED, TaskStatus.TIMED_OUT) and not retry_failed


def _create_schema(conn: sqlite3.Connection) -> None:
    create_schema(conn)
    conn.execute(
        "INSERT INTO gpupool_meta VALUES ('created_at', ?), ('created_by', ?)",
        (repr(time.time()), _version()),
    )


def _version() -> str:
    try:
        from importlib.metadata import version

        return f"gpupool {version('gpupool')}"
    except Exception:  # not installed (running from a checkout)
        return "gpupool (uninstalled)"


def _explain(exc: sqlite3.Error, path: str) -> str:
    text = str(exc)
    if "readonly" in text or "unable to open" in text:
        directory = os.path.dirname(os.path.abspath(path))
        return (
            f"{text} (the journal file and its directory {directory!r} must be writable: "
            "SQLite creates -wal and -shm files beside it)"
        )
    return text


def _switch_to_wal(conn: sqlite3.Connection) -> object:
    """Put the database in WAL mode and return the mode SQLite reports.

    While another process creates the same new file, SQLite can refuse the
    switch with SQLITE_BUSY at once, without calling the busy handler (the
    switch needs a lock that the other connection is about to upgrade). So
    retry for as long as the busy timeout, as SQLite would for a plain write.
    """
    deadline = time.monotonic() + _BUSY_TIMEOUT_MS / 1000
    pause = 0.001
    while True:
        try:
            return conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    # sqlite_errorcode is new in Python 3.11; 3.10 only has the message.
    code: int | None = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
    return str(exc).startswith(("database is locked", "database table is locked"))


def _close_quietly(conn: sqlite3.Connection) -> None:
    """Close ``conn``; a failure to checkpoint on the way out (a full disk)
    loses nothing, since the next open replays the WAL, so it is not raised."""
    with contextlib.suppress(sqlite3.Error):
        conn.close()


def _holds_nothing(conn: sqlite3.Connection) -> bool:
    try:
        return bool(conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0)
    except sqlite3.Error:
        return False


def _remove_new_file(path: str) -> None:
    """Remove what a failed first open created, so nothing is left half-written."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(OSError):
            os.remove(path + suffix)
