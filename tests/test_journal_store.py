"""The journal on real SQLite files: states, resume, dedup, ownership, bad input."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpupool import Journal, JournalError, JournalInUse, TaskResult, TaskStatus
from gpupool._journal.owner import current_identity
from gpupool._journal.schema import SCHEMA_VERSION

ROOT = Path(__file__).resolve().parents[1]


def _sql(path: Path) -> contextlib.closing[sqlite3.Connection]:
    """An autocommit connection that is closed (not just committed) on exit."""
    return contextlib.closing(sqlite3.connect(path, isolation_level=None))


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "sweep.sqlite"


@pytest.fixture
def journal(path: Path) -> Iterator[Journal]:
    with Journal(path) as j:
        yield j


def _ok(key: str, value: object = None, attempts: int = 1) -> TaskResult:
    return TaskResult(key, TaskStatus.SUCCEEDED, value=value, attempts=attempts)


def _run(journal: Journal, key: str, value: object = None) -> TaskResult:
    assert journal.claim(key) is None
    journal.record(key, TaskStatus.RUNNING, attempt=1, gpu_indices=(0, 1))
    return journal.finish(_ok(key, value))


def _events(path: Path, key: str) -> list[tuple[str, str | None]]:
    with _sql(path) as conn:
        return conn.execute(
            "SELECT status, note FROM events WHERE key = ? ORDER BY seq", (key,)
        ).fetchall()


def _spawn(code: str, *args: str) -> subprocess.Popen[str]:
    """A Python child that runs ``code`` with the repo importable."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# -- pragmas and format ---------------------------------------------------------


def test_new_journal_is_wal_with_schema_and_verified_pragmas(journal: Journal, path: Path) -> None:
    with _sql(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert journal._conn is not None
    assert journal._conn.execute("PRAGMA synchronous").fetchone()[0] == 1


def test_synchronous_full_is_applied(path: Path) -> None:
    with Journal(path, synchronous="full") as j:
        assert j._conn is not None
        assert j._conn.execute("PRAGMA synchronous").fetchone()[0] == 2


def test_bad_arguments(path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous must be 'normal' or 'full', got 'off'"):
        Journal(path, synchronous="off")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"journal path must be a str or os\.PathLike"):
        Journal(3)  # type: ignore[arg-type]
    assert not path.exists()


# -- task states ----------------------------------------------------------------


def test_claim_record_finish_and_read_back(journal: Journal) -> None:
    assert journal.claim("t1", fn="mod.train", item={"lr": 0.1}) is None
    journal.record("t1", TaskStatus.WAITING_FOR_GPU, attempt=1)
    journal.record("t1", TaskStatus.RUNNING, attempt=1, gpu_indices=(2,))
    result = journal.finish(
        TaskResult("t1", TaskStatus.SUCCEEDED, value={"loss": 0.5}, attempts=1, gpu_indices=(2,))
    )
    assert result.value == {"loss": 0.5}
    assert not result.from_journal
    record = journal.get("t1")
    assert record is not None
    assert (record.fn, record.item, record.status) == ("mod.train", {"lr": 0.1}, result.status)
    assert (record.starts, record.interrupted, record.gpu_indices) == (1, 0, (2,))
    assert record.finished_at is not None
    assert journal.counts()[TaskStatus.SUCCEEDED] == 1
    assert [r.key for r in journal.records()] == ["t1"]


def test_finished_task_is_returned_from_journal_not_rerun(journal: Journal, path: Path) -> None:
    _run(journal, "t1", value=[1, 2])
    again = journal.claim("t1")
    assert again is not None
    assert again.from_journal
    assert (again.status, again.value, again.attempts) == (TaskStatus.SUCCEEDED, [1, 2], 1)
    assert [s for s, _ in _events(path, "t1")] == ["queued", "running", "succeeded"]


def test_failed_task_is_kept_unless_retry_failed(journal: Journal) -> None:
    assert journal.claim("t1") is None
    journal.finish(TaskResult("t1", TaskStatus.FAILED, error="ValueError: x", traceback="tb"))
    kept = journal.claim("t1")
    assert kept is not None
    assert (kept.status, kept.error, kept.traceback) == (TaskStatus.FAILED, "ValueError: x", "tb")
    assert journal.claim("t1", retry_failed=True) is None
    journal.finish(_ok("t1"))
    assert journal.claim("t1", retry_failed=True) is not None


def test_journal_wide_retry_failed(path: Path) -> None:
    with Journal(path) as journal:
        assert journal.claim("t1") is None
        journal.finish(TaskResult("t1", TaskStatus.TIMED_OUT, error="TimeoutError: slow"))
    with Journal(path, retry_failed=True) as journal:
        assert journal.claim("t1") is None
        journal.finish(_ok("t1"))
    with pytest.raises(TypeError, match="retry_failed must be a bool, got 1"):
        Journal(path, retry_failed=1)  # type: ignore[arg-type]


def test_cancelled_task_runs_again(journal: Journal) -> None:
    assert journal.claim("t1") is None
    journal.finish(TaskResult("t1", TaskStatus.CANCELLED))
    assert journal.claim("t1") is None


def test_a_task_claimed_again_is_described_as_it_is_now(journal: Journal) -> None:
    # Regression: a re-claim kept the first item, so a `gpupool run` job whose line
    # moved was still shown at its old line number in the journal.
    assert journal.claim("t1", fn="a", item={"line": 3}) is None
    journal.finish(TaskResult("t1", TaskStatus.CANCELLED))
    assert journal.claim("t1", fn="b", item={"line": 7}) is None
    record = journal.get("t1")
    assert record is not None
    assert (record.fn, record.item) == ("b", {"line": 7})
    journal.finish(TaskResult("t1", TaskStatus.CANCELLED))
    assert journal.claim("t1", fn="b", item=object()) is None  # no JSON form: kept
    record = journal.get("t1")
    assert record is not None
    assert record.item == {"line": 7}


def test_key_in_flight_cannot_be_claimed_twice(journal: Journal) -> None:
    assert journal.claim("t1") is None
    with pytest.raises(JournalError, match="'t1' is already in flight"):
        journal.claim("t1")


def test_record_and_finish_need_a_claim(journal: Journal) -> None:
    with pytest.raises(JournalError, match="not in flight"):
        journal.record("nope", TaskStatus.RUNNING, attempt=1)
    with pytest.raises(JournalError, match="not in flight"):
        journal.finish(_ok("nope"))
    with pytest.raises(ValueError, match="non-final TaskStatus"):
        journal.record("nope", TaskStatus.SUCCEEDED, attempt=1)
    with pytest.raises(ValueError, match="final result"):
        journal.finish(TaskResult("nope", TaskStatus.RUNNING))
    assert journal.records() == []


def test_unencodable_result_is_a_failure_of_that_task(journal: Journal) -> None:
    assert journal.claim("t1") is None
    result = journal.finish(_ok("t1", value={"model": object()}))
    assert result.status is TaskStatus.FAILED
    assert result.error is not None
    assert result.error.startswith("JournalEncodingError: result of task 't1'['model'] is a")
    assert isinstance(result.exception, TypeError)
    assert journal.claim("t1") is not None  # recorded as failed, not half-written
    assert journal.get("t1").status is TaskStatus.FAILED  # type: ignore[union-attr]


def test_unencodable_item_is_stored_as_null(journal: Journal) -> None:
    assert journal.claim("t1", item=object()) is None
    assert journal.get("t1").item is None  # type: ignore[union-attr]


def test_closed_journal_refuses_use(path: Path) -> None:
    j = Journal(path)
    j.close()
    j.close()  # idempotent
    assert j.closed
    with pytest.raises(JournalError, match="is closed"):
        j.claim("t1")


# -- resume after a crash -------------------------------------------------------

CRASHER = """
    import os, sys
    from gpupool import Journal, TaskResult, TaskStatus
    j = Journal(sys.argv[1])
    for key in ("done", "running", "waiting", "queued"):
        assert j.claim(key) is None
    j.record("done", TaskStatus.RUNNING, attempt=1)
    j.finish(TaskResult("done", TaskStatus.SUCCEEDED, value=42, attempts=1))
    j.record("running", TaskStatus.RUNNING, attempt=1)
    j.record_process_group("running", int(sys.argv[2]))
    j.record("waiting", TaskStatus.WAITING_FOR_GPU, attempt=1)
    print("ready", flush=True)
    sys.stdin.readline()
"""


def test_takeover_after_kill_9_requeues_and_keeps_results(path: Path) -> None:
    # A process group of our own that outlives the crashed runner.
    sleeper = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        child = _spawn(CRASHER, str(path), str(sleeper.pid))
        assert child.stdout is not None
        assert child.stdout.readline() == "ready\n", child.stderr.read()  # type: ignore[union-attr]
        with pytest.raises(JournalInUse, match=rf"in use by pid {child.pid} on "):
            Journal(path)
        child.kill()
        child.communicate()

        with Journal(path) as j:
            assert j.takeover is not None
            assert j.takeover.previous_owner.pid == child.pid
            assert j.takeover.interrupted == ("running",)
            assert j.takeover.requeued == ("waiting",)
            assert [(g.key, g.pgid) for g in j.leftover_process_groups] == [
                ("running", sleeper.pid)
            ]
            done = j.claim("done")
            assert done is not None
            assert (done.value, done.from_journal) == (42, True)
            for key in ("running", "waiting", "queued"):
                assert j.claim(key) is None
            assert j.get("running").interrupted == 1  # type: ignore[union-attr]
            assert j.kill_leftovers() == [sleeper.pid]
            assert sleeper.wait(timeout=10) == -9
            assert j.leftover_process_groups == ()
        with Journal(path) as j:
            assert j.takeover is None  # closed cleanly: nothing to take over
            assert j.leftover_process_groups == ()
        notes = [n for _, n in _events(path, "running")]
        assert any(n and n.startswith(f"interrupted: pid {child.pid}") for n in notes)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_owner_with_reused_pid_is_taken_over(path: Path) -> None:
    """A recorded owner whose pid now belongs to another process is dead."""
    Journal(path).close()
    me = current_identity()
    assert me.start_time is not None
    with _sql(path) as conn:
        # pid 1 is alive, but it did not start at this time: the pid was reused.
        conn.execute(
            "INSERT INTO gpupool_owner VALUES (1, 1, ?, ?, ?, 0)",
            (me.start_time + 12345, me.boot_id, me.hostname),
        )
    with Journal(path) as j:
        assert j.takeover is not None
        assert j.takeover.previous_owner.pid == 1


def test_owner_on_another_host_is_not_taken_over(path: Path) -> None:
    Journal(path).close()
    with _sql(path) as conn:
        conn.execute("INSERT INTO gpupool_owner VALUES (1, 4242, 1, 'b', 'elsewhere', 0)")
    with pytest.raises(JournalInUse, match="owned by pid 4242 on elsewhere, which this host"):
        Journal(path)


def test_second_journal_in_same_process_is_refused(journal: Journal, path: Path) -> None:
    with pytest.raises(JournalInUse, match="already open in this process"):
        Journal(path)
    with pytest.raises(JournalInUse, match="already open in this process"):
        Journal(str(path.parent / "." / path.name))


def test_dropped_journal_of_this_process_is_reclaimed(path: Path) -> None:
    j = Journal(path)
    assert j._conn is not None
    j._conn.close()  # as if garbage-collected without close()
    del j
    with Journal(path) as again:
        assert again.takeover is not None
        assert again.takeover.previous_owner.pid == os.getpid()


def test_forked_child_cannot_use_the_journal(journal: Journal) -> None:
    assert journal.claim("parent") is None
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            journal.claim("child")
            message = b"no error"
        except JournalError as exc:
            message = str(exc).encode()
        journal.close()  # must not close the parent's connection or give up ownership
        os.write(write, message)
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        message = f.read().decode()
    os.waitpid(pid, 0)
    assert f"was opened by process {os.getpid()} and cannot be used in the forked child" in message
    journal.record("parent", TaskStatus.RUNNING, attempt=1)  # parent unaffected
    journal.finish(_ok("parent"))
    with pytest.raises(JournalInUse):
        Journal(journal.path)  # still owned (the child's close() gave nothing up)


# -- bad input ------------------------------------------------------------------


def test_file_that_is_not_sqlite_is_refused_and_untouched(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not a database\n")
    with pytest.raises(JournalError, match="is not a gpupool journal \\(not an SQLite database\\)"):
        Journal(path)
    assert path.read_text() == "not a database\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_other_sqlite_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with _sql(path) as conn:
        conn.execute("CREATE TABLE t (x)")
    with pytest.raises(JournalError, match="an SQLite database but not a gpupool journal"):
        Journal(path)


def test_newer_schema_is_refused(path: Path) -> None:
    Journal(path).close()
    with _sql(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(JournalError, match="written by a newer gpupool"):
        Journal(path)


def test_directory_and_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(JournalError, match="is a directory"):
        Journal(tmp_path)
    with pytest.raises(JournalError, match="does not exist"):
        Journal(tmp_path / "missing" / "j.sqlite")


READONLY = """
    import sys
    from gpupool import Journal, JournalError
    try:
        Journal(sys.argv[1])
    except JournalError as exc:
        print(exc)
"""


@pytest.mark.parametrize("existing", [False, True], ids=["new", "existing"])
def test_read_only_directory_is_a_clear_error(tmp_path: Path, existing: bool) -> None:
    directory = tmp_path / "ro"
    directory.mkdir()
    path = directory / "j.sqlite"
    if existing:
        Journal(path).close()
    before = sorted(p.name for p in directory.iterdir())
    directory.chmod(0o555)
    tmp_path.chmod(0o755)
    try:
        # root ignores file modes; drop the capabilities that let it (setpriv
        # is in util-linux, present wherever CI runs as root).
        prefix = []
        if os.geteuid() == 0:
            prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner"]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        out = subprocess.run(
            [*prefix, sys.executable, "-c", textwrap.dedent(READONLY), str(path)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        directory.chmod(0o755)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"cannot open journal {str(path)!r}"), out.stdout
    assert "must be writable" in out.stdout
    assert sorted(p.name for p in directory.iterdir()) == before


def test_failed_first_open_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gpupool._journal.store as journal_module

    def broken(conn: sqlite3.Connection) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(journal_module, "_create_schema", broken)
    with pytest.raises(JournalError, match=r"cannot open journal .*: disk I/O error"):
        Journal(tmp_path / "j.sqlite")
    assert list(tmp_path.iterdir()) == []


RACER = """
    import os, sys, time
    from gpupool import Journal, JournalError, JournalInUse
    directory, rounds = sys.argv[1], int(sys.argv[2])
    print("ready", flush=True)
    base = float(sys.stdin.readline())
    for i in range(rounds):
        start = base + i * 0.4
        while time.time() < start:
            pass  # spin, so both racers open within microseconds of each other
        try:
            j = Journal(os.path.join(directory, f"j{i}.sqlite"))
        except JournalInUse:
            print(i, "refused", flush=True)
            continue
        except JournalError as exc:
            print(i, "error", exc, flush=True)
            continue
        print(i, "owner", flush=True)
        time.sleep(max(0.0, start + 0.3 - time.time()))  # hold it while the other tries
        j.close()
"""


def test_two_processes_creating_one_journal_at_once(tmp_path: Path) -> None:
    """Two runs started on the same new file at the same instant: exactly one
    owns it, the other is refused with JournalInUse, never with a "database
    is locked" error, and the file is intact. Several rounds, because the
    collision is a matter of microseconds."""
    import time

    rounds = 5
    racers = [_spawn(RACER, str(tmp_path), str(rounds)) for _ in range(2)]
    for racer in racers:  # both interpreters started (on a loaded machine, seconds)
        assert racer.stdout is not None
        assert racer.stdout.readline() == "ready\n"
    base = f"{time.time() + 0.2}\n"
    for racer in racers:
        assert racer.stdin is not None
        racer.stdin.write(base)
        racer.stdin.flush()
    outputs = [r.communicate(timeout=60) for r in racers]
    lines = sorted(line for out, _ in outputs for line in out.splitlines())
    expected = sorted(f"{i} {outcome}" for i in range(rounds) for outcome in ("owner", "refused"))
    assert lines == expected, [err for _, err in outputs]
    for i in range(rounds):
        with Journal(tmp_path / f"j{i}.sqlite") as j:  # intact; the owner closed cleanly
            assert j.takeover is None
            assert j.records() == []


class _NoWal(sqlite3.Connection):
    """A connection on which WAL does not take (as on some network file systems)."""

    def execute(self, sql: str, *args: object) -> sqlite3.Cursor:  # type: ignore[override]
        if sql.replace(" ", "").upper() == "PRAGMAJOURNAL_MODE=WAL":
            return super().execute("SELECT 'delete'")
        return super().execute(sql, *args)  # type: ignore[arg-type]


def test_journal_mode_that_does_not_take_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_connect = sqlite3.connect

    def connect(*args: object, **kwargs: object) -> sqlite3.Connection:
        return real_connect(*args, factory=_NoWal, **kwargs)  # type: ignore[call-overload, no-any-return]

    monkeypatch.setattr(sqlite3, "connect", connect)
    with pytest.raises(
        JournalError, match="could not be put in WAL mode \\(SQLite kept 'delete'\\)"
    ):
        Journal(tmp_path / "j.sqlite")
    assert list(tmp_path.iterdir()) == []


def test_sqlite_failure_mid_write_is_a_journal_error_and_keeps_nothing(journal: Journal) -> None:
    assert journal.claim("t1") is None
    assert journal._conn is not None
    # Make the next write fail inside its transaction, as a full disk would.
    journal._conn.execute(
        "CREATE TRIGGER fail BEFORE UPDATE ON tasks BEGIN SELECT RAISE(ABORT, 'disk full'); END"
    )
    with pytest.raises(JournalError, match=r"journal '.*': disk full"):
        journal.record("t1", TaskStatus.RUNNING, attempt=1)
    journal._conn.execute("DROP TRIGGER fail")
    record = journal.get("t1")
    assert record is not None
    assert (record.status, record.starts) == (TaskStatus.QUEUED, 0)
    assert not journal._conn.in_transaction
    journal.record("t1", TaskStatus.RUNNING, attempt=1)  # usable again


def test_busy_is_recognised_by_code_and_by_message() -> None:
    """Python 3.10's sqlite3 errors carry no code, only the message."""
    from gpupool._journal.store import _is_busy

    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (x)")
    with pytest.raises(sqlite3.OperationalError) as real:
        conn.execute("SELECT nope FROM t")
    assert not _is_busy(real.value)
    assert _is_busy(sqlite3.OperationalError("database is locked"))
    assert not _is_busy(sqlite3.OperationalError("disk I/O error"))


class _CommitFails:
    """A journal connection whose COMMIT fails as on a full disk: SQLite
    rolls the transaction back and reports SQLITE_FULL."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
        if sql == "COMMIT":
            self.conn.execute("ROLLBACK")
            raise sqlite3.OperationalError("database or disk is full")
        return self.conn.execute(sql, *args)

    def __getattr__(self, name: str) -> object:
        return getattr(self.conn, name)


@contextlib.contextmanager
def _commits_fail(journal: Journal) -> Iterator[None]:
    conn = journal._conn
    assert conn is not None
    journal._conn = _CommitFails(conn)  # type: ignore[assignment]
    try:
        yield
    finally:
        journal._conn = conn


def test_a_claim_whose_commit_fails_leaves_nothing_in_flight(journal: Journal) -> None:
    """Issue 10 item 7: the key was marked in flight before the COMMIT, so the
    runner later journaled a final event for a task that had no row."""
    with _commits_fail(journal), pytest.raises(JournalError, match="disk is full"):
        journal.claim("t1")
    assert not journal.in_flight("t1")
    assert journal.get("t1") is None
    with pytest.raises(JournalError, match="not in flight"):
        journal.finish(_ok("t1"))
    assert journal.claim("t1") is None  # claimable once the disk has room again
    assert journal.in_flight("t1")


def test_a_finish_whose_commit_fails_leaves_the_task_in_flight(journal: Journal) -> None:
    assert journal.claim("t1") is None
    with _commits_fail(journal), pytest.raises(JournalError, match="disk is full"):
        journal.finish(_ok("t1", 1))
    assert journal.in_flight("t1")  # as the file says: not finished
    record = journal.get("t1")
    assert record is not None
    assert record.status is TaskStatus.QUEUED
    journal.finish(_ok("t1", 1))
    assert not journal.in_flight("t1")


def test_close_that_cannot_give_up_ownership_still_closes(path: Path) -> None:
    """Issue 10 item 7: on a full disk close() raised a raw sqlite3 error and
    left the journal registered as open in this process."""
    journal = Journal(path)
    assert journal._conn is not None
    journal._conn.execute(
        "CREATE TRIGGER no_delete BEFORE DELETE ON gpupool_owner "
        "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
    )
    with pytest.raises(JournalError, match="could not give up ownership on close"):
        journal.close()
    assert journal.closed
    with _sql(path) as conn:
        conn.execute("DROP TRIGGER no_delete")
        assert conn.execute("SELECT pid FROM gpupool_owner").fetchall() == [(os.getpid(),)]
    with Journal(path) as again:  # the owner left behind is recognised as gone
        assert again.takeover is not None
        assert again.takeover.previous_owner == current_identity()
