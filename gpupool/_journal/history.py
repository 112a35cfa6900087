"""What a journal knows of how long tasks ran: the history durations are learned from.

``ParallelRunner(history=...)`` reads, once when it starts, how long each
task of an earlier run held its GPUs, and estimates from that the durations
of tasks that give no ``expected_duration`` (``gpupool._core.durations``).
The journal already records it: ``tasks.duration_s``, the runner's clock
from the first attempt's start to the end. A sample is taken from tasks that
SUCCEEDED at their first attempt, where that is one attempt's hold of its
GPUs. A failure says little of how long a success takes, and a retried
task's duration spans backoffs and failed attempts.

Reading needs no ownership: the file is opened read-only (WAL lets a reader
in beside a runner that owns it), so a history may be the journal of a run
still going, or the runner's own.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator

from .._core.errors import JournalError
from .._core.results import TaskStatus
from .schema import check_header, check_schema
from .store import Journal

__all__ = ["read_durations", "read_only"]


@contextlib.contextmanager
def read_only(path: str) -> Iterator[sqlite3.Connection]:
    """A connection that only reads the journal at ``path``, whoever owns it.

    ``JournalError`` if there is no journal there, or the file is not one.
    """
    if not os.path.exists(path):
        raise JournalError(f"no journal at {path!r}")
    check_header(path)
    # Read-write when allowed, so that closing the last connection checkpoints
    # and removes the -wal/-shm files as usual; query_only keeps it a reader.
    # Read-only (a journal copied somewhere unwritable) as the fallback.
    uri = "file:" + os.path.abspath(path).replace("?", "%3f").replace("#", "%23")
    try:
        mode = "rw" if os.access(path, os.W_OK) else "ro"
        conn = sqlite3.connect(f"{uri}?mode={mode}", uri=True)
        conn.execute("PRAGMA query_only = 1")
    except sqlite3.Error as exc:
        raise JournalError(f"cannot read journal {path!r}: {exc}") from None
    try:
        try:
            if not check_schema(conn, path):
                raise JournalError(f"{path!r} is an empty file, not a gpupool journal")
        except sqlite3.Error as exc:
            raise JournalError(f"cannot read journal {path!r}: {exc}") from None
        yield conn
    finally:
        conn.close()


def read_durations(source: str | os.PathLike[str] | Journal) -> dict[str, list[float]]:
    """How long each task of the journal ``source`` ran, by key: ``{key: [seconds]}``.

    Only tasks that succeeded at their first attempt, in the order they
    finished (a journal keeps one row per key, so one sample each; a
    runner given several journals gets several). ``JournalError`` if
    ``source`` is no journal; ``TypeError`` if it is neither a path nor a
    :class:`~gpupool.Journal`.
    """
    if isinstance(source, Journal):
        path = source.path
    elif isinstance(source, (str, os.PathLike)) and isinstance(os.fspath(source), str):
        path = os.fspath(source)
    else:
        raise TypeError(f"a history must be a journal's path or a gpupool.Journal, got {source!r}")
    durations: dict[str, list[float]] = {}
    with read_only(path) as conn:
        try:
            rows = conn.execute(
                "SELECT key, duration_s FROM tasks WHERE status = ? AND attempts = 1 "
                "AND duration_s IS NOT NULL ORDER BY finished_at, rowid",
                (TaskStatus.SUCCEEDED.value,),
            ).fetchall()
        except sqlite3.Error as exc:
            raise JournalError(f"cannot read journal {path!r}: {exc}") from None
    for key, seconds in rows:
        # A damaged page could hold anything; a sample that is no duration is skipped.
        if isinstance(key, str) and isinstance(seconds, (int, float)) and 0 <= seconds < 1e18:
            durations.setdefault(key, []).append(float(seconds))
    return durations
