"""ParallelRunner: order, isolation, GPUs, timeouts, retries, cancellation."""

from __future__ import annotations

import itertools
import sys
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from anyio.lowlevel import checkpoint
from trio.testing import MockClock

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup  # type: ignore[import-not-found, unused-ignore]

from gpupool import (
    FakeGPUProvider,
    GPUAllocation,
    GPUResourcePool,
    ParallelRunner,
    TaskStatus,
    run_blocking,
)

from .marks import trio_mockclock

pytestmark = pytest.mark.anyio

GENEROUS = 30.0  # seconds; reached only if something hangs


@pytest.fixture
async def pool() -> AsyncIterator[GPUResourcePool]:
    async with GPUResourcePool(FakeGPUProvider(count=4)) as pool:
        yield pool


def assert_all_gpus_free(pool: GPUResourcePool) -> None:
    stats = pool.statistics()
    assert (stats.holder_count, stats.waiters) == (0, 0)
    assert stats.free_gpus == (0, 1, 2, 3)


# -- the basics --------------------------------------------------------------


async def test_map_returns_results_in_input_order_for_async_and_plain_functions() -> None:
    async def double(item: int, allocation: GPUAllocation | None) -> int:
        assert allocation is None
        await anyio.sleep(0.001 * (10 - item))  # finish in reverse order
        return item * 2

    def square(item: int, allocation: GPUAllocation | None) -> int:
        return item * item

    async with ParallelRunner(max_parallel=4) as runner:
        doubled = await runner.map(double, range(10))
        squared = await runner.map(square, range(10))
    assert [r.value for r in doubled] == [i * 2 for i in range(10)]
    assert [r.value for r in squared] == [i * i for i in range(10)]
    assert all(r.status is TaskStatus.SUCCEEDED and r.attempts == 1 for r in doubled + squared)
    assert all(r.duration_s is not None and r.duration_s >= 0 for r in doubled)


async def test_max_parallel_caps_tasks_running_at_once() -> None:
    running = 0
    peak = 0
    # An event, not a sleep: on a loaded machine a 10 ms sleep could end
    # before the statistics are read.
    go = anyio.Event()

    async def task(item: int, allocation: object) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await go.wait()
        running -= 1

    async with ParallelRunner(max_parallel=3) as runner:
        handles = [runner.submit(task, i) for i in range(12)]
        await anyio.wait_all_tasks_blocked()
        assert runner.statistics().running == 3
        assert runner.statistics().waiting_for_slot == 9
        go.set()
        for handle in handles:
            await handle.wait()
    assert peak == 3


@pytest.mark.parametrize(
    "anyio_backend",
    [
        # Virtual time: 1 s trials, a 60 s timeout, hung trials sleep an hour.
        pytest.param(("trio", {"clock": MockClock(autojump_threshold=0)}), id="trio-mockclock"),
        # Real time, shortened: instant trials and a 0.2 s timeout.
        pytest.param("asyncio", id="asyncio"),
    ],
)
async def test_error_isolation_over_a_thousand_gpu_tasks(anyio_backend: object) -> None:
    """10% raise, 5% time out, the rest succeed; each result typed, in order."""
    virtual = anyio_backend != "asyncio"
    timeout, trial_s = (60.0, 1.0) if virtual else (0.2, 0.0)

    async def trial(item: int, allocation: GPUAllocation | None) -> int:
        assert allocation is not None
        assert len(allocation.gpu_indices) == 1
        if item % 10 == 3:
            raise ValueError(f"bad config {item}")
        await anyio.sleep(3600 if item % 20 == 7 else trial_s)
        return item

    async with GPUResourcePool(FakeGPUProvider(count=4)) as pool:
        async with ParallelRunner(pool, max_parallel=4) as runner:
            results = await runner.map(trial, range(1000), required_gpus=1, timeout=timeout)
        assert_all_gpus_free(pool)
    assert [r.key for r in results] == [f"task-{i}" for i in range(1000)]
    for i, result in enumerate(results):
        if i % 10 == 3:
            assert result.status is TaskStatus.FAILED
            assert result.error == f"ValueError: bad config {i}"
            assert result.traceback is not None
            assert "bad config" in result.traceback
            assert isinstance(result.exception, ValueError)
        elif i % 20 == 7:
            assert result.status is TaskStatus.TIMED_OUT
            assert result.error == f"TimeoutError: the task ran past its timeout of {timeout} s"
        else:
            assert (result.status, result.value) == (TaskStatus.SUCCEEDED, i)
        assert len(result.gpu_indices) == 1
    counts = {s: sum(r.status is s for r in results) for s in TaskStatus}
    assert (counts[TaskStatus.FAILED], counts[TaskStatus.TIMED_OUT]) == (100, 50)


async def test_error_isolation_on_both_backends(pool: GPUResourcePool) -> None:
    """The same mix in real time, smaller: every path ends in its own result."""

    class Fatal(BaseException):
        pass

    def plain(item: int, allocation: GPUAllocation | None) -> int:
        if item % 10 == 1:
            raise Fatal("a BaseException that is not cancellation")
        if item % 10 == 2:
            raise SystemExit(3)
        return item

    async def coroutine(item: int, allocation: GPUAllocation | None) -> int:
        if item % 20 == 5:
            await anyio.sleep(GENEROUS)
        if item % 10 == 3:
            raise RuntimeError(item)
        return plain(item, allocation)

    async with ParallelRunner(pool, max_parallel=20) as runner:
        results = await runner.map(
            coroutine, range(100), required_gpus=lambda i: i % 2, timeout=0.05
        )
    assert_all_gpus_free(pool)
    for i, result in enumerate(results):
        expected = {1: TaskStatus.FAILED, 2: TaskStatus.FAILED, 3: TaskStatus.FAILED}.get(
            i % 10, TaskStatus.TIMED_OUT if i % 20 == 5 else TaskStatus.SUCCEEDED
        )
        assert result.status is expected, (i, result)
        assert len(result.gpu_indices) == i % 2
    assert results[1].error == "Fatal: a BaseException that is not cancellation"
    assert results[2].error == "SystemExit: 3"


# -- GPUs ----------------------------------------------------------------------


async def test_gpu_tasks_get_an_allocation_and_give_it_back(pool: GPUResourcePool) -> None:
    seen: dict[int, tuple[int, ...]] = {}

    async def task(item: int, allocation: GPUAllocation | None) -> str:
        assert allocation is not None
        seen[item] = allocation.gpu_indices
        return allocation.env["CUDA_VISIBLE_DEVICES"]

    async with ParallelRunner(pool, max_parallel=2) as runner:
        results = await runner.map(task, range(4), required_gpus=2, min_memory_mb=1000)
    assert all(len(gpus) == 2 for gpus in seen.values())
    assert [r.gpu_indices for r in results] == [seen[i] for i in range(4)]
    assert all(r.value.count("GPU-") == 2 for r in results)
    assert_all_gpus_free(pool)


async def test_cpu_tasks_complete_while_all_gpus_are_held(pool: GPUResourcePool) -> None:
    release = anyio.Event()

    async def long_gpu_task(item: int, allocation: GPUAllocation | None) -> None:
        await release.wait()

    async with ParallelRunner(pool, max_parallel=8) as runner:
        gpu_handles = [runner.submit(long_gpu_task, i, required_gpus=1) for i in range(8)]
        await anyio.wait_all_tasks_blocked()
        assert pool.statistics().free_gpus == ()
        assert [h.status for h in gpu_handles].count(TaskStatus.WAITING_FOR_GPU) == 4
        cpu = await runner.map(lambda item, allocation: item + 1, range(20))
        assert [r.value for r in cpu] == list(range(1, 21))
        assert not any(h.done() for h in gpu_handles)
        release.set()
    assert all(h.result is not None and h.result.ok for h in gpu_handles)
    assert_all_gpus_free(pool)


async def test_per_item_resources_come_from_the_item(pool: GPUResourcePool) -> None:
    configs = [{"gpus": 1, "mb": 100}, {"gpus": 3, "mb": 200}, {"gpus": 0, "mb": 0}]

    async def task(config: dict[str, int], allocation: GPUAllocation | None) -> int:
        return 0 if allocation is None else len(allocation.gpu_indices)

    async with ParallelRunner(pool, max_parallel=2) as runner:
        results = await runner.map(
            task, configs, required_gpus=lambda c: c["gpus"], min_memory_mb=lambda c: c["mb"]
        )
    assert [r.value for r in results] == [1, 3, 0]


async def test_an_impossible_request_fails_that_task_alone(pool: GPUResourcePool) -> None:
    async def task(item: int, allocation: GPUAllocation | None) -> int:
        return item

    async with ParallelRunner(pool, max_parallel=2) as runner:
        results = await runner.map(task, [1, 9, 2], required_gpus=lambda i: i, retries=3)
    assert [r.status for r in results] == [
        TaskStatus.SUCCEEDED,
        TaskStatus.FAILED,
        TaskStatus.SUCCEEDED,
    ]
    assert str(results[1].error).startswith("UnsatisfiableRequest")
    assert results[1].attempts == 1  # never retried: asking again cannot help


# -- timeouts --------------------------------------------------------------------


@trio_mockclock
async def test_timeout_cancels_the_coroutine_and_releases_its_gpus(anyio_backend: object) -> None:
    cleaned_up = []

    async def task(item: int, allocation: GPUAllocation | None) -> None:
        try:
            await anyio.sleep(3600)
        finally:
            cleaned_up.append(item)

    async with GPUResourcePool(FakeGPUProvider(count=4)) as pool:
        async with ParallelRunner(pool, max_parallel=4) as runner:
            start = anyio.current_time()
            results = await runner.map(task, range(4), required_gpus=1, timeout=30)
            assert anyio.current_time() - start == pytest.approx(30)
        assert_all_gpus_free(pool)
    assert sorted(cleaned_up) == [0, 1, 2, 3]
    assert all(r.status is TaskStatus.TIMED_OUT for r in results)
    assert all(r.duration_s == pytest.approx(30) for r in results)


async def test_abandoned_threads_cannot_starve_later_tasks() -> None:
    gate = threading.Event()

    def stuck(item: int, allocation: object) -> str:
        gate.wait(GENEROUS)
        return "late"

    def quick(item: int, allocation: object) -> str:
        return "quick"

    try:
        async with ParallelRunner(max_parallel=4, high_level_workers=1) as runner:
            timed_out = await runner.map(stuck, range(3), timeout=0.05)
            assert all(r.status is TaskStatus.TIMED_OUT for r in timed_out)
            high = runner.statistics().high_level
            assert (high.busy, high.abandoned_running) == (0, 3)
            # The only high-level worker slot is free although three threads run on.
            with anyio.fail_after(GENEROUS):
                assert [r.value for r in await runner.map(quick, range(3))] == ["quick"] * 3
    finally:
        gate.set()


# -- retries -----------------------------------------------------------------------


@trio_mockclock
async def test_retries_with_backoff_then_success(anyio_backend: object) -> None:
    attempts_at: list[float] = []

    async def flaky(item: int, allocation: GPUAllocation | None) -> str:
        attempts_at.append(anyio.current_time())
        if len(attempts_at) < 3:
            raise ConnectionError("transient")
        return "ok"

    async with ParallelRunner() as runner:
        (result,) = await runner.map(flaky, [0], retries=3, retry_backoff=10)
    assert (result.status, result.value, result.attempts) == (TaskStatus.SUCCEEDED, "ok", 3)
    gaps = [b - a for a, b in itertools.pairwise(attempts_at)]
    assert 5 <= gaps[0] <= 10  # 10 s, shortened by up to half by jitter
    assert 10 <= gaps[1] <= 20


@trio_mockclock
async def test_retry_on_selects_which_failures_are_retried(anyio_backend: object) -> None:
    calls: dict[str, int] = {}

    async def fails(item: str, allocation: GPUAllocation | None) -> None:
        calls[item] = calls.get(item, 0) + 1
        if item == "slow":
            await anyio.sleep(3600)
        raise {"value": ValueError, "key": KeyError, "oom": MemoryError}[item]("boom")

    async with ParallelRunner(max_parallel=4) as runner:
        by_type = await runner.map(fails, ["value", "key"], retries=2, retry_on=ValueError)
        by_predicate = await runner.map(
            fails, ["oom"], retries=2, retry_on=lambda e: isinstance(e, MemoryError)
        )
        timeouts = await runner.map(fails, ["slow"], retries=1, timeout=5, key=lambda i: "t")
    assert [r.attempts for r in by_type] == [3, 1]
    assert all(r.status is TaskStatus.FAILED for r in by_type + by_predicate)
    assert by_predicate[0].attempts == 3
    assert (timeouts[0].status, timeouts[0].attempts) == (TaskStatus.TIMED_OUT, 2)


# -- cancellation -------------------------------------------------------------------


@trio_mockclock
async def test_cancelling_mid_sweep_cancels_everything_and_frees_all_gpus(
    anyio_backend: object,
) -> None:
    started = []

    async def trial(item: int, allocation: GPUAllocation | None) -> None:
        started.append(item)
        await anyio.sleep(3600)

    async with GPUResourcePool(FakeGPUProvider(count=4)) as pool:
        handles = []
        start = anyio.current_time()
        with anyio.move_on_after(100) as scope:
            async with ParallelRunner(pool, max_parallel=4) as runner:
                handles = [runner.submit(trial, i, required_gpus=1, retries=5) for i in range(20)]
                handles += [runner.submit(trial, i) for i in range(20, 30)]
                await runner.map(trial, range(30, 40))
        assert scope.cancelled_caught
        assert anyio.current_time() - start == pytest.approx(100)
        assert_all_gpus_free(pool)
    assert all(h.result is not None for h in handles)
    assert {h.result.status for h in handles if h.result} == {TaskStatus.CANCELLED}
    assert all(h.result.attempts <= 1 for h in handles if h.result)  # never retried
    assert len(started) == 4


async def test_cancelling_one_task_leaves_the_others(pool: GPUResourcePool) -> None:
    release = anyio.Event()

    async def task(item: int, allocation: GPUAllocation | None) -> int:
        await release.wait()
        return item

    async with ParallelRunner(pool, max_parallel=4) as runner:
        handles = [runner.submit(task, i, required_gpus=1) for i in range(3)]
        await anyio.wait_all_tasks_blocked()
        handles[1].cancel()
        cancelled = await handles[1].wait()
        release.set()
        others = [await handles[0].wait(), await handles[2].wait()]
    assert cancelled.status is TaskStatus.CANCELLED
    assert [r.value for r in others] == [0, 2]
    assert_all_gpus_free(pool)


async def test_runner_cancel_ends_every_task_cancelled(pool: GPUResourcePool) -> None:
    async def forever(item: int, allocation: GPUAllocation | None) -> None:
        await anyio.sleep_forever()

    async with ParallelRunner(pool, max_parallel=2) as runner:
        handles = [runner.submit(forever, i, required_gpus=i % 2) for i in range(6)]
        await anyio.wait_all_tasks_blocked()
        runner.cancel()
    assert {h.result.status for h in handles if h.result} == {TaskStatus.CANCELLED}
    assert all(h.done() for h in handles)
    assert_all_gpus_free(pool)


@pytest.mark.parametrize("anyio_backend", ["trio"])  # asyncio re-raises it out of its loop
async def test_keyboard_interrupt_is_not_swallowed(pool: GPUResourcePool) -> None:
    def interrupted(item: int, allocation: GPUAllocation | None) -> None:
        raise KeyboardInterrupt

    async def forever(item: int, allocation: GPUAllocation | None) -> None:
        await anyio.sleep_forever()

    async def sweep() -> None:
        async with ParallelRunner(pool, max_parallel=3) as runner:
            runner.submit(forever, 0, required_gpus=1)
            await runner.map(interrupted, [1])

    with pytest.raises(BaseException) as caught:  # noqa: PT011 - bare or in a group
        await sweep()
    group = caught.value
    assert isinstance(group, KeyboardInterrupt) or (
        isinstance(group, BaseExceptionGroup) and group.subgroup(KeyboardInterrupt) is not None
    )
    assert_all_gpus_free(pool)


# -- keys, streaming, nesting ---------------------------------------------------


async def test_a_key_runs_once() -> None:
    calls = []

    async def task(item: int, allocation: object) -> int:
        calls.append(item)
        await checkpoint()
        return item

    async with ParallelRunner(max_parallel=2) as runner:
        first = runner.submit(task, 1, key="same")
        assert runner.submit(task, 2, key="same") is first
        results = await runner.map(task, [5, 6, 5], key=str)
    assert sorted(calls) == [1, 5, 6]
    assert [r.value for r in results] == [5, 6, 5]


async def test_a_finished_key_still_runs_once() -> None:
    async def task(item: int, allocation: object) -> int:
        return item

    async with ParallelRunner() as runner:
        first = runner.submit(task, 1, key="k")
        await first.wait()
        assert runner.submit(task, 2, key="k") is first
        assert runner.statistics().submitted == 1


class _Item:
    """An item that can be watched for being freed."""


async def test_a_long_sweep_keeps_nothing_of_its_finished_tasks(pool: GPUResourcePool) -> None:
    """A runner that serves sweep after sweep must not keep every item and
    result alive: memory would grow without bound, and so would the cost of
    each garbage collection."""
    import gc
    import weakref

    async def task(item: _Item, allocation: object) -> _Item:
        await checkpoint()
        return item

    async with ParallelRunner(pool, max_parallel=4) as runner:
        items = [_Item() for _ in range(50)]
        watchers = [weakref.ref(item) for item in items]
        results = await runner.map(task, items, required_gpus=1)
        handle = runner.submit(task, _Item())
        watchers.append(weakref.ref(handle.item))
        await handle.wait()
        assert all(r.ok for r in results)
        del items, results, handle
        gc.collect()
        assert [w for w in watchers if w() is not None] == []
        assert runner.statistics().submitted == 51


async def test_as_completed_yields_in_completion_order() -> None:
    gates = [anyio.Event() for _ in range(3)]

    async def task(item: int, allocation: object) -> int:
        await gates[item].wait()
        return item

    async with ParallelRunner(max_parallel=3) as runner:
        handles = [runner.submit(task, i) for i in range(3)]
        gates[2].set()
        order = []
        async for handle in runner.as_completed(handles):
            assert handle.result is not None
            order.append(handle.result.value)
            gates[[0, 1, 1][len(order) - 1]].set()
    assert order == [2, 0, 1]


async def test_nested_run_blocking_inside_plain_tasks_cannot_deadlock() -> None:
    """The issue's scenario through the runner: 5 samples, 4/4 workers, 2 timed calls each."""
    barrier = threading.Barrier(4)
    passed = threading.Event()

    def low(item: int) -> int:
        if not passed.is_set():
            barrier.wait(GENEROUS)  # all four high-level threads wait on low-level calls at once
            passed.set()
        time.sleep(0.002)
        return item

    def sample(item: int, allocation: object) -> int:
        return int(run_blocking(low, item, timeout=GENEROUS)) + int(
            run_blocking(low, item, timeout=GENEROUS)
        )

    async with ParallelRunner(max_parallel=5, high_level_workers=4, low_level_workers=4) as runner:
        with anyio.fail_after(GENEROUS):
            results = await runner.map(sample, range(5))
    assert [r.value for r in results] == [0, 2, 4, 6, 8]
    assert [r.status for r in results] == [TaskStatus.SUCCEEDED] * 5


async def test_nesting_three_deep_on_one_worker_executors() -> None:
    def level(depth: int) -> int:
        if depth == 3:
            return depth
        return int(run_blocking(level, depth + 1, timeout=GENEROUS))

    def sample(item: int, allocation: object) -> int:
        return int(run_blocking(level, 1, timeout=GENEROUS)) + int(
            run_blocking(level, 1, timeout=GENEROUS)
        )

    async with ParallelRunner(max_parallel=3, high_level_workers=1, low_level_workers=1) as runner:
        with anyio.fail_after(GENEROUS):
            results = await runner.map(sample, range(3))
    assert [r.value for r in results] == [6, 6, 6]


# -- validation ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_parallel": 0}, "max_parallel must be an int >= 1, got 0"),
        ({"max_parallel": True}, "max_parallel must be an int >= 1, got True"),
        ({"high_level_workers": 0}, "high_level_workers must be an int >= 1, got 0"),
        ({"low_level_workers": 2.5}, "low_level_workers must be an int >= 1, got 2.5"),
        ({"journal": 42}, "journal must be None, a path"),
        ({"pool": "gpu0"}, "pool must be a GPUResourcePool, a cluster"),
    ],
)
def test_constructor_arguments_are_validated(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises((TypeError, ValueError), match=match):
        ParallelRunner(**kwargs)


async def test_submit_arguments_are_validated() -> None:
    async def task(item: int, allocation: object) -> None:
        pass

    async with ParallelRunner() as runner:
        with pytest.raises(ValueError, match=r"required_gpus=1 needs a pool"):
            runner.submit(task, 0, required_gpus=1)
        with pytest.raises(ValueError, match="required_gpus must be an int >= 0, got -1"):
            runner.submit(task, 0, required_gpus=-1)
        with pytest.raises(ValueError, match="timeout must be None or a number of seconds >= 0"):
            runner.submit(task, 0, timeout=-1)
        with pytest.raises(ValueError, match="retries must be an int >= 0, got -1"):
            runner.submit(task, 0, retries=-1)
        with pytest.raises(TypeError, match="retry_on must be an exception type"):
            runner.submit(task, 0, retry_on="ValueError")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="retry_backoff must be"):
            runner.submit(task, 0, retry_backoff=-1)
        with pytest.raises(TypeError, match="fn must be callable"):
            runner.submit(None, 0)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="key must be a non-empty str or None, got 3"):
            runner.submit(task, 0, key=3)  # type: ignore[arg-type]
        assert runner.statistics().submitted == 0


async def test_submit_needs_an_open_runner() -> None:
    runner = ParallelRunner()
    with pytest.raises(RuntimeError, match="needs an open runner"):
        runner.submit(lambda item, allocation: None, 0)
    async with runner:
        pass
    with pytest.raises(RuntimeError, match="needs an open runner"):
        runner.submit(lambda item, allocation: None, 0)


async def test_an_error_in_the_body_comes_out_unwrapped() -> None:
    async def forever(item: int, allocation: object) -> None:
        await anyio.sleep_forever()

    async def body() -> None:
        async with ParallelRunner() as runner:
            runner.submit(forever, 0)
            await anyio.wait_all_tasks_blocked()
            raise LookupError("from the body")

    with pytest.raises(LookupError, match="from the body"):
        await body()


async def test_cancelling_map_cancels_the_tasks_it_started(pool: GPUResourcePool) -> None:
    async def forever(item: int, allocation: GPUAllocation | None) -> None:
        await anyio.sleep_forever()

    events: list[TaskStatus] = []
    async with ParallelRunner(pool, max_parallel=4) as runner:
        runner.subscribe(lambda event: events.append(event.status))
        with anyio.move_on_after(0.05) as scope:
            await runner.map(forever, range(6), required_gpus=1)
        assert scope.cancelled_caught
        await anyio.wait_all_tasks_blocked()
        stats = runner.statistics()
        assert (stats.submitted, stats.finished, stats.running) == (6, 6, 0)
    assert events.count(TaskStatus.CANCELLED) == 6
    assert_all_gpus_free(pool)


async def test_async_tasks_use_the_runners_executors_for_run_blocking() -> None:
    from gpupool._runner.executors import current_executors

    seen = []

    async def task(item: int, allocation: object) -> int:
        seen.append(current_executors())
        return int(await run_blocking(pow, item, 2))

    async with ParallelRunner(max_parallel=2, low_level_workers=1) as runner:
        results = await runner.map(task, range(3))
        stats = runner.statistics()
    assert [r.value for r in results] == [0, 1, 4]
    assert {id(e) for e in seen} == {id(runner._executors)}
    assert stats.low_level.workers == 1
    assert (stats.low_level.busy, stats.high_level.busy) == (0, 0)
    assert stats.max_parallel == 2


async def test_cancelling_returns_promptly_even_with_threads_stuck(pool: GPUResourcePool) -> None:
    gate = threading.Event()

    def stuck(item: int, allocation: GPUAllocation | None) -> None:
        gate.wait(GENEROUS)

    try:
        with anyio.fail_after(GENEROUS / 2):  # far less than the stuck threads would take
            with anyio.move_on_after(0.1):
                async with ParallelRunner(pool, max_parallel=4) as runner:
                    await runner.map(stuck, range(4), required_gpus=1)
            assert_all_gpus_free(pool)
            assert runner.statistics().high_level.abandoned_running == 4
    finally:
        gate.set()
