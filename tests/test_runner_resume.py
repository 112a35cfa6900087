"""ParallelRunner over the real SQLite journal: resume, dedup, keys, ownership.

What happens when the journal fails is in test_runner_journal_failures.py;
RunnerJournal alone in test_journal_adapter.py, the store in test_journal_store.py.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from gpupool import (
    FakeGPUProvider,
    GPUAllocation,
    GPUResourcePool,
    Journal,
    JournalEncodingError,
    JournalInUse,
    ParallelRunner,
    TaskStatus,
    run_process,
)
from gpupool._core.model import StartedProcess
from gpupool._process.started import announce_start
from gpupool._system import procfs

ROOT = Path(__file__).resolve().parents[1]


def _sql(path: Path) -> contextlib.closing[sqlite3.Connection]:
    """An autocommit connection that is closed (not just committed) on exit."""
    return contextlib.closing(sqlite3.connect(path, isolation_level=None))


calls: list[Any] = []


@pytest.fixture(autouse=True)
def _reset_calls() -> None:
    calls.clear()


async def square(item: int, allocation: GPUAllocation | None) -> int:
    calls.append(item)
    await anyio.lowlevel.checkpoint()
    if item < 0:
        raise ValueError(f"negative: {item}")
    return item * item


def plain_key_of_current_task(path: Path, item: int, allocation: GPUAllocation | None) -> str:
    """Runs in a worker thread: the runner's process hook must have followed it there.

    Announces a pretend job the way run_process does and reads back, from the
    journal's file, the key its process group was recorded under.
    """
    pgid = 2**22 + item  # above PID_MAX_LIMIT: no process of the machine
    announce_end = announce_start(StartedProcess(pgid, allocation))
    with _sql(path) as conn:
        (key,) = conn.execute("SELECT key FROM process_groups WHERE pgid = ?", (pgid,)).fetchone()
    announce_end()
    return str(key)


def _events(path: Path) -> list[tuple[str, str]]:
    with _sql(path) as conn:
        return conn.execute("SELECT key, status FROM events ORDER BY seq").fetchall()


@pytest.mark.anyio
async def test_restarted_runner_returns_finished_results_without_running(tmp_path: Path) -> None:
    path = tmp_path / "sweep.sqlite"
    async with ParallelRunner(max_parallel=2, journal=path) as runner:
        first = await runner.map(square, [1, 2, -3])
    assert [r.value for r in first] == [1, 4, None]
    assert [r.from_journal for r in first] == [False] * 3
    assert sorted(calls) == [-3, 1, 2]

    calls.clear()
    async with ParallelRunner(max_parallel=2, journal=str(path)) as runner:
        again = await runner.map(square, [1, 2, -3, 4])
    assert calls == [4]  # only the new item ran
    assert [r.value for r in again] == [1, 4, None, 16]
    assert [r.from_journal for r in again] == [True, True, True, False]
    assert again[2].status is TaskStatus.FAILED
    assert again[2].error == "ValueError: negative: -3"
    assert [r.key for r in again[:3]] == [r.key for r in first]


@pytest.mark.anyio
async def test_same_key_concurrently_runs_once(tmp_path: Path) -> None:
    async with ParallelRunner(max_parallel=4, journal=tmp_path / "j.sqlite") as runner:
        results = await runner.map(square, [5, 5, 6, 5])
        handle_a = runner.submit(square, 7, key="seven")
        handle_b = runner.submit(square, 7, key="seven")
        assert (await handle_a.wait()).value == (await handle_b.wait()).value == 49
    assert sorted(calls) == [5, 6, 7]
    assert [r.value for r in results] == [25, 25, 36, 25]
    assert len({r.key for r in results}) == 2


@pytest.mark.anyio
async def test_same_key_across_restarts_runs_once(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    for _ in range(3):
        async with ParallelRunner(journal=path) as runner:
            (result,) = await runner.map(square, [9], key=lambda item: "nine")
        assert (result.key, result.value) == ("nine", 81)
    assert calls == [9]
    assert [s for k, s in _events(path)] == ["queued", "running", "succeeded"]


@pytest.mark.anyio
async def test_unkeyable_item_asks_for_key(tmp_path: Path) -> None:
    async with ParallelRunner(journal=tmp_path / "j.sqlite") as runner:
        with pytest.raises(JournalEncodingError, match="pass key="):
            runner.submit(square, object())
        (result,) = await runner.map(square, [object()], key=lambda item: "obj")
        assert result.status is TaskStatus.FAILED  # square(object()) fails, but it ran


@pytest.mark.anyio
async def test_cancelled_sweep_reruns_cancelled_tasks(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    started = anyio.Event()

    async def slow(item: int, allocation: GPUAllocation | None) -> int:
        calls.append(item)
        if item == 2:
            started.set()
            await anyio.sleep_forever()
        return item

    async with ParallelRunner(max_parallel=4, journal=path) as runner:
        handles = [runner.submit(slow, i, key=f"k{i}") for i in range(3)]
        await started.wait()
        await handles[0].wait()
        runner.cancel()
    assert handles[2].result is not None
    assert handles[2].result.status is TaskStatus.CANCELLED

    async def quick(item: int, allocation: GPUAllocation | None) -> int:
        calls.append(("again", item))
        return item

    async with ParallelRunner(max_parallel=4, journal=path) as runner:
        results = await runner.map(quick, range(3), key=lambda i: f"k{i}")
    assert [r.status for r in results] == [TaskStatus.SUCCEEDED] * 3
    assert ("again", 2) in calls
    assert ("again", 0) not in calls


@pytest.mark.anyio
async def test_gpu_tasks_record_their_gpus_and_bind_the_task(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    async with (
        GPUResourcePool(FakeGPUProvider(count=2)) as pool,
        ParallelRunner(pool, max_parallel=2, journal=path) as runner,
    ):
        results = await runner.map(
            functools.partial(plain_key_of_current_task, path),
            [1, 2],
            required_gpus=1,
            key=lambda i: f"gpu-{i}",
        )
    assert [r.value for r in results] == ["gpu-1", "gpu-2"]
    with Journal(path) as journal:
        records = journal.records()
    assert all(len(r.gpu_indices) == 1 for r in records)
    assert [s for k, s in _events(path) if k == "gpu-1"] == [
        "queued",
        "waiting_for_gpu",
        "running",
        "succeeded",
    ]


@pytest.mark.anyio
async def test_second_runner_on_a_journal_in_use_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    async with ParallelRunner(journal=path):
        with pytest.raises(JournalInUse, match="already open in this process"):
            async with ParallelRunner(journal=path):
                pass  # pragma: no cover
    async with ParallelRunner(journal=path):  # released on exit
        pass


@pytest.mark.anyio
async def test_runner_borrows_an_open_journal(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.sqlite", synchronous="full") as journal:
        async with ParallelRunner(journal=journal) as runner:
            (result,) = await runner.map(square, [3])
        assert not journal.closed
        assert journal.get(result.key).value == 9  # type: ignore[union-attr]


def _live_members(pgid: int) -> list[int]:
    """Processes of group ``pgid`` that have not exited (zombies count as exited)."""
    found = (procfs.read_stat(pid) for pid in procfs.list_pids())
    return [info.pid for info in found if info is not None and info.pgid == pgid and info.alive]


def _crashed_run_leaving_a_job(path: Path) -> int:
    """Run the leftover worker on ``path``, kill -9 it once its job's process
    group is in the journal, and return that group's id."""
    worker = subprocess.Popen(
        [sys.executable, str(ROOT / "tests/scripts/journal_leftover_worker.py"), str(path)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        groups: list[tuple[int]] = []
        while not groups and time.monotonic() < deadline and worker.poll() is None:
            time.sleep(0.02)
            with contextlib.suppress(sqlite3.Error), _sql(path) as conn:
                groups = conn.execute("SELECT pgid FROM process_groups").fetchall()
    finally:
        worker.kill()
        worker.wait()
    assert groups, "the worker never recorded its job's process group"
    ((pgid,),) = groups
    return pgid


@pytest.mark.anyio
async def test_restarted_runner_kills_a_crashed_runs_jobs_first(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    pgid = _crashed_run_leaving_a_job(path)
    try:
        assert len(_live_members(pgid)) >= 2  # sh and its sleeps outlived their runner
        alive_when_task_ran: list[list[int]] = []

        async def check(item: int, allocation: GPUAllocation | None) -> None:
            alive_when_task_ran.append(_live_members(pgid))

        async with ParallelRunner(journal=path) as runner:
            await runner.map(check, [1], key=lambda item: "job")
        assert alive_when_task_ran == [[]]  # all killed before the task ran again
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)


@pytest.mark.anyio
async def test_opening_the_journal_does_not_block_the_event_loop(tmp_path: Path) -> None:
    """Issue 10 item 4: ``__aenter__`` opened the journal on the event loop,
    where waiting for SQLite's lock (up to 5 s) stopped every other task."""
    path = tmp_path / "j.sqlite"
    Journal(path).close()
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as holder:
        holder.execute("BEGIN IMMEDIATE")  # another writer holds the lock: the open waits
        ticks = 0

        async def heartbeat() -> None:
            nonlocal ticks
            while ticks < 5:
                ticks += 1
                await anyio.sleep(0.01)
            holder.execute("COMMIT")  # the lock goes only once the loop has run on

        async with anyio.create_task_group() as group:
            group.start_soon(heartbeat)
            async with ParallelRunner(journal=path) as runner:
                assert ticks == 5  # the heartbeat ticked while the open waited
                results = await runner.map(square, [3], key=str)
    assert results[0].value == 9


@pytest.mark.anyio
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


@pytest.mark.anyio
async def test_a_borrowed_journal_stays_open(tmp_path: Path) -> None:
    async def task(item: int, allocation: GPUAllocation | None) -> int:
        return item

    with Journal(tmp_path / "j.sqlite") as journal:
        async with ParallelRunner(journal=journal) as runner:
            await runner.map(task, [1, 2], key=str)
        assert not journal.closed
        assert {r.key for r in journal.records()} == {"1", "2"}


def score(item: dict[str, float], allocation: GPUAllocation | None) -> object:
    """A named task function, so that default keys can be derived from it."""
    if item["lr"] < 0:
        return object()  # no JSON form
    return item["lr"] * 2


@pytest.mark.anyio
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


@pytest.mark.anyio
async def test_items_without_a_json_form_need_an_explicit_key(tmp_path: Path) -> None:
    async with ParallelRunner(journal=tmp_path / "j.sqlite") as runner:
        with pytest.raises(TypeError, match="pass key="):
            runner.submit(score, {"lr": {1, 2}})


@pytest.mark.anyio
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


@pytest.mark.anyio
@pytest.mark.parametrize("gpus", [0, 1])
async def test_a_tasks_job_is_in_the_journal_while_it_runs_and_gone_after(
    tmp_path: Path, gpus: int
) -> None:
    """The runner sets the journal's on_process_started hook around each task
    (CPU-only ones too): a takeover after a crash finds the running job's group."""
    path = tmp_path / "j.sqlite"

    def groups() -> list[tuple[str, int]]:
        with _sql(path) as conn:
            return conn.execute("SELECT key, pgid FROM process_groups").fetchall()

    async def job(item: int, allocation: GPUAllocation | None) -> tuple[object, ...]:
        during: list[list[tuple[str, int]]] = []
        pids: list[int] = []
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                while not groups():  # noqa: ASYNC110 -- the journal is a file, not an event
                    await anyio.sleep(0.01)
                during.append(groups())

            tg.start_soon(watch)
            result = await run_process(
                ["sleep", "0.3"], allocation=allocation, on_start=pids.append
            )
            tg.cancel_scope.cancel()  # a job the journal never saw fails below, not hangs
        return (during, pids, result.pid, groups())

    async with (
        GPUResourcePool(FakeGPUProvider(count=1)) as pool,
        ParallelRunner(pool, journal=path) as runner,
    ):
        (outcome,) = await runner.map(job, [1], required_gpus=gpus, key=lambda i: "task")
    during, pids, pid, after_the_job = outcome.value
    assert pids == [pid]
    assert during == [[("task", pid)]]
    assert after_the_job == []  # forgotten once the job was over, before the task ended
    assert groups() == []
