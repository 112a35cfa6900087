"""How much a journal costs per task, and whether its commits belong on a thread.

Each figure is a ratio against a baseline measured in the same run: one hop of
a no-op through ``anyio.to_thread.run_sync`` (what moving every commit to a
worker thread would add at the least).

    python -m benchmarks.bench_journal [--tasks 2000]
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import anyio.to_thread

from gpupool import GPUAllocation, Journal, ParallelRunner, TaskResult, TaskStatus

RESULTS = Path(__file__).resolve().parent / "results"


def _lifecycle(journal: Journal, key: str) -> None:
    """The four commits one task makes: queued, waiting, running, succeeded."""
    journal.claim(key, fn="bench", item=key)
    journal.record(key, TaskStatus.WAITING_FOR_GPU, attempt=1)
    journal.record(key, TaskStatus.RUNNING, attempt=1, gpu_indices=(0,))
    journal.finish(TaskResult(key, TaskStatus.SUCCEEDED, value={"loss": 0.25}, attempts=1))


def _per_commit_us(run: Callable[[Journal, int], None], tasks: int, synchronous: str) -> float:
    with (
        tempfile.TemporaryDirectory() as d,
        Journal(Path(d) / "b.sqlite", synchronous=synchronous) as j,
    ):  # type: ignore[arg-type]
        start = time.perf_counter()
        run(j, tasks)
        return (time.perf_counter() - start) / (tasks * 4) * 1e6


def _inline(journal: Journal, tasks: int) -> None:
    for i in range(tasks):
        _lifecycle(journal, f"t{i}")


def _threaded(journal: Journal, tasks: int) -> None:
    """The same commits, each moved to a worker thread (the alternative design)."""
    run = anyio.to_thread.run_sync

    async def main() -> None:
        for i in range(tasks):
            key = f"t{i}"
            await run(functools.partial(journal.claim, key, fn="bench", item=key))
            for status in (TaskStatus.WAITING_FOR_GPU, TaskStatus.RUNNING):
                await run(functools.partial(journal.record, key, status, attempt=1))
            result = TaskResult(key, TaskStatus.SUCCEEDED, value={"loss": 0.25}, attempts=1)
            await run(journal.finish, result)

    anyio.run(main)


def _thread_hop_us(hops: int) -> float:
    async def main() -> float:
        start = time.perf_counter()
        for _ in range(hops):
            await anyio.to_thread.run_sync(int)
        return (time.perf_counter() - start) / hops * 1e6

    return anyio.run(main)


async def _trivial(item: int, allocation: GPUAllocation | None) -> int:
    return item


def _runner_per_task_us(tasks: int, journaled: bool) -> float:
    """Wall time per trivial task through ParallelRunner.map, with or without a journal."""

    async def main(path: Path | None) -> float:
        start = time.perf_counter()
        async with ParallelRunner(max_parallel=8, journal=path) as runner:
            await runner.map(_trivial, range(tasks))
        return (time.perf_counter() - start) / tasks * 1e6

    with tempfile.TemporaryDirectory() as d:
        return anyio.run(main, Path(d) / "r.sqlite" if journaled else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    full_tasks = max(args.tasks // 10, 50)  # fsync per commit: keep the run short
    rows: dict[str, list[float]] = {
        "baseline: thread hop of a no-op": [],
        "commit inline, synchronous=normal": [],
        "commit via thread hop, synchronous=normal": [],
        "commit inline, synchronous=full": [],
    }
    for _ in range(args.repeat):
        rows["baseline: thread hop of a no-op"].append(_thread_hop_us(args.tasks * 4))
        rows["commit inline, synchronous=normal"].append(
            _per_commit_us(_inline, args.tasks, "normal")
        )
        rows["commit via thread hop, synchronous=normal"].append(
            _per_commit_us(_threaded, args.tasks, "normal")
        )
        rows["commit inline, synchronous=full"].append(_per_commit_us(_inline, full_tasks, "full"))
    runner_rows: dict[str, list[float]] = {"runner, no journal": [], "runner, journal": []}
    for _ in range(args.repeat):
        runner_rows["runner, no journal"].append(_runner_per_task_us(args.tasks, False))
        runner_rows["runner, journal"].append(_runner_per_task_us(args.tasks, True))
    base = statistics.median(rows["baseline: thread hop of a no-op"])
    print(
        f"Journal cost per state change ({args.tasks} tasks x 4 commits, median of {args.repeat})\n"
    )
    print("| what | µs per state change | ratio to thread hop |")
    print("|---|---:|---:|")
    result = {}
    for name, values in rows.items():
        med = statistics.median(values)
        result[name] = {"us": med, "ratio": med / base}
        print(f"| {name} | {med:.1f} | {med / base:.2f} |")
    runner_base = statistics.median(runner_rows["runner, no journal"])
    print(f"\nParallelRunner.map of {args.tasks} trivial tasks, max_parallel=8\n")
    print("| what | µs per task | ratio to no journal |")
    print("|---|---:|---:|")
    for name, values in runner_rows.items():
        med = statistics.median(values)
        result[name] = {"us": med, "ratio": med / runner_base}
        print(f"| {name} | {med:.1f} | {med / runner_base:.2f} |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_journal.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
