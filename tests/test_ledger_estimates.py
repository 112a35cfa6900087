"""Duration estimates in the machine-wide ledger, and the ledger's format 2 that holds them.

A ``ParallelRunner`` asks for its GPU tasks with ``Resources.estimated_duration``
(docs/scheduling.md, "Durations learned from history"). On a ledger every
decision is made by a core rebuilt from the ledger's rows, often in another
process, so the rows must carry the estimate for it to count as it does in a
pool of its own. Format 2 stores it in a table of its own (``estimates``), so
that a gpupool of format 1 sharing the ledger keeps working (gpupool/_ledger/rows.py,
"Formats"); these tests make format 1 files with format 1's DDL and write them
as format 1's gpupool does.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import anyio
import pytest

from gpupool import (
    FakeGPUProvider,
    GPUAllocation,
    GPUResourcePool,
    LedgerError,
    ParallelRunner,
    Resources,
    WouldBlock,
)
from gpupool._ledger import rows
from gpupool._ledger.rows import HoldRow, LedgerState, WaiterRow
from gpupool._ledger.store import LedgerStore
from gpupool._system import procfs
from gpupool.providers.fake import fake_uuid

from .ledger_helpers import Member, members
from .waiting import wait_for

#: The head's 2-GPU request waits for the GPU another member holds; a 1-GPU request
#: that says it ends in 50 s ends before the holder's estimated 100 s are up.
ESTIMATE = 100.0
SHORT = Resources(1, expected_duration=50.0)


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    return tmp_path / "ledger"


@pytest.fixture
def member() -> Iterator[Callable[..., Member]]:
    with members() as start:
        yield start


def _pool(ledger: Path) -> GPUResourcePool:
    return GPUResourcePool(FakeGPUProvider(count=2), ledger=ledger)


def _state(ledger: Path) -> LedgerState:
    store = LedgerStore(ledger)
    try:
        return store.read()
    finally:
        store.close()


def _waiting(ledger: Path) -> list[WaiterRow]:
    return [w for w in _state(ledger).waiters.values() if w.state == "waiting"]


@contextlib.asynccontextmanager
async def _head_waiting(pool: GPUResourcePool, ledger: Path) -> AsyncIterator[None]:
    """``pool`` asks for both GPUs and waits at the front of the machine-wide queue."""

    async def head() -> None:
        allocation = await pool.acquire(2)
        await pool.release(allocation)

    async with anyio.create_task_group() as tg:
        tg.start_soon(head)
        await anyio.to_thread.run_sync(lambda: wait_for(lambda: _waiting(ledger), "the head"))
        yield
        # The holder has released by now: the head gets both GPUs and ends.


def _only_hold(ledger: Path) -> HoldRow:
    (hold,) = _state(ledger).holds.values()
    return hold


async def _backfill(pool: GPUResourcePool) -> GPUAllocation | None:
    """The short request, if the machine-wide backfilling lets it start before the head."""
    try:
        return pool.acquire_nowait(SHORT)
    except WouldBlock:
        return None


@pytest.mark.anyio
@pytest.mark.parametrize("estimated", [True, False], ids=["estimate", "no-estimate"])
async def test_a_holders_estimate_made_by_another_pool_reserves_the_heads_start(
    ledger: Path, estimated: bool
) -> None:
    async with _pool(ledger) as holder, _pool(ledger) as head, _pool(ledger) as later:
        request = Resources(1, estimated_duration=ESTIMATE if estimated else None)
        held = await holder.acquire(request)
        hold = _only_hold(ledger)
        # The replica every member rebuilds from the ledger sees the holder's estimate.
        assert hold.estimated_duration == (ESTIMATE if estimated else None)
        async with _head_waiting(head, ledger):
            backfilled = await _backfill(later)
            (front,) = _waiting(ledger)
            if estimated:
                # Decided by `later`'s process from `holder`'s row: the head's start is
                # reserved at the end of the estimate, and a request ending before it
                # starts at once, on the other GPU.
                assert front.reserved_start == pytest.approx(hold.granted_at + ESTIMATE)
                assert backfilled is not None
                assert backfilled.gpu_indices != held.gpu_indices
                await later.release(backfilled)
            else:
                # No end is known: nothing that came later may take a GPU the head needs.
                assert front.reserved_start is None
                assert backfilled is None
            await holder.release(held)


@pytest.mark.anyio
async def test_a_holders_estimate_made_by_another_process_reserves_the_heads_start(
    ledger: Path, member: Callable[..., Member]
) -> None:
    holder = member(ledger, "--estimate", str(ESTIMATE))
    holder.ready()
    hold = _only_hold(ledger)
    assert hold.estimated_duration == ESTIMATE
    async with _pool(ledger) as head, _pool(ledger) as later, _head_waiting(head, ledger):
        backfilled = await _backfill(later)
        (front,) = _waiting(ledger)
        assert front.reserved_start == pytest.approx(hold.granted_at + ESTIMATE)
        assert backfilled is not None
        assert backfilled.gpu_uuids != hold.gpus
        await later.release(backfilled)
        assert holder.close() == 0


@pytest.mark.anyio
async def test_a_waiters_estimate_is_in_its_row_and_in_the_hold_another_pool_grants_it(
    ledger: Path,
) -> None:
    async with _pool(ledger) as first, _pool(ledger) as second:
        both = await first.acquire(2)
        got: list[GPUAllocation] = []

        async def wait() -> None:
            got.append(await second.acquire(Resources(1, estimated_duration=ESTIMATE)))

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait)
            (waiter,) = await anyio.to_thread.run_sync(
                lambda: wait_for(lambda: _waiting(ledger), "the waiter's row")
            )
            assert waiter.estimated_duration == ESTIMATE
            await first.release(both)  # `first` grants it, from the waiter's row
        hold = _only_hold(ledger)
        assert (hold.ticket, hold.gpus) == (waiter.ticket, got[0].gpu_uuids)
        assert hold.estimated_duration == ESTIMATE
        await second.release(got[0])


@pytest.mark.anyio
async def test_a_runners_estimate_from_history_is_in_the_ledger(ledger: Path) -> None:
    seen: list[float | None] = []

    def train(item: int, allocation: GPUAllocation | None) -> None:
        seen.append(_only_hold(ledger).estimated_duration)  # while the task holds its GPU

    async with _pool(ledger) as pool, ParallelRunner(pool, history={"cfg": [ESTIMATE]}) as runner:
        (result,) = await runner.map(train, [0], required_gpus=1, key=lambda i: "cfg")
    assert result.error is None
    assert seen == [ESTIMATE]


# ------------------------------------------------------------------ formats


#: The tables of format 1, as its gpupool made them (each with a version in ``meta``).
FORMAT_1_TABLES = ("members", "gpus", "marks", "holds", "waiters", "settles")


def _format_1_ledger(directory: Path) -> None:
    """A ledger as format 1's gpupool made it, holding one allocation."""
    directory.mkdir()
    conn = sqlite3.connect(directory / "ledger.db", isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.executescript(rows.SCHEMA_V1)
        meta = [("schema", 1), ("boot_id", procfs.boot_id()), ("generation", "g1")]
        meta.append(("next_id", 10))
        meta += [(f"v:{t}", 0) for t in FORMAT_1_TABLES]
        meta.append(("rebuild_until", None))
        conn.executemany("INSERT INTO meta VALUES (?, ?)", meta)
        conn.execute(
            "INSERT INTO holds VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (3, "gone", None, f'["{fake_uuid(0)}"]', 0, 1, 0, 60.0, None, 0.0, 0.0, "[]",
             "allocation", None, 0),
        )  # fmt: skip
    finally:
        conn.close()


def _meta(directory: Path) -> dict[str, object]:
    with contextlib.closing(sqlite3.connect(directory / "ledger.db")) as conn:
        return dict(conn.execute("SELECT key, value FROM meta"))


def _columns(directory: Path, table: str) -> list[str]:
    with contextlib.closing(sqlite3.connect(directory / "ledger.db")) as conn:
        return [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]


def _tables(directory: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(directory / "ledger.db")) as conn:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}


def test_a_format_1_ledger_reads_as_it_is_without_estimates(ledger: Path) -> None:
    _format_1_ledger(ledger)
    state = _state(ledger)  # a reader (gpupool status) never upgrades
    assert state.schema == 1
    assert state.holds[3].expected_duration == 60.0
    assert state.holds[3].estimated_duration is None
    assert _meta(ledger)["schema"] == 1
    assert "estimates" not in _tables(ledger)


@pytest.mark.anyio
async def test_a_format_1_ledger_is_upgraded_in_place_by_the_first_writer(ledger: Path) -> None:
    _format_1_ledger(ledger)
    holds_columns = _columns(ledger, "holds")
    for _ in range(2):  # the second open meets an upgraded file: nothing changes
        async with _pool(ledger) as pool:
            allocation = await pool.acquire(Resources(1, estimated_duration=ESTIMATE))
            state = _state(ledger)
            # The same file (not rebuilt), upgraded: the format 1 row reads without an
            # estimate, the new one with its own.
            assert state.generation == "g1"
            estimates = {h.id: h.estimated_duration for h in state.holds.values()}
            assert estimates.pop(3) is None
            assert list(estimates.values()) == [ESTIMATE]
            await pool.release(allocation)
        assert not (ledger / "ledger.db.damaged").exists()
        meta = _meta(ledger)
        assert (meta["schema"], meta["min_schema"]) == (2, 1)
        assert _columns(ledger, "holds") == holds_columns
        assert _columns(ledger, "estimates") == ["id", "seconds"]


def test_a_fresh_ledger_is_format_2_with_the_format_1_tables_unchanged(tmp_path: Path) -> None:
    old = tmp_path / "old"
    _format_1_ledger(old)
    new = tmp_path / "new"
    new.mkdir()
    store = LedgerStore(new)
    try:
        store.write(lambda state: None)
    finally:
        store.close()
    assert (_meta(new)["schema"], _meta(new)["min_schema"]) == (rows.SCHEMA_VERSION, 1)
    for table in FORMAT_1_TABLES:
        assert _columns(new, table) == _columns(old, table), table


@pytest.mark.anyio
async def test_a_format_1_gpupool_keeps_writing_a_format_2_ledger(ledger: Path) -> None:
    async with _pool(ledger) as pool:
        allocation = await pool.acquire(Resources(1, estimated_duration=ESTIMATE))
        # What format 1's gpupool does in each transaction: read whole rows, delete the
        # table, insert the rows back by position (here changing nothing but the order).
        with contextlib.closing(sqlite3.connect(ledger / "ledger.db")) as conn, conn:
            raw = conn.execute("SELECT * FROM holds").fetchall()
            assert len(raw[0]) == 15
            conn.execute("DELETE FROM holds")
            conn.executemany(f"INSERT INTO holds VALUES ({', '.join('?' * 15)})", raw)
            conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'v:holds'")
        # This gpupool's next transaction sees the same file, with the estimate kept.
        await pool.release(allocation)
        again = await pool.acquire(Resources(1, estimated_duration=2 * ESTIMATE))
        assert _only_hold(ledger).estimated_duration == 2 * ESTIMATE
        assert not (ledger / "ledger.db.damaged").exists()
        await pool.release(again)


@pytest.mark.anyio
async def test_a_ledger_a_newer_gpupool_requires_is_refused_and_left_alone(ledger: Path) -> None:
    async with _pool(ledger):
        pass
    with contextlib.closing(sqlite3.connect(ledger / "ledger.db")) as conn, conn:
        conn.execute("UPDATE meta SET value = 3 WHERE key IN ('schema', 'min_schema')")
    with pytest.raises(LedgerError, match=r"newer gpupool.*format 3.*up to 2"):
        async with _pool(ledger):
            pass
    with pytest.raises(LedgerError, match="newer gpupool"):
        _state(ledger)
    assert _meta(ledger)["min_schema"] == 3
    assert not (ledger / "ledger.db.damaged").exists()


def test_an_estimate_that_is_not_a_positive_duration_is_damage(ledger: Path) -> None:
    store = LedgerStore(ledger)
    ledger.mkdir()
    try:
        store.write(lambda state: None)
        with contextlib.closing(sqlite3.connect(ledger / "ledger.db")) as conn, conn:
            conn.execute(
                "INSERT INTO holds VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (1, "x", None, "[]", 0, 1, 0, None, None, 0.0, 0.0, "[]", "allocation", None, 0),
            )
            conn.execute("INSERT INTO estimates VALUES (1, -5.0)")
        with (
            contextlib.closing(sqlite3.connect(ledger / "ledger.db")) as conn,
            pytest.raises(rows.Damaged, match="positive"),
        ):
            rows.load(conn)
    finally:
        store.close()


def test_a_hold_a_format_1_gpupool_granted_has_its_waiters_estimate(ledger: Path) -> None:
    ledger.mkdir()
    store = LedgerStore(ledger)
    waiter = WaiterRow(
        7, "new", 1, 0, True, 0, (fake_uuid(0),), None, None, 0.0, 0.0, None, None, None,
        "waiting", None, None, estimated_duration=ESTIMATE,
    )  # fmt: skip

    def queue(state: LedgerState) -> None:
        state.waiters[7] = waiter

    try:
        store.write(queue)
        # Format 1's gpupool grants it: a hold row of its own, with the waiter's ticket,
        # and nothing in `estimates` (which it does not know).
        with contextlib.closing(sqlite3.connect(ledger / "ledger.db")) as conn, conn:
            conn.execute(
                "INSERT INTO holds VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (8, "new", 7, f'["{fake_uuid(0)}"]', 0, 1, 0, None, None, 0.0, 0.0, "[]",
                 "allocation", None, 0),
            )  # fmt: skip
            conn.execute("UPDATE waiters SET state = 'granted', hold = 8")
            conn.execute("UPDATE meta SET value = value + 1 WHERE key IN ('v:holds', 'v:waiters')")

        def collect(state: LedgerState) -> float | None:
            del state.waiters[7]  # what the waiter's own gpupool does when it collects
            return state.holds[8].estimated_duration

        assert store.write(collect) == ESTIMATE
        # Written under the hold's own id now that the waiter's row is gone.
        with contextlib.closing(sqlite3.connect(ledger / "ledger.db")) as conn:
            assert conn.execute("SELECT * FROM estimates").fetchall() == [(8, ESTIMATE)]
        assert _state(ledger).holds[8].estimated_duration == ESTIMATE
    finally:
        store.close()
