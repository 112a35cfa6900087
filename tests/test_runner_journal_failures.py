"""When the journal cannot do its part: one rule for every failure to commit.

Before issue 10 the rule depended on the change: a failing ``record()`` at
RUNNING became the task's own error (and ``retry_on=Exception`` retried it),
while one at RETRYING or at the final state crashed the runner. Now every
change follows docs/journal.md, "When the journal fails": the change is not
acted on, the run stops, nothing more is written, and ``async with`` raises
that one error. The first tests fail each change in turn and check all of
that; the others cover a claim that fails, a file that is not a journal, and a
result the journal cannot store (that fails its task alone, not the run).
"""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from gpupool import (
    FakeGPUProvider,
    GPUAllocation,
    GPUResourcePool,
    Journal,
    JournalError,
    ParallelRunner,
    TaskEvent,
    TaskResult,
    TaskStatus,
)

pytestmark = pytest.mark.anyio


class JournalFailingAt:
    """A `TaskJournal` whose ``record`` fails at one status, the first time only."""

    def __init__(self, status: TaskStatus) -> None:
        self.status = status
        self.error = OSError(f"disk full at {status.value}")
        self.recorded: list[tuple[str, TaskStatus, int]] = []
        self.failed = False

    async def finished(self, key: str) -> TaskResult | None:
        return None

    async def record(self, event: TaskEvent, result: TaskResult | None) -> None:
        if self.failed:
            raise AssertionError(f"written after the failure: {event}")
        if event.status is self.status:
            self.failed = True
            raise self.error
        self.recorded.append((event.key, event.status, event.attempt))


class Calls:
    """A task function that fails its first attempt (so that RETRYING happens)."""

    def __init__(self) -> None:
        self.attempts = 0

    async def __call__(self, item: int, allocation: GPUAllocation | None) -> int:
        self.attempts += 1
        await anyio.lowlevel.checkpoint()
        if self.attempts == 1:
            raise ValueError("first attempt fails")
        return item


# What must not have happened once the change at each status failed.
FAILING = [
    pytest.param(TaskStatus.WAITING_FOR_GPU, 0, id="waiting_for_gpu"),
    pytest.param(TaskStatus.RUNNING, 0, id="running"),
    pytest.param(TaskStatus.RETRYING, 1, id="retrying"),
    pytest.param(TaskStatus.SUCCEEDED, 2, id="final"),
]


@pytest.mark.parametrize(("status", "attempts_run"), FAILING)
async def test_a_failed_change_stops_the_run_with_that_one_error(
    status: TaskStatus, attempts_run: int
) -> None:
    journal = JournalFailingAt(status)
    calls = Calls()
    handles = []
    body_went_on = False

    async def run(pool: GPUResourcePool) -> None:
        nonlocal body_went_on
        async with ParallelRunner(pool, max_parallel=1, journal=journal) as runner:
            handles.append(
                runner.submit(calls, 7, key="t", required_gpus=1, retries=3, retry_on=Exception)
            )
            await handles[0].wait()
            body_went_on = True

    async with GPUResourcePool(FakeGPUProvider(count=1)) as pool:
        with pytest.raises(OSError, match="disk full at") as info:
            await run(pool)
        # Every GPU is back, whichever change failed.
        assert pool.statistics().holder_count == 0
    # That one error, as the journal raised it: not a group, not the task's error.
    assert info.value is journal.error
    assert not body_went_on
    # The failed change was not acted on: RUNNING not committed, the task does
    # not start; RETRYING not committed, no second attempt (retry_on=Exception
    # does not retry a journal failure); the final result is not handed out.
    assert calls.attempts == attempts_run
    (handle,) = handles
    assert handle.result is not None
    assert handle.result.status is TaskStatus.CANCELLED
    assert "journal failed (disk full at" in str(handle.result.error)
    # Nothing was written after the failure (record() asserts it), and what was
    # written before is the task's life up to the failed change.
    assert journal.failed
    assert all(recorded_status is not status for _, recorded_status, _ in journal.recorded)


@pytest.mark.parametrize(
    "status",
    [TaskStatus.RUNNING, TaskStatus.RETRYING, TaskStatus.SUCCEEDED],
    ids=["running", "retrying", "final"],
)
async def test_the_sqlite_journal_follows_the_same_rule(tmp_path: Path, status: TaskStatus) -> None:
    """The same rule through the real journal: one `JournalError`, and the
    journal keeps the last state it could commit."""
    calls = Calls()
    with Journal(tmp_path / "j.sqlite") as journal:
        assert journal._conn is not None
        journal._conn.execute(
            "CREATE TRIGGER fail BEFORE INSERT ON events "
            f"WHEN NEW.status = '{status.value}' "
            "BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        )
        with pytest.raises(JournalError, match="disk full") as info:
            async with ParallelRunner(max_parallel=1, journal=journal) as runner:
                await runner.map(calls, [7], key=str, retries=3, retry_on=Exception)
        assert type(info.value) is JournalError  # one error, not a group of them
        (record,) = journal.records()
        assert record.status is not status
        assert not record.status.is_final  # unfinished: the next run runs it again
    assert calls.attempts == {TaskStatus.RUNNING: 0, TaskStatus.RETRYING: 1}.get(status, 2)


async def test_a_journal_that_fails_to_claim_stops_the_run() -> None:
    """The one rule for journal failures (issue 10 item 7): a journal that
    cannot commit stops the run with that one error; it used to fail that
    task alone, and the sweep went on with a journal that could not write."""

    class Flaky:
        def __init__(self) -> None:
            self.recorded: list[tuple[str, TaskStatus]] = []

        async def finished(self, key: str) -> TaskResult | None:
            if key == "bad":
                raise OSError("disk full")
            return None

        async def record(self, event: TaskEvent, result: TaskResult | None) -> None:
            self.recorded.append((event.key, event.status))

    ran: list[str] = []

    async def task(item: str, allocation: GPUAllocation | None) -> str:
        ran.append(item)
        await anyio.sleep(1)
        return item

    journal = Flaky()
    handles = []

    async def run() -> None:
        async with ParallelRunner(max_parallel=3, journal=journal) as runner:
            handles.extend(runner.submit(task, item, key=item) for item in ("ok", "bad", "later"))
            async for _ in runner.as_completed(handles):  # the failure stops this body too
                pass

    with pytest.raises(OSError, match="disk full") as info:
        await run()
    assert type(info.value) is OSError
    assert "bad" not in ran
    results = [h.result for h in handles]
    assert [r.status for r in results if r] == [TaskStatus.CANCELLED] * 3
    assert all("journal failed (disk full)" in str(r.error) for r in results if r)
    # Nothing more was written once the journal failed, and "bad" never was.
    assert all(key != "bad" for key, _ in journal.recorded)
    assert not any(status is TaskStatus.CANCELLED for _, status in journal.recorded)


async def square(item: int, allocation: GPUAllocation | None) -> int:
    """A named task function, so that default keys can be derived from it."""
    await anyio.lowlevel.checkpoint()
    return item * item


async def test_a_journal_that_cannot_write_stops_the_runner(tmp_path: Path) -> None:
    """A result that cannot be committed must not be handed out as if it were."""
    with Journal(tmp_path / "j.sqlite") as journal:
        assert journal._conn is not None
        journal._conn.execute(
            "CREATE TRIGGER fail BEFORE UPDATE ON tasks WHEN NEW.status = 'succeeded' "
            "BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        )
        with pytest.raises(JournalError, match="disk full") as info:
            async with ParallelRunner(max_parallel=2, journal=journal) as runner:
                await runner.map(square, [1, 2, 3])
        assert type(info.value) is JournalError  # one error, not a group of them
        assert all(r.status is not TaskStatus.SUCCEEDED for r in journal.records())
        assert not journal.closed  # borrowed: left open for its owner


async def test_runner_on_a_file_that_is_not_a_journal(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    runner = ParallelRunner(journal=notes)
    with pytest.raises(JournalError, match="is not a gpupool journal"):
        async with runner:
            pass  # pragma: no cover
    assert notes.read_text() == "my notes\n"
    assert os.listdir(tmp_path) == ["notes.txt"]


async def tuple_of_object(item: int, allocation: GPUAllocation | None) -> object:
    return {"ok": 1} if item else {"model": object()}


async def test_unencodable_result_fails_that_task_only(tmp_path: Path) -> None:
    async with ParallelRunner(max_parallel=2, journal=tmp_path / "j.sqlite") as runner:
        bad, good = await runner.map(tuple_of_object, [0, 1])
    assert good.ok
    assert good.value == {"ok": 1}
    assert bad.status is TaskStatus.FAILED
    assert bad.error is not None
    assert bad.error.startswith("JournalEncodingError: result of task")
    with Journal(tmp_path / "j.sqlite") as journal:
        assert journal.get(bad.key).status is TaskStatus.FAILED  # type: ignore[union-attr]
