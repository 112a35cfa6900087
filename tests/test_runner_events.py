"""Task events: the order of transitions on every path, subscribers, the journal hook."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator

import anyio
import attrs
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream
from rich.console import Console
from trio.testing import MockClock

from gpupool import (
    FakeGPUProvider,
    GPUAllocation,
    GPUResourcePool,
    ParallelRunner,
    ProgressDisplay,
    TaskEvent,
    TaskJournal,
    TaskResult,
    TaskStatus,
)

pytestmark = pytest.mark.anyio

Q, W, R, RETRY = (
    TaskStatus.QUEUED,
    TaskStatus.WAITING_FOR_GPU,
    TaskStatus.RUNNING,
    TaskStatus.RETRYING,
)
OK, FAIL, TIMEOUT, CANCEL = (
    TaskStatus.SUCCEEDED,
    TaskStatus.FAILED,
    TaskStatus.TIMED_OUT,
    TaskStatus.CANCELLED,
)


@pytest.fixture
async def pool() -> AsyncIterator[GPUResourcePool]:
    async with GPUResourcePool(FakeGPUProvider(count=2)) as pool:
        yield pool


def by_key(events: list[TaskEvent]) -> dict[str, list[TaskStatus]]:
    paths: dict[str, list[TaskStatus]] = {}
    for event in events:
        paths.setdefault(event.key, []).append(event.status)
    return paths


async def behave(item: str, allocation: GPUAllocation | None) -> str:
    if item == "fail":
        raise ValueError("always")
    if item in ("slow", "blocked"):
        await anyio.sleep_forever()
    return item


async def test_events_follow_each_path_in_order(pool: GPUResourcePool) -> None:
    events: list[TaskEvent] = []
    async with ParallelRunner(pool, max_parallel=4) as runner:
        runner.subscribe(events.append)
        await runner.map(behave, ["cpu"], key=str)
        await runner.map(behave, ["gpu"], key=str, required_gpus=1)
        await runner.map(behave, ["fail"], key=str, retries=1, retry_backoff=0)
        await runner.map(behave, ["slow"], key=str, timeout=0.01)
        # Hold both GPUs so that "blocked" waits for one, then cancel it there.
        holders = [runner.submit(behave, "slow", key=f"holder{i}", required_gpus=1) for i in (0, 1)]
        await anyio.wait_all_tasks_blocked()
        waiting = runner.submit(behave, "blocked", key="blocked", required_gpus=1)
        await anyio.wait_all_tasks_blocked()
        assert waiting.status is W
        waiting.cancel()
        await waiting.wait()
        for holder in holders:
            holder.cancel()
    paths = by_key(events)
    assert paths["cpu"] == [Q, R, OK]
    assert paths["gpu"] == [Q, W, R, OK]
    assert paths["fail"] == [Q, R, RETRY, R, FAIL]
    assert paths["slow"] == [Q, R, TIMEOUT]
    assert paths["blocked"] == [Q, W, CANCEL]
    assert paths["holder0"] == [Q, W, R, CANCEL]
    times = [e.time for e in events]
    assert times == sorted(times)
    fail = [e for e in events if e.key == "fail"]
    assert [e.attempt for e in fail] == [0, 1, 1, 2, 2]
    assert fail[2].error == "ValueError: always"
    gpu = [e for e in events if e.key == "gpu"]
    assert [len(e.gpu_indices) for e in gpu] == [0, 0, 1, 1]


async def test_async_iterator_sees_the_same_events_and_ends_with_the_runner() -> None:
    seen: list[TaskEvent] = []
    callback_seen: list[TaskEvent] = []

    async def read(stream: MemoryObjectReceiveStream[TaskEvent]) -> None:
        async with stream:
            async for event in stream:
                seen.append(event)

    async with anyio.create_task_group() as tg, ParallelRunner(max_parallel=2) as runner:
        tg.start_soon(read, runner.events())
        runner.subscribe(callback_seen.append)
        await runner.map(behave, ["a", "b", "fail"], key=str)
    assert seen == callback_seen
    assert by_key(seen) == {"a": [Q, R, OK], "b": [Q, R, OK], "fail": [Q, R, FAIL]}


async def test_a_subscriber_that_raises_is_logged_and_the_run_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(event: TaskEvent) -> None:
        raise RuntimeError("subscriber bug")

    async with ParallelRunner() as runner:
        runner.subscribe(broken)
        results = await runner.map(behave, ["a"])
    assert results[0].ok
    assert "subscriber bug" in caplog.text


async def test_unsubscribe_and_closing_the_iterator_stop_delivery() -> None:
    events: list[TaskEvent] = []
    async with ParallelRunner() as runner:
        unsubscribe = runner.subscribe(events.append)
        stream = runner.events()
        await runner.map(behave, ["a"])
        unsubscribe()
        await stream.aclose()
        await runner.map(behave, ["b"])
    assert {e.key for e in events} == {"task-0"}


class MemoryJournal:
    """A test double with the TaskJournal methods; logs what the runner tells it."""

    def __init__(self, finished: dict[str, TaskResult] | None = None) -> None:
        self.log: list[tuple[str, TaskStatus]] = []
        self.results: dict[str, TaskResult] = dict(finished or {})

    async def finished(self, key: str) -> TaskResult | None:
        return self.results.get(key)

    async def record(self, event: TaskEvent, result: TaskResult | None) -> None:
        await anyio.lowlevel.checkpoint()  # a real journal awaits its write
        self.log.append((event.key, event.status))
        if result is not None:
            self.results[event.key] = result


async def test_the_journal_hears_each_change_before_it_is_acted_on() -> None:
    journal = MemoryJournal()
    assert isinstance(journal, TaskJournal)
    seen_in_journal: list[list[tuple[str, TaskStatus]]] = []

    async def task(item: str, allocation: GPUAllocation | None) -> str:
        seen_in_journal.append(list(journal.log))
        return item

    async with ParallelRunner(journal=journal) as runner:
        (result,) = await runner.map(task, ["x"], key=str)
    assert seen_in_journal == [[("x", Q), ("x", R)]]
    assert journal.log == [("x", Q), ("x", R), ("x", OK)]
    assert journal.results["x"] == result


async def test_finished_keys_come_from_the_journal_without_running() -> None:
    done = TaskResult(key="x", status=OK, value=41, attempts=1)
    journal = MemoryJournal({"x": done})
    ran: list[str] = []
    events: list[TaskEvent] = []

    async def task(item: str, allocation: GPUAllocation | None) -> str:
        ran.append(item)
        return item

    async with ParallelRunner(journal=journal) as runner:
        runner.subscribe(events.append)
        results = await runner.map(task, ["x", "y"], key=str)
    assert ran == ["y"]
    assert (results[0].value, results[0].from_journal) == (41, True)
    assert not results[1].from_journal
    assert [(e.key, e.status, e.from_journal) for e in events if e.key == "x"] == [("x", OK, True)]
    assert ("x", OK) not in journal.log  # a replayed result is not written again


class KeyedJournal(MemoryJournal):
    """A journal double that offers what the SQLite journal offers beyond TaskJournal."""

    def __init__(self) -> None:
        super().__init__()
        self.described: list[tuple[str, object]] = []

    def default_key(self, fn: object, item: object) -> str:
        return f"stable-{item}"

    def storable(self, result: TaskResult) -> TaskResult:
        return attrs.evolve(result, value=f"stored {result.value}")

    def describe(self, key: str, fn: object, item: object) -> None:
        self.described.append((key, item))


async def test_every_journal_is_asked_alike_for_keys_and_storable_results() -> None:
    """Regression: the runner derived default keys and made results storable only for
    the SQLite journal (an isinstance check); now any journal that offers
    default_key / storable / describe is asked, and one that does not gets numbered keys."""

    async def task(item: int, allocation: GPUAllocation | None) -> int:
        return item

    keyed = KeyedJournal()
    async with ParallelRunner(journal=keyed) as runner:
        results = await runner.map(task, [1, 2])
    assert [r.key for r in results] == ["stable-1", "stable-2"]
    assert [r.value for r in results] == ["stored 1", "stored 2"]
    assert keyed.described == [("stable-1", 1), ("stable-2", 2)]

    plain = MemoryJournal()
    async with ParallelRunner(journal=plain) as runner:
        results = await runner.map(task, [1, 2])
    assert [r.key for r in results] == ["task-0", "task-1"]
    assert [r.value for r in results] == [1, 2]


@pytest.mark.parametrize(
    "anyio_backend",
    [pytest.param(("trio", {"clock": MockClock(autojump_threshold=0)}), id="trio-mockclock")],
)
async def test_progress_display_counts_every_outcome(anyio_backend: object) -> None:
    output = io.StringIO()
    console = Console(file=output, width=120, force_terminal=False)

    async def task(item: int, allocation: GPUAllocation | None) -> int:
        await anyio.sleep(item)
        if item % 3 == 0:
            raise ValueError(item)
        return item

    async with ParallelRunner(max_parallel=3) as runner:
        with ProgressDisplay(runner, total=9, console=console) as progress:
            await runner.map(task, range(9))
            counts = progress.counts
    assert counts[OK] == 6
    assert counts[FAIL] == 3
    text = output.getvalue()
    assert "9/9" in text
    assert "failed 3" in text


async def test_a_done_callback_that_raises_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    def broken(handle: object) -> None:
        raise RuntimeError("callback bug")

    async with ParallelRunner() as runner:
        handle = runner.submit(behave, "a")
        handle.add_done_callback(broken)
        result = await handle.wait()
    assert result.ok
    assert "callback bug" in caplog.text
