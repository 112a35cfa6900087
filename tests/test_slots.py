"""The runner's slots: FIFO with a front lane, and no slot lost to cancellation."""

from __future__ import annotations

import anyio
import attrs
import pytest

from gpupool._runner.slots import Slots, SlotsStatistics

pytestmark = pytest.mark.anyio


async def test_free_slots_are_taken_at_once_and_the_rest_wait_in_order() -> None:
    slots = Slots(2)
    order: list[str] = []

    async def take(name: str, front: bool = False) -> None:
        await slots.acquire(front=front)
        order.append(name)

    await take("a")
    await take("b")
    assert (slots.in_use, slots.waiting) == (2, 0)
    async with anyio.create_task_group() as tg:
        for name in ("c", "d"):
            tg.start_soon(take, name)
            await anyio.wait_all_tasks_blocked()
        tg.start_soon(take, "holder-of-gpus", True)
        await anyio.wait_all_tasks_blocked()
        assert slots.waiting == 3
        for _ in range(3):
            slots.release()
            await anyio.wait_all_tasks_blocked()
    assert order == ["a", "b", "holder-of-gpus", "c", "d"]
    assert slots.in_use == 2


async def test_a_waiter_cancelled_after_its_grant_passes_the_slot_on() -> None:
    """Regression guard for the lost-token race (anyio #947)."""
    slots = Slots(1)
    await slots.acquire()
    got: list[str] = []

    async def wait(name: str, scope: anyio.CancelScope) -> None:
        with scope:
            await slots.acquire()
            got.append(name)
            slots.release()

    first, second = anyio.CancelScope(), anyio.CancelScope()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait, "first", first)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(wait, "second", second)
            await anyio.wait_all_tasks_blocked()
            slots.release()  # granted to "first" ...
            first.cancel()  # ... which is cancelled before it runs
    # trio raises the cancellation, so "first" hands the slot on; asyncio may
    # let the already-granted wait complete. Either way the slot is not lost.
    assert got in (["second"], ["first", "second"])
    assert (slots.in_use, slots.waiting) == (0, 0)


async def test_cancelled_waiters_are_skipped() -> None:
    slots = Slots(1)
    await slots.acquire()
    scopes = [anyio.CancelScope() for _ in range(100)]
    winners: list[int] = []

    async def wait(number: int, scope: anyio.CancelScope) -> None:
        with scope:
            await slots.acquire()
            winners.append(number)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for number, scope in enumerate(scopes):
                tg.start_soon(wait, number, scope)
            await anyio.wait_all_tasks_blocked()
            assert slots.waiting == 100
            for scope in scopes[:-1]:
                scope.cancel()
            slots.release()
    assert winners == [99]
    assert (slots.in_use, slots.waiting) == (1, 0)


async def test_acquire_yields_to_the_scheduler_even_when_a_slot_is_free() -> None:
    """Like trio's CapacityLimiter.acquire, every acquire is a checkpoint."""
    slots = Slots(2)
    order: list[str] = []

    async def other() -> None:
        order.append("other task")

    async with anyio.create_task_group() as tg:
        tg.start_soon(other)
        # trio may run either task first after one yield; after two, the
        # other task has had its turn (and without a checkpoint, never).
        await slots.acquire()
        await slots.acquire()
        order.append("acquired twice")
    assert order == ["other task", "acquired twice"]
    assert slots.in_use == 2


async def test_a_caller_cancelled_before_it_acquires_gets_no_slot() -> None:
    slots = Slots(1)
    reached = False
    with anyio.CancelScope() as scope:
        scope.cancel()
        await slots.acquire()
        reached = True
    assert not reached
    assert scope.cancelled_caught
    assert (slots.in_use, slots.waiting) == (0, 0)


async def test_release_without_an_acquire_raises_and_changes_nothing() -> None:
    slots = Slots(2)
    with pytest.raises(RuntimeError, match=r"release\(\) without a matching acquire"):
        slots.release()
    assert slots.in_use == 0
    await slots.acquire()
    slots.release()
    with pytest.raises(RuntimeError, match="no slot is held"):
        slots.release()
    assert (slots.in_use, slots.waiting) == (0, 0)


async def test_statistics_are_a_frozen_snapshot_and_repr_shows_them() -> None:
    slots = Slots(2)
    await slots.acquire()
    await slots.acquire()
    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(slots.acquire)
        await anyio.wait_all_tasks_blocked()
        stats = slots.statistics()
        assert stats == SlotsStatistics(in_use=2, total=2, waiting=3)
        assert repr(slots) == "<Slots 2/2 with 3 waiting>"
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            stats.in_use = 0  # type: ignore[misc]
        for _ in range(3):
            slots.release()
            await anyio.wait_all_tasks_blocked()
    assert stats.waiting == 3  # a snapshot: later changes do not reach it
    assert slots.statistics() == SlotsStatistics(in_use=2, total=2, waiting=0)


async def test_checkpoint_false_takes_a_free_slot_without_a_yield_but_still_waits() -> None:
    """The runner's spelling around pool.acquire, which checkpoints itself."""
    slots = Slots(1)
    order: list[str] = []

    async def other() -> None:
        order.append("other task")

    async with anyio.create_task_group() as tg:
        tg.start_soon(other)
        await slots.acquire(checkpoint=False)
        order.append("acquired")  # no yield came first: the other task has not run
        tg.start_soon(slots.acquire)
        await anyio.wait_all_tasks_blocked()
        assert slots.waiting == 1  # a full Slots still makes the caller wait
        slots.release()
    assert order == ["acquired", "other task"]
    assert (slots.in_use, slots.waiting) == (1, 0)
