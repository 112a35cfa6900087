"""ParallelRunner over the real SQLite journal: resume, dedup, ownership."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from gpupool import GPUAllocation, Journal, ParallelRunner, TaskEvent, TaskResult, TaskStatus

pytestmark = pytest.mark.anyio


async def test_a_sweep_resumes_from_its_journal(tmp_path: Path) -> None:
    path = tmp_path / "sweep.sqlite"
    calls: list[int] = []
    release = anyio.Event()

    async def trial(item: int, allocation: GPUAllocation | None) -> int:
        calls.append(item)
        if item == 3:
            raise ValueError("diverged")
        if item >= 4:
            await release.wait()  # still running when the first run is cancelled
        return item * 10

    with anyio.move_on_after(5):  # only reached if the cancel below did not happen
        async with ParallelRunner(max_parallel=8, journal=path) as runner:
            handles = [runner.submit(trial, i, key=f"t{i}") for i in range(6)]
            for handle in handles[:4]:
                await handle.wait()
            await anyio.wait_all_tasks_blocked()
            runner.cancel()  # the process "dies" with t4 and t5 running
    assert [h.result.status for h in handles if h.result] == [
        TaskStatus.SUCCEEDED,
        TaskStatus.SUCCEEDED,
        TaskStatus.SUCCEEDED,
        TaskStatus.FAILED,
        TaskStatus.CANCELLED,
        TaskStatus.CANCELLED,
    ]
    assert sorted(calls) == [0, 1, 2, 3, 4, 5]

    calls.clear()
    release.set()
    async with ParallelRunner(max_parallel=8, journal=path) as runner:
        results = await runner.map(trial, range(6), key=lambda i: f"t{i}")
    assert sorted(calls) == [4, 5]  # only what had not finished runs again
    assert [r.from_journal for r in results] == [True] * 4 + [False] * 2
    assert [r.value for r in results] == [0, 10, 20, None, 40, 50]
    assert results[3].status is TaskStatus.FAILED
    assert results[3].error == "ValueError: diverged"

    with Journal(path) as journal:
        stored = {record.key: record for record in journal.records()}
    assert stored["t5"].status is TaskStatus.SUCCEEDED
    assert stored["t5"].item == 5
    assert stored["t5"].fn.endswith("trial")


async def test_a_borrowed_journal_stays_open(tmp_path: Path) -> None:
    async def task(item: int, allocation: GPUAllocation | None) -> int:
        return item

    with Journal(tmp_path / "j.sqlite") as journal:
        async with ParallelRunner(journal=journal) as runner:
            await runner.map(task, [1, 2], key=str)
        assert not journal.closed
        assert {r.key for r in journal.records()} == {"1", "2"}


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


def score(item: dict[str, float], allocation: GPUAllocation | None) -> object:
    """A named task function, so that default keys can be derived from it."""
    if item["lr"] < 0:
        return object()  # no JSON form
    return item["lr"] * 2


async def test_default_keys_are_stable_so_a_rerun_finds_its_tasks(tmp_path: Path) -> None:
    path = tmp_path / "sweep.sqlite"
    items = [{"lr": 0.1}, {"lr": 0.2}, {"lr": -1.0}]
    async with ParallelRunner(max_parallel=2, journal=path) as runner:
        first = await runner.map(score, items)
    assert all(r.key.startswith("score:") for r in first)
    assert len({r.key for r in first}) == 3
    assert [r.status for r in first] == [TaskStatus.SUCCEEDED] * 2 + [TaskStatus.FAILED]
    assert str(first[2].error).startswith("JournalEncodingError: result of task")

    async with ParallelRunner(max_parallel=2, journal=path) as runner:
        again = await runner.map(score, list(reversed(items)))
    assert [r.key for r in again] == [r.key for r in reversed(first)]
    assert all(r.from_journal for r in again)
    assert [r.value for r in again] == [None, 0.4, 0.2]


async def test_items_without_a_json_form_need_an_explicit_key(tmp_path: Path) -> None:
    async with ParallelRunner(journal=tmp_path / "j.sqlite") as runner:
        with pytest.raises(TypeError, match="pass key="):
            runner.submit(score, {"lr": {1, 2}})


async def test_a_key_the_journal_cannot_store_is_refused_at_submit(tmp_path: Path) -> None:
    """Not later, as a journal failure that would stop the whole run."""

    async def task(item: int, allocation: GPUAllocation | None) -> int:
        return item

    async with ParallelRunner(journal=tmp_path / "j.sqlite") as runner:
        with pytest.raises(ValueError, match="at most 512 characters"):
            runner.submit(task, 1, key="k" * 513)
        assert runner.statistics().submitted == 0  # nothing was registered
        results = await runner.map(task, [1], key=lambda item: "k" * 512)
    assert results[0].value == 1
