"""Pools that join a machine-wide ledger, several in one process (both anyio backends).

Two pools given the same ``ledger=`` directory are two members of the ledger,
exactly as two processes are (each has its own lock, socket and tickets, and
hears of the other's decisions by a wake-up datagram), so the rules that hold
across processes can be checked here, step by step, without starting any.
tests/test_ledger_processes.py checks them with real processes.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from anyio import wait_all_tasks_blocked

from gpupool import (
    AllocationNotHeld,
    BackfillPolicy,
    FakeGPUProvider,
    FifoPolicy,
    GPUAllocation,
    GPUResourcePool,
    PoolClosed,
    PoolTimeout,
    UnsatisfiableRequest,
    WouldBlock,
)
from gpupool._ledger.rows import LedgerState, WaiterRow
from gpupool._ledger.store import LedgerStore

pytestmark = pytest.mark.anyio

#: Bounds every wait on another pool's decision (a hang fails; never a speed claim).
PATIENCE = 30.0


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    return tmp_path / "ledger"


def _pool(ledger: Path, count: int = 1, **options: object) -> GPUResourcePool:
    return GPUResourcePool(FakeGPUProvider(count=count), ledger=ledger, **options)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def _pools(
    ledger: Path, *counts: int, **options: object
) -> AsyncIterator[list[GPUResourcePool]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(_pool(ledger, n, **options)) for n in counts]


def _state(ledger: Path) -> LedgerState:
    store = LedgerStore(ledger)
    try:
        return store.read()
    finally:
        store.close_connection()


def _queue(ledger: Path) -> list[WaiterRow]:
    return list(_state(ledger).waiters.values())


def _assert_ledger_empty(ledger: Path) -> None:
    state = _state(ledger)
    assert state.holds == {}
    assert state.waiters == {}


# ------------------------------------------------------------ like two processes


async def test_two_pools_never_hold_one_gpu_at_once(ledger: Path) -> None:
    """Eight tasks in two pools cycle over 2 GPUs; the test sees every hold (one event
    loop), and no GPU is ever held by two allocations."""
    held: dict[str, str] = {}
    counts = {"a": 0, "b": 0}

    async def cycle(pool: GPUResourcePool, name: str, seed: int) -> None:
        for n in range(40):
            async with pool.allocation(1, timeout=PATIENCE) as allocation:
                [uuid] = allocation.gpu_uuids
                assert uuid not in held, f"{uuid} granted to {name} while {held[uuid]} holds it"
                held[uuid] = name
                await anyio.sleep(0.0005 * ((seed + n) % 3))
                del held[uuid]
            counts[name[0]] += 1

    async with _pools(ledger, 2, 2) as (a, b), anyio.create_task_group() as tasks:
        for n in range(4):
            tasks.start_soon(cycle, a, f"a{n}", n)
            tasks.start_soon(cycle, b, f"b{n}", n)
    assert counts == {"a": 160, "b": 160}
    _assert_ledger_empty(ledger)


async def test_equal_priorities_are_served_in_arrival_order_across_pools(ledger: Path) -> None:
    order: list[str] = []

    async def waiter(pool: GPUResourcePool, name: str) -> None:
        async with pool.allocation(1, timeout=PATIENCE):
            order.append(name)
            await anyio.sleep(0.001)

    async with _pools(ledger, 1, 1, 1) as (a, b, c):
        held = await a.acquire()
        async with anyio.create_task_group() as tasks:
            for n, pool in enumerate([b, c, a, b, c]):
                tasks.start_soon(waiter, pool, f"w{n}")
                await wait_all_tasks_blocked()
                assert len(_queue(ledger)) == n + 1  # queued before the next one comes
            await a.release(held)
    assert order == ["w0", "w1", "w2", "w3", "w4"]
    _assert_ledger_empty(ledger)


async def test_a_later_higher_priority_waiter_in_another_pool_goes_first(ledger: Path) -> None:
    order: list[str] = []

    async def waiter(pool: GPUResourcePool, name: str, priority: int) -> None:
        async with pool.allocation(1, priority=priority, timeout=PATIENCE):
            order.append(name)
            await anyio.sleep(0.001)

    async with _pools(ledger, 1, 1) as (a, b):
        held = await a.acquire()
        async with anyio.create_task_group() as tasks:
            for name, pool, priority in [("low", a, 0), ("high", b, 3)]:
                tasks.start_soon(waiter, pool, name, priority)
                await wait_all_tasks_blocked()
            await a.release(held)
    assert order == ["high", "low"]


# ------------------------------------------------------------ this pool's own view


async def test_statistics_describe_this_pool_only(ledger: Path) -> None:
    async with _pools(ledger, 2, 2) as (a, b):
        mine = await a.acquire(1)
        theirs = await b.acquire(1, min_memory_mb=4000, exclusive=False)
        assert mine.gpu_indices == (0,)
        assert theirs.gpu_indices == (1,)  # not the GPU `a` holds whole
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(b.acquire, 2)  # b waits; a does not
            await wait_all_tasks_blocked()
            seen_by_a, seen_by_b = a.statistics(), b.statistics()
            tasks.cancel_scope.cancel()
        assert (seen_by_a.holder_count, seen_by_a.waiters) == (1, 0)
        assert (seen_by_b.holder_count, seen_by_b.waiters) == (1, 1)
        assert [g.holder_ids for g in seen_by_a.gpus] == [(mine.id,), ()]
        assert [g.holder_ids for g in seen_by_b.gpus] == [(), (theirs.id,)]
        # Another member's reservation is foreign memory to this pool, not its own.
        assert seen_by_a.gpus[1].memory_reserved_mb == 0
        assert seen_by_a.gpus[1].memory_foreign_mb == 4000
        assert seen_by_b.gpus[1].memory_reserved_mb == 4000
        assert seen_by_b.gpus[1].memory_foreign_mb == 0
        assert a.statistics().grants_total == b.statistics().grants_total == 1
        await a.release(mine)
        await b.release(theirs)
        assert a.statistics().holder_count == b.statistics().holder_count == 0
    _assert_ledger_empty(ledger)


async def test_closing_a_pool_fails_its_waiters_and_leaves_the_others(ledger: Path) -> None:
    async with _pools(ledger, 1, 1, 1) as (a, b, c):
        held = await a.acquire()
        failures: list[BaseException] = []

        async def waiter(pool: GPUResourcePool) -> None:
            try:
                await pool.acquire(timeout=PATIENCE)
            except PoolClosed as error:
                failures.append(error)

        got: list[GPUAllocation] = []

        async def survivor() -> None:
            got.append(await c.acquire(timeout=PATIENCE))

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(waiter, b)
            tasks.start_soon(waiter, b)
            await wait_all_tasks_blocked()
            tasks.start_soon(survivor)  # queued behind b's two
            await wait_all_tasks_blocked()
            assert len(_queue(ledger)) == 3
            await b.aclose()
            await wait_all_tasks_blocked()
            assert len(failures) == 2
            assert [w.member for w in _queue(ledger)] == [c._core.member_id]  # type: ignore[union-attr]
            await a.release(held)
        [allocation] = got
        await c.release(allocation)
    _assert_ledger_empty(ledger)


async def test_releasing_twice_or_in_another_pool_raises_allocation_not_held(
    ledger: Path,
) -> None:
    async with _pools(ledger, 2, 2) as (a, b):
        mine = await a.acquire()
        theirs = await b.acquire()
        assert mine.id == theirs.id  # each pool numbers its own allocations...
        with pytest.raises(AllocationNotHeld):
            await b.release(mine)  # ...and still tells them apart
        await a.release(mine)
        with pytest.raises(AllocationNotHeld):
            await a.release(mine)
        assert b.statistics().holder_count == 1  # the failed calls changed nothing
        await b.release(theirs)
    _assert_ledger_empty(ledger)


@pytest.mark.parametrize(
    "option",
    [
        {"policy": FifoPolicy()},
        {"policy": BackfillPolicy()},
        {"scorer": lambda gpu: 0.0},
    ],
    ids=["fifo", "backfill", "scorer"],
)
def test_a_policy_or_scorer_of_its_own_cannot_join_a_ledger(
    ledger: Path, option: dict[str, object]
) -> None:
    with pytest.raises(ValueError, match="ledger=None"):
        _pool(ledger, 1, **option)
    GPUResourcePool(FakeGPUProvider(count=1), ledger=None, **option)  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_pool_is_made_outside_an_event_loop_and_opened_in_one(ledger: Path, backend: str) -> None:
    pool = _pool(ledger, 1)

    async def use() -> None:
        async with pool:
            allocation = await pool.acquire()
            await pool.release(allocation)

    anyio.run(use, backend=backend)
    _assert_ledger_empty(ledger)


async def test_max_parallel_caps_one_pool_while_another_takes_the_rest(ledger: Path) -> None:
    async with _pool(ledger, 3, max_parallel=1) as capped, _pool(ledger, 3) as free:
        first = await capped.acquire()
        got: list[GPUAllocation] = []

        async def second() -> None:
            got.append(await capped.acquire(timeout=PATIENCE))

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(second)
            await wait_all_tasks_blocked()
            assert got == []  # two GPUs free, but the pool may hold one at a time
            assert capped.statistics().waiters == 1
            # Its capped waiter does not block the other pool: both free GPUs go to it.
            rest = free.acquire_nowait(2)
            assert set(rest.gpu_indices) | set(first.gpu_indices) == {0, 1, 2}
            await capped.release(first)
        [allocation] = got
        assert allocation.gpu_indices == first.gpu_indices
        await capped.release(allocation)
        await free.release(rest)
    _assert_ledger_empty(ledger)


async def test_max_parallel_holds_while_pools_cycle(ledger: Path) -> None:
    in_use = {"capped": 0, "free": 0}
    peak = {"capped": 0, "free": 0}

    async def cycle(pool: GPUResourcePool, name: str) -> None:
        for n in range(15):
            async with pool.allocation(1, timeout=PATIENCE):
                in_use[name] += 1
                peak[name] = max(peak[name], in_use[name])
                await anyio.sleep(0.001 * (n % 3))
                in_use[name] -= 1

    async with (
        _pool(ledger, 3, max_parallel=1) as capped,
        _pool(ledger, 3) as free,
        anyio.create_task_group() as tasks,
    ):
        for _ in range(3):
            tasks.start_soon(cycle, capped, "capped")
            tasks.start_soon(cycle, free, "free")
    assert peak["capped"] == 1
    assert peak["free"] >= 2  # it did take more than one of the GPUs the cap left
    _assert_ledger_empty(ledger)


@pytest.fixture
def no_poll(monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """Turn the listener's slow poll off (hours), and give the options that turn the
    monitor's refresh off: a decision then reaches a pool only through a wake-up or
    a transaction of its own."""
    import gpupool._ledger.machine
    import gpupool._pool.pool

    monkeypatch.setattr(gpupool._ledger.machine, "POLL_INTERVAL", 36_000.0)
    monkeypatch.setattr(gpupool._pool.pool, "POLL_INTERVAL", 36_000.0)
    return {"refresh_interval": 36_000.0}


async def test_a_capped_pool_hands_its_release_to_its_own_waiter(
    ledger: Path, no_poll: dict[str, object]
) -> None:
    """max_parallel=1 kept the pool's second request out of the machine's queue while
    the first held; the release itself must serve it (no wake-up comes: nobody else
    decided anything)."""
    async with _pool(ledger, 2, max_parallel=1, **no_poll) as capped:
        first = await capped.acquire()
        got: list[GPUAllocation] = []

        async def second() -> None:
            got.append(await capped.acquire(timeout=PATIENCE))

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(second)
            await wait_all_tasks_blocked()
            assert got == []
            await capped.release(first)
        [allocation] = got
        await capped.release(allocation)
    _assert_ledger_empty(ledger)


async def test_a_capped_pool_cancelling_a_grant_serves_its_next_waiter(
    ledger: Path, no_poll: dict[str, object]
) -> None:
    """Another pool's release grants the capped pool's first waiter in the ledger; that
    wait is cancelled before it collected the grant, and the GPU must go to the capped
    pool's second waiter, which the cap had held back."""
    async with (
        _pool(ledger, 1, **no_poll) as other,
        _pool(ledger, 1, max_parallel=1, **no_poll) as capped,
    ):
        held = await other.acquire()
        first_wait = anyio.CancelScope()
        got: list[GPUAllocation] = []

        async def first() -> None:
            with first_wait:
                await capped.acquire(timeout=PATIENCE)

        async def second() -> None:
            got.append(await capped.acquire(timeout=PATIENCE))

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(first)
            await wait_all_tasks_blocked()
            tasks.start_soon(second)
            await wait_all_tasks_blocked()
            await other.release(held)  # never awaits: the grant is not collected yet
            assert [w.state for w in _queue(ledger)] == ["granted", "waiting"]
            first_wait.cancel()
        [allocation] = got
        await capped.release(allocation)
    _assert_ledger_empty(ledger)


# ------------------------------------------------------------ waits that end early


async def test_a_cancelled_wait_leaves_nothing_in_the_ledger(ledger: Path) -> None:
    async with _pools(ledger, 1, 1) as (a, b):
        held = await a.acquire()
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(b.acquire)
                await wait_all_tasks_blocked()
                assert len(_queue(ledger)) == 1
                scope.cancel()
        assert _queue(ledger) == []
        with pytest.raises(PoolTimeout):
            await b.acquire(timeout=0.05)
        assert _queue(ledger) == []
        await a.release(held)
        assert b.statistics().holder_count == 0
    _assert_ledger_empty(ledger)


async def test_a_wait_cancelled_after_another_pool_granted_it_gives_the_gpu_back(
    ledger: Path,
) -> None:
    """The release in `a` grants the GPU to `b`'s waiter in the ledger; `b`'s wait is
    cancelled before its listener has collected that grant: the GPU goes to the next
    in line, in a third pool."""
    async with _pools(ledger, 1, 1, 1) as (a, b, c):
        held = await a.acquire()
        got: list[GPUAllocation] = []
        b_wait = anyio.CancelScope()

        async def in_b() -> None:
            with b_wait:
                got.append(await b.acquire(timeout=PATIENCE))

        async def in_c() -> None:
            got.append(await c.acquire(timeout=PATIENCE))

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(in_b)
            await wait_all_tasks_blocked()
            tasks.start_soon(in_c)
            await wait_all_tasks_blocked()
            await a.release(held)  # never awaits: b cannot have collected its grant yet
            assert [w.state for w in _queue(ledger)] == ["granted", "waiting"]
            b_wait.cancel()
        [allocation] = got
        assert c.statistics().holder_count == 1
        assert b.statistics().holder_count == 0
        await c.release(allocation)
    _assert_ledger_empty(ledger)


async def test_acquire_nowait_never_overtakes_another_pools_earlier_waiter(
    ledger: Path,
) -> None:
    async with _pools(ledger, 2, 2) as (a, b):
        held = await a.acquire(1)
        got: list[GPUAllocation] = []
        granted = anyio.Event()

        async def wants_both() -> None:
            got.append(await b.acquire(2, timeout=PATIENCE))
            granted.set()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(wants_both)
            await wait_all_tasks_blocked()
            # A GPU is free, but taking it would delay b's earlier request for both.
            with pytest.raises(WouldBlock):
                a.acquire_nowait(1)
            assert len(_queue(ledger)) == 1  # the refused call left nothing queued
            await a.release(held)
            with anyio.fail_after(PATIENCE):  # b hears of it by a wake-up
                await granted.wait()
        [both] = got
        assert both.gpu_indices == (0, 1)
        with pytest.raises(WouldBlock):
            a.acquire_nowait(1)  # both held by b now
        await b.release(both)
        allocation = a.acquire_nowait(1)  # and free again once b let go
        await a.release(allocation)
    _assert_ledger_empty(ledger)


async def test_more_gpus_than_the_pool_has_is_unsatisfiable(ledger: Path) -> None:
    """Each pool is judged by its own GPUs: the ledger knows 4 (from `b`), `a` has 2."""
    async with _pools(ledger, 2, 4) as (a, b):
        with pytest.raises(UnsatisfiableRequest):
            await a.acquire(3)
        with pytest.raises(UnsatisfiableRequest):
            a.acquire_nowait(3)
        with pytest.raises(UnsatisfiableRequest):
            await b.acquire(5)
        assert _queue(ledger) == []
        allocation = await b.acquire(3)
        await b.release(allocation)
    _assert_ledger_empty(ledger)
