"""The runner-facing gate: one run per key, even when submitted concurrently."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from anyio.lowlevel import checkpoint

from gpupool import Journal, TaskResult, TaskStatus
from gpupool._journal_gate import JournalGate


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    with Journal(tmp_path / "j.sqlite") as j:
        yield j


async def _run_once(gate: JournalGate, key: str, runs: list[str], status: TaskStatus) -> TaskResult:
    found = await gate.claim(key, fn="test", item=key)
    if found is not None:
        return found
    gate.record(key, TaskStatus.RUNNING, attempt=1)
    runs.append(key)
    for _ in range(5):
        await checkpoint()
    return gate.finish(TaskResult(key, status, value=key.upper(), attempts=1))


@pytest.mark.anyio
async def test_same_key_submitted_concurrently_runs_once(journal: Journal) -> None:
    gate = JournalGate(journal)
    runs: list[str] = []
    results: list[TaskResult] = []

    async def one(key: str) -> None:
        results.append(await _run_once(gate, key, runs, TaskStatus.SUCCEEDED))

    async with anyio.create_task_group() as tg:
        for key in ["a", "b", "a", "a", "b"]:
            tg.start_soon(one, key)
    assert sorted(runs) == ["a", "b"]
    assert sorted(r.value for r in results) == ["A", "A", "A", "B", "B"]
    assert sum(not r.from_journal for r in results) == 2
    assert not gate.in_flight("a")
    assert journal.get("a").starts == 1  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_waiter_runs_the_task_itself_when_the_first_is_cancelled(journal: Journal) -> None:
    gate = JournalGate(journal)
    runs: list[str] = []
    statuses: list[TaskStatus] = []

    async def first() -> None:
        statuses.append((await _run_once(gate, "k", runs, TaskStatus.CANCELLED)).status)

    async def second() -> None:
        statuses.append((await _run_once(gate, "k", runs, TaskStatus.SUCCEEDED)).status)

    async with anyio.create_task_group() as tg:
        tg.start_soon(first)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(second)
    assert runs == ["k", "k"]
    assert statuses == [TaskStatus.CANCELLED, TaskStatus.SUCCEEDED]


@pytest.mark.anyio
async def test_same_key_across_restarts_runs_once(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    runs: list[str] = []
    for _ in range(3):
        with Journal(path) as journal:
            result = await _run_once(JournalGate(journal), "k", runs, TaskStatus.SUCCEEDED)
            assert result.value == "K"
    assert runs == ["k"]


@pytest.mark.anyio
async def test_failed_waiter_sees_failure_unless_retry_failed(journal: Journal) -> None:
    runs: list[str] = []
    failed = await _run_once(JournalGate(journal), "k", runs, TaskStatus.FAILED)
    assert failed.status is TaskStatus.FAILED
    again = await _run_once(JournalGate(journal), "k", runs, TaskStatus.SUCCEEDED)
    assert (again.status, again.from_journal) == (TaskStatus.FAILED, True)
    retried = await _run_once(
        JournalGate(journal, retry_failed=True), "k", runs, TaskStatus.SUCCEEDED
    )
    assert retried.status is TaskStatus.SUCCEEDED
    assert runs == ["k", "k"]
