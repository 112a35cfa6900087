"""The ledger file: one SQLite database, one lock, and what happens when either is damaged.

Mutual exclusion is an ``flock`` on ``ledger.lock`` (``lock.py``), not
SQLite's own locking: the kernel drops it when its holder dies (a process
killed mid-transaction blocks nobody), and its waits are short, where
SQLite's busy handler sleeps in steps of up to 100 ms. Inside the lock, a transaction
is ``BEGIN IMMEDIATE`` ... ``COMMIT`` in WAL mode, so a process killed
mid-transaction leaves the last committed state (SQLite's journal does
that), and readers (``gpupool status``) never block the writers.
``synchronous=OFF``: the state means nothing after a crash of the machine
(every holder is gone then), so nothing is flushed to disk.

Nothing in the file is trusted blindly. A file that is not a database, has
lost its tables, or holds rows gpupool would not write (:class:`Damaged`)
is moved aside and a fresh ledger made; each live member writes its own
holdings and waiters back (``on_rebuilt``), and until every live member has
done so (or :data:`REBUILD_GRACE` has passed) nothing is granted, so that
a holder not yet back in the ledger cannot have its GPUs given away. A
file replaced or deleted under a running pool is noticed by its inode and
treated the same way. A ledger in an older format (``rows.py``, "Formats")
is upgraded in place by the first transaction that meets it; one that needs
a newer gpupool is refused (:class:`~gpupool.LedgerError`) and left alone,
never taken for damage.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar, final

from .._core.errors import LedgerError
from .._system import procfs
from . import rows, wakeup
from .lock import LedgerLock
from .members import live_members

__all__ = ["LOCK_TIMEOUT", "REBUILD_GRACE", "LedgerStore"]

logger = logging.getLogger("gpupool")

T = TypeVar("T")

#: How long a transaction waits for the ledger's lock before it gives up.
LOCK_TIMEOUT = 10.0
#: After a rebuild, how long grants wait for the live members to write themselves back.
REBUILD_GRACE = 2.0

DB_NAME = "ledger.db"
LOCK_NAME = "ledger.lock"


@final
class LedgerStore:
    """The ledger database of one directory, as one process uses it."""

    def __init__(self, directory: Path, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.directory = directory
        self.path = directory / DB_NAME
        self._clock = clock
        self._conn: sqlite3.Connection | None = None
        self._inode: tuple[int, int] | None = None
        self._lock = LedgerLock(directory / LOCK_NAME, LOCK_TIMEOUT)
        #: Called inside the transaction that made a fresh ledger, or that found one
        #: made by someone else: the member writes itself back into ``state``.
        self.on_rebuilt: Callable[[rows.LedgerState], None] | None = None
        self.generation: str | None = None
        #: This process's member id: a ledger without its row is written into again.
        self.member: str | None = None
        # The state as this process last committed it: the next transaction reads only
        # the tables others have changed since (rows.load), and while nobody has, it
        # starts from this very object (what keeps an uncontended acquire cheap).
        self._cached: rows.LedgerState | None = None

    # ------------------------------------------------------------ transactions

    def write(self, change: Callable[[rows.LedgerState], T]) -> T:
        """Run ``change`` on the ledger's state under the lock and save what it changed.

        ``change`` gets the state read in this transaction and changes it in
        place; it may run twice (again after the ledger was found damaged and
        rebuilt), so it must not have effects outside the state.
        """
        self._lock.acquire()
        try:
            for attempt in (1, 2):
                try:
                    return self._write_once(change)
                except rows.TooNew as error:
                    raise self._too_new(error) from None
                except (sqlite3.DatabaseError, rows.Damaged) as error:
                    if isinstance(error, sqlite3.OperationalError) and _is_io_error(error):
                        raise LedgerError(
                            f"the ledger at {self.path} cannot be written: {error}"
                        ) from None
                    if attempt == 2:
                        raise LedgerError(
                            f"the ledger at {self.path} is damaged and could not be rebuilt: {error}"
                        ) from None
                    self._rebuild(error)
            raise AssertionError("unreachable")
        finally:
            self._lock.release()

    def read(self) -> rows.LedgerState:
        """The ledger's state, read without the lock (WAL: a consistent snapshot)."""
        try:
            conn = self._connection()
            with _read_transaction(conn):
                state = rows.load(conn, self._cached)
            # The cached state is the next transaction's to change, not the caller's.
            return rows.copy(state) if state is self._cached else state
        except rows.TooNew as error:
            raise self._too_new(error) from None
        except (sqlite3.DatabaseError, rows.Damaged):
            # Repaired under the lock; the write returns the state it saw.
            return self.write(lambda state: rows.copy(state))

    def _write_once(self, change: Callable[[rows.LedgerState], T]) -> T:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            cached, self._cached = self._cached, None
            state = rows.load(conn, cached)
            if state.schema < rows.SCHEMA_VERSION:
                # Made (or rebuilt) by an older gpupool, which may still use it: the
                # upgrade only adds what that gpupool never reads (rows.py, "Formats").
                rows.upgrade(conn, state.schema)
                state = rows.load(conn)
            if state.generation != self.generation or (
                self.member is not None and self.member not in state.members
            ):
                # A ledger made since this process last looked (a rebuild, or the file was
                # replaced): write this member back before anything is decided in it.
                self.generation = state.generation
                if self.on_rebuilt is not None:
                    self.on_rebuilt(state)
                    rows.save(conn, state)
            before = rows.copy(state)
            result = change(state)
            rows.save(conn, state, before)
            conn.execute("COMMIT")
            self._cached = state
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        return result

    # ------------------------------------------------------------ the file

    def _connection(self) -> sqlite3.Connection:
        """The open connection, reopened if the file was replaced or deleted under it."""
        try:
            stat = os.stat(self.path)
            inode: tuple[int, int] | None = (stat.st_dev, stat.st_ino)
        except FileNotFoundError:
            inode = None
        if self._conn is not None and inode == self._inode:
            return self._conn
        self.close_connection()
        if inode is None:
            if not self._lock.held:
                raise rows.Damaged("the ledger file is missing")  # made under the lock
            if any(os.path.lexists(f"{self.path}{suffix}") for suffix in ("-wal", "-shm")):
                # Deleted while pools use it (SQLite's files outlive an `rm`): damage,
                # rebuilt (and reported) like any other.
                raise rows.Damaged("the ledger file was deleted while in use")
            if self._create():
                # Every file removed under running pools (a cleaner, a user): members
                # that hold GPUs may be idle, with no transaction to come that would find
                # the new file; woken, they write themselves back (see _rebuild).
                logger.warning(
                    "gpupool: the ledger file %s was deleted while pools used it; started a "
                    "fresh one, which the live pools fill in again with what they hold",
                    self.path,
                )
                wakeup.wake_all(self.directory)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA busy_timeout = 5000")
            conn.execute("PRAGMA synchronous = OFF")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()
            if mode is None or str(mode[0]).lower() != "wal":
                raise rows.Damaged(f"journal_mode is {mode}")
        except BaseException:
            conn.close()
            raise
        stat = os.stat(self.path)
        self._conn, self._inode = conn, (stat.st_dev, stat.st_ino)
        return conn

    def _create(self) -> bool:
        """Make a fresh ledger file (under the lock), readable and writable by every user.

        Returns whether other live members exist (then it replaces a lost ledger).
        """
        draft = self.directory / f".{DB_NAME}.{secrets.token_hex(4)}"
        fd = os.open(draft, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        os.fchmod(fd, 0o666)  # whatever the umask: every user's pools share it
        os.close(fd)
        try:
            conn = sqlite3.connect(draft, isolation_level=None)
            try:
                conn.execute("PRAGMA journal_mode = DELETE")
                conn.executescript(rows.SCHEMA)
                now = self._clock()
                others = live_members(self.directory) - {self.member}
                conn.executemany(
                    "INSERT INTO meta VALUES (?, ?)",
                    [
                        ("schema", rows.SCHEMA_VERSION),
                        ("min_schema", rows.MIN_SCHEMA),
                        ("boot_id", procfs.boot_id()),
                        ("generation", secrets.token_hex(8)),
                        ("next_id", 1),
                        *((f"v:{table}", 0) for table in rows.TABLES),
                        # Live members (a rebuild, not a first start) write themselves back
                        # first; nothing is granted until they have, or the grace is over.
                        ("rebuild_until", now + REBUILD_GRACE if others else None),
                    ],
                )
            finally:
                conn.close()
            os.replace(draft, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(draft)
            raise
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(OSError):
                os.unlink(f"{self.path}{suffix}")
        return bool(others)

    def _rebuild(self, error: BaseException) -> None:
        """Move the damaged file aside and start a fresh ledger (under the lock)."""
        self.close_connection()
        aside = self.directory / f"{DB_NAME}.damaged"
        try:
            os.replace(self.path, aside)
            kept = f" (the damaged file is kept as {aside})"
        except OSError:
            kept = ""  # deleted, not damaged in place
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(OSError):
                os.unlink(f"{self.path}{suffix}")
        self._create()
        logger.warning(
            "gpupool: the ledger at %s was damaged (%s); started a fresh one, which the live "
            "pools fill in again with what they hold%s",
            self.path,
            error,
            kept,
        )
        wakeup.wake_all(self.directory)

    def _too_new(self, error: rows.TooNew) -> LedgerError:
        return LedgerError(
            f"the ledger at {self.path} was made by a newer gpupool: it {error}. Upgrade "
            "gpupool, or give this program a ledger of its own (ledger=DIR, or the "
            "GPUPOOL_LEDGER environment variable), which keeps it apart from the newer one"
        )

    def check_boot(self) -> None:
        """Start afresh if the ledger was written before the machine last booted."""
        self._lock.acquire()
        try:
            conn = self._connection()
            row = conn.execute("SELECT value FROM meta WHERE key = 'boot_id'").fetchone()
            boot = procfs.boot_id()
            if row is not None and boot is not None and row[0] != boot:
                self._rebuild(RuntimeError("written before the last reboot"))
        except (sqlite3.DatabaseError, rows.Damaged) as error:
            self._rebuild(error)
        finally:
            self._lock.release()

    def close_connection(self) -> None:
        self._cached = None
        conn, self._conn = self._conn, None
        self._inode = None
        if conn is not None:
            conn.close()

    def close(self) -> None:
        """Close the database and the lock file."""
        self.close_connection()
        self._lock.close()


def _is_io_error(error: sqlite3.OperationalError) -> bool:
    """A full disk or a read-only file: the ledger is fine, the machine is not."""
    text = str(error).lower()
    return any(m in text for m in ("disk is full", "readonly", "read-only", "disk i/o"))


@contextlib.contextmanager
def _read_transaction(conn: sqlite3.Connection):  # type: ignore[no-untyped-def]
    conn.execute("BEGIN")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
