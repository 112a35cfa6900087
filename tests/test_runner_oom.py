"""Out-of-memory retries that learn: the runner grows a task's reservation, the
journal remembers it, and a resumed sweep starts with it (docs/memory.md)."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import anyio
import pytest

from gpupool import (
    FakeGPUProvider,
    GPUAllocation,
    GPUResourcePool,
    Journal,
    JournalError,
    LearnedMemory,
    ParallelRunner,
    TaskEvent,
    TaskStatus,
)

GIB = 1024


class OutOfMemoryError(RuntimeError):
    """What torch.cuda.OutOfMemoryError looks like to gpupool: its name."""


class Needs:
    """A task that runs out of memory unless its allocation reserved ``mb`` (or is exclusive)."""

    def __init__(self, mb: int) -> None:
        self.mb = mb
        self.seen: list[tuple[int, bool]] = []

    async def __call__(self, item: object, allocation: GPUAllocation | None) -> int:
        assert allocation is not None
        self.seen.append((allocation.memory_mb, allocation.exclusive))
        if not allocation.exclusive and allocation.memory_mb < self.mb:
            raise OutOfMemoryError(f"Tried to allocate {self.mb - allocation.memory_mb} MiB")
        return allocation.memory_mb


def _pool() -> GPUResourcePool:
    return GPUResourcePool(FakeGPUProvider(count=2, memory_mb=24 * GIB))


@pytest.mark.anyio
async def test_a_task_that_runs_out_of_memory_grows_until_it_fits(tmp_path: Path) -> None:
    task = Needs(16_000)
    events: list[TaskEvent] = []
    path = tmp_path / "sweep.sqlite"
    async with _pool() as pool, ParallelRunner(pool, max_parallel=2, journal=path) as runner:
        runner.subscribe(events.append)
        handle = runner.submit(
            task,
            1,
            key="train",
            required_gpus=1,
            min_memory_mb=2 * GIB,
            exclusive=False,
            retries=4,
            retry_backoff=0,
        )
        result = await handle.wait()
    assert result.status is TaskStatus.SUCCEEDED
    assert result.attempts == 3
    # 2G, then max(2m, m + 24G/4): 8G, then 16G, which fits.
    assert task.seen == [(2 * GIB, False), (8 * GIB, False), (16 * GIB, False)]
    assert handle.resources.min_memory_mb == 16 * GIB
    retrying = [e for e in events if e.status is TaskStatus.RETRYING]
    assert [e.out_of_memory for e in retrying] == [True, True]
    assert [e.resources.min_memory_mb for e in retrying if e.resources] == [8 * GIB, 16 * GIB]
    assert "OutOfMemoryError: Tried to allocate" in (retrying[0].error or "")
    (final,) = [e for e in events if e.status.is_final]
    assert final.resources is not None
    assert (final.resources.min_memory_mb, final.out_of_memory) == (16 * GIB, False)
    with Journal(path) as journal:
        assert journal.learned_resources("train") == LearnedMemory(16 * GIB, exclusive=False)
    with sqlite3.connect(path) as conn:
        notes = [n for (n,) in conn.execute("SELECT note FROM events WHERE status = 'retrying'")]
    # Each retrying event's note: the attempt's error, then what the next one asks for.
    assert [note.split("; ", 1)[0].split(":")[0] for note in notes] == ["OutOfMemoryError"] * 2
    assert [note.split("; ", 1)[1] for note in notes] == [
        "out of GPU memory; the next attempt asks for 8192 MB shared",
        "out of GPU memory; the next attempt asks for 16384 MB shared",
    ]


@pytest.mark.anyio
async def test_growth_ends_in_an_exclusive_gpu() -> None:
    task = Needs(30_000)  # more than any GPU: only a GPU of its own will do
    async with _pool() as pool, ParallelRunner(pool, max_parallel=2) as runner:
        (result,) = await runner.map(
            task, [1], required_gpus=1, min_memory_mb=2 * GIB, exclusive=False,
            retries=5, retry_backoff=0,
        )  # fmt: skip
    assert result.status is TaskStatus.SUCCEEDED
    assert task.seen == [(2 * GIB, False), (8 * GIB, False), (16 * GIB, False), (16 * GIB, True)]


@pytest.mark.anyio
async def test_without_retries_left_the_task_fails_and_says_it_ran_out_of_memory() -> None:
    task = Needs(16_000)
    events: list[TaskEvent] = []
    async with _pool() as pool, ParallelRunner(pool, max_parallel=2) as runner:
        runner.subscribe(events.append)
        (result,) = await runner.map(
            task, [1], required_gpus=1, min_memory_mb=2 * GIB, exclusive=False,
            retries=1, retry_backoff=0,
        )  # fmt: skip
    assert result.status is TaskStatus.FAILED
    assert task.seen == [(2 * GIB, False), (8 * GIB, False)]
    (final,) = [e for e in events if e.status.is_final]
    assert final.out_of_memory


@pytest.mark.anyio
async def test_an_exclusive_task_is_retried_as_it_is_and_other_failures_do_not_grow() -> None:
    seen: list[tuple[int, bool]] = []

    async def flaky(item: str, allocation: GPUAllocation | None) -> None:
        assert allocation is not None
        seen.append((allocation.memory_mb, allocation.exclusive))
        if len(seen) < 3:
            raise (RuntimeError("CUDA out of memory") if item == "oom" else ValueError("nan"))

    for item, exclusive in (("oom", True), ("nan", False)):
        seen.clear()
        events: list[TaskEvent] = []
        async with _pool() as pool, ParallelRunner(pool, max_parallel=2) as runner:
            runner.subscribe(events.append)
            (result,) = await runner.map(
                flaky, [item], required_gpus=1, min_memory_mb=1000, exclusive=exclusive,
                retries=2, retry_backoff=0,
            )  # fmt: skip
        assert result.status is TaskStatus.SUCCEEDED
        assert seen == [(1000, exclusive)] * 3
        retrying = [e for e in events if e.status is TaskStatus.RETRYING]
        assert [e.out_of_memory for e in retrying] == [item == "oom"] * 2


@pytest.mark.anyio
async def test_a_cpu_task_that_runs_out_of_memory_is_retried_without_a_request() -> None:
    calls = 0
    events: list[TaskEvent] = []

    async def once_oom(item: int, allocation: GPUAllocation | None) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OutOfMemoryError("CUDA out of memory")
        return item

    async with ParallelRunner(max_parallel=1) as runner:
        runner.subscribe(events.append)
        (result,) = await runner.map(once_oom, [5], retries=1, retry_backoff=0)
    assert (result.value, result.attempts) == (5, 2)
    assert all(e.resources is None for e in events)


@pytest.mark.anyio
async def test_a_resumed_sweep_starts_the_task_with_the_grown_size(tmp_path: Path) -> None:
    path = tmp_path / "sweep.sqlite"
    first: list[int] = []
    second_attempt = anyio.Event()

    async def stops_on_the_second_try(item: int, allocation: GPUAllocation | None) -> int:
        assert allocation is not None
        first.append(allocation.memory_mb)
        if len(first) == 1:
            raise OutOfMemoryError("Tried to allocate 4.00 GiB")
        second_attempt.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async with _pool() as pool:
        # The sweep is stopped while the grown attempt runs (Ctrl-C, a crash).
        with anyio.move_on_after(30):
            async with ParallelRunner(pool, max_parallel=2, journal=path) as runner:
                handle = runner.submit(
                    stops_on_the_second_try, 1, key="train", required_gpus=1,
                    min_memory_mb=2 * GIB, exclusive=False, retries=3, retry_backoff=0,
                )  # fmt: skip
                await second_attempt.wait()
                runner.cancel()
        assert handle.result is not None
        assert handle.result.status is TaskStatus.CANCELLED
        assert first == [2 * GIB, 8 * GIB]

        task = Needs(4 * GIB)
        events: list[TaskEvent] = []
        async with ParallelRunner(pool, max_parallel=2, journal=path) as runner:
            runner.subscribe(events.append)
            (result,) = await runner.map(
                task, [1], key=lambda _: "train", required_gpus=1, min_memory_mb=2 * GIB,
                exclusive=False, retries=3, retry_backoff=0,
            )  # fmt: skip
    assert result.status is TaskStatus.SUCCEEDED
    assert task.seen == [(8 * GIB, False)]  # straight at the learned size, no OOM first
    queued = next(e for e in events if e.status is TaskStatus.QUEUED)
    assert queued.resources is not None
    assert queued.resources.min_memory_mb == 8 * GIB


@pytest.mark.anyio
async def test_a_learned_size_never_shrinks_a_request_raised_since(tmp_path: Path) -> None:
    path = tmp_path / "sweep.sqlite"
    with Journal(path) as journal:
        journal.claim("train")
        journal.record("train", TaskStatus.RETRYING, attempt=1, learned=LearnedMemory(4096, False))
    task = Needs(0)
    async with _pool() as pool, ParallelRunner(pool, max_parallel=2, journal=path) as runner:
        await runner.map(
            task, [1], key=lambda _: "train", required_gpus=1, min_memory_mb=10_000,
            exclusive=False,
        )  # fmt: skip
    assert task.seen == [(10_000, False)]


@pytest.mark.anyio
async def test_a_damaged_learned_size_stops_the_run_as_any_damaged_row(tmp_path: Path) -> None:
    path = tmp_path / "sweep.sqlite"
    with Journal(path) as journal:
        journal.claim("train")
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute('UPDATE tasks SET learned_resources = \'{"min_memory_mb": "lots"}\'')
    task = Needs(0)
    with pytest.raises(JournalError, match="row for task 'train' is damaged"):
        async with _pool() as pool, ParallelRunner(pool, max_parallel=2, journal=path) as runner:
            await runner.map(
                task, [1], key=lambda _: "train", required_gpus=1, min_memory_mb=3000,
                exclusive=False,
            )  # fmt: skip
    assert task.seen == []


class _Forgetful:
    """A journal of its own whose learned_resources fails."""

    async def finished(self, key: str) -> None:
        return None

    async def record(self, event: TaskEvent, result: object) -> None:
        pass

    def learned_resources(self, key: str) -> LearnedMemory | None:
        raise OSError("the notes are gone")


@pytest.mark.anyio
async def test_a_journal_that_cannot_say_what_it_learned_stops_the_run() -> None:
    task = Needs(0)
    with pytest.raises(OSError, match="the notes are gone"):
        async with _pool() as pool, ParallelRunner(pool, journal=_Forgetful()) as runner:
            await runner.map(task, [1], required_gpus=1, min_memory_mb=3000, exclusive=False)
    assert task.seen == []
