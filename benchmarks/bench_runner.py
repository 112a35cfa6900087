"""ParallelRunner benchmarks: speedup, per-task overhead, nested thread pools.

Run from the repository root::

    python benchmarks/bench_runner.py            # the issue's sizes (~2 minutes)
    python benchmarks/bench_runner.py --quick    # smaller, for a smoke run

Every figure is a ratio against a baseline measured in the same run:

* speedup: the parallel wall time against the ideal (total work / slots), with
  the sequential loop measured alongside; target within 10 % of ideal;
* overhead: ``runner.map`` over 10,000 trivial tasks against a plain anyio
  task group with a ``CapacityLimiter`` doing the same; target at most 2x
  (also, for information: with an event subscriber, and 2,000 GPU tasks
  against the same task group taking ``pool.allocation`` itself);
* nested pools: samples that each make two timed blocking calls, on the dual
  executors (4 + 4 workers) against one shared pool of 8 workers, with the
  sequential loop as the reference.

Prints a markdown table and writes JSON to ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gpupool import (  # noqa: E402
    FakeGPUProvider,
    GPUAllocation,
    GPUResourcePool,
    ParallelRunner,
    TaskStatus,
    run_blocking,
)

Row = dict[str, Any]


async def timed(fn: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = await fn()
    return time.perf_counter() - start, value


# -- 1. speedup -------------------------------------------------------------------


async def speedup(experiments: int, gpus: int, duration: float, plain: bool) -> Row:
    async def async_experiment(item: int, allocation: GPUAllocation | None) -> int:
        assert allocation is not None
        await anyio.sleep(duration)
        return item

    def plain_experiment(item: int, allocation: GPUAllocation | None) -> int:
        assert allocation is not None
        time.sleep(duration)
        return item

    async def sequential() -> None:
        for item in range(experiments):
            if plain:
                await anyio.to_thread.run_sync(time.sleep, duration)
            else:
                await anyio.sleep(duration)
            del item

    async def parallel() -> list[Any]:
        pool = GPUResourcePool(FakeGPUProvider(count=gpus))
        runner = ParallelRunner(pool, max_parallel=gpus, high_level_workers=gpus)
        async with pool, runner:
            fn = plain_experiment if plain else async_experiment
            return await runner.map(fn, range(experiments), required_gpus=1)

    sequential_s, _ = await timed(sequential)
    parallel_s, results = await timed(parallel)
    assert all(r.status is TaskStatus.SUCCEEDED for r in results)
    ideal = experiments * duration / gpus
    return {
        "scenario": f"{experiments} x {duration} s on {gpus} GPUs, max_parallel={gpus}"
        + (" (plain functions)" if plain else ""),
        "sequential_s": round(sequential_s, 3),
        "parallel_s": round(parallel_s, 3),
        "ideal_s": ideal,
        "parallel_vs_ideal": round(parallel_s / ideal, 3),
        "speedup_vs_sequential": round(sequential_s / parallel_s, 2),
        "target": "parallel_vs_ideal <= 1.10",
        "met": parallel_s / ideal <= 1.10,
    }


# -- 2. overhead ---------------------------------------------------------------------


async def overhead(tasks: int, max_parallel: int, repeats: int) -> list[Row]:
    async def trivial(item: int, allocation: GPUAllocation | None) -> int:
        return item

    async def baseline() -> list[Any]:
        limiter = anyio.CapacityLimiter(max_parallel)
        results: list[Any] = [None] * tasks

        async def one(item: int) -> None:
            async with limiter:
                results[item] = await trivial(item, None)

        async with anyio.create_task_group() as tg:
            for item in range(tasks):
                tg.start_soon(one, item)
        return results

    async def runner_map() -> list[Any]:
        async with ParallelRunner(max_parallel=max_parallel) as runner:
            return await runner.map(trivial, range(tasks))

    async def runner_map_watched() -> list[Any]:
        async with ParallelRunner(max_parallel=max_parallel) as runner:
            seen: list[object] = []
            runner.subscribe(seen.append)
            return await runner.map(trivial, range(tasks))

    gpu_tasks = tasks // 5

    async def gpu_baseline() -> list[Any]:
        limiter = anyio.CapacityLimiter(max_parallel)
        results: list[Any] = [None] * gpu_tasks
        async with GPUResourcePool(FakeGPUProvider(count=4)) as pool:

            async def one(item: int) -> None:
                async with limiter, pool.allocation(required_gpus=1) as allocation:
                    results[item] = await trivial(item, allocation)

            async with anyio.create_task_group() as tg:
                for item in range(gpu_tasks):
                    tg.start_soon(one, item)
        return results

    async def gpu_runner() -> list[Any]:
        pool = GPUResourcePool(FakeGPUProvider(count=4))
        async with pool, ParallelRunner(pool, max_parallel=max_parallel) as runner:
            return await runner.map(trivial, range(gpu_tasks), required_gpus=1)

    variants = {
        "baseline": baseline,
        "runner": runner_map,
        "watched": runner_map_watched,
        "gpu_baseline": gpu_baseline,
        "gpu_runner": gpu_runner,
    }
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):  # interleaved, so drift hits every variant alike
        for name, variant in variants.items():
            samples[name].append((await timed(variant))[0])
    rows = []
    for name, base_name, count, label in (
        ("runner", "baseline", tasks, "runner.map"),
        ("watched", "baseline", tasks, "runner.map + one event subscriber"),
        ("gpu_runner", "gpu_baseline", gpu_tasks, "runner.map, required_gpus=1 on 4 GPUs"),
    ):
        base = statistics.median(samples[base_name])
        median = statistics.median(samples[name])
        rows.append(
            {
                "scenario": f"{label}, {count} trivial tasks, max_parallel={max_parallel}",
                "baseline_us_per_task": round(base / count * 1e6, 2),
                "runner_us_per_task": round(median / count * 1e6, 2),
                "ratio": round(median / base, 3),
                "target": "ratio <= 2.0" if name == "runner" else "(information)",
                "met": median / base <= 2.0 if name == "runner" else None,
            }
        )
    return rows


# -- 3. nested pools -----------------------------------------------------------------


def nested_call(duration: float) -> float:
    time.sleep(duration)
    return duration


def single_pool(samples: int, workers: int, duration: float, call_timeout: float) -> Row:
    """What users hand-roll: one ThreadPoolExecutor used at both levels."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers)

    def sample(item: int) -> float:
        total = 0.0
        for _ in range(2):
            total += pool.submit(nested_call, duration).result(timeout=call_timeout)
        return total

    start = time.perf_counter()
    futures = [pool.submit(sample, i) for i in range(samples)]
    timeouts = 0
    for future in futures:
        try:
            future.result()
        except concurrent.futures.TimeoutError:
            timeouts += 1
    wall = time.perf_counter() - start
    pool.shutdown(wait=True)
    return {"wall_s": wall, "samples_timed_out": timeouts}


async def dual_executors(
    samples: int, high: int, low: int, duration: float, call_timeout: float
) -> Row:
    def sample(item: int, allocation: GPUAllocation | None) -> float:
        return float(run_blocking(nested_call, duration, timeout=call_timeout)) + float(
            run_blocking(nested_call, duration, timeout=call_timeout)
        )

    async with ParallelRunner(
        max_parallel=samples, high_level_workers=high, low_level_workers=low
    ) as runner:
        wall, results = await timed(lambda: runner.map(sample, range(samples)))
    failed = sum(r.status is not TaskStatus.SUCCEEDED for r in results)
    return {"wall_s": wall, "samples_timed_out": failed}


async def nested(samples: int, duration: float, call_timeout: float) -> list[Row]:
    sequential = samples * 2 * duration
    start = time.perf_counter()
    for _ in range(samples):
        nested_call(duration)
        nested_call(duration)
    sequential = time.perf_counter() - start
    single = await anyio.to_thread.run_sync(single_pool, samples, 8, duration, call_timeout)
    dual = await dual_executors(samples, 4, 4, duration, call_timeout)
    rows = []
    for name, outcome in (("dual executors 4 + 4", dual), ("one shared pool of 8", single)):
        rows.append(
            {
                "scenario": f"{name}: {samples} samples x 2 nested calls of {duration} s, "
                f"timeout {call_timeout} s",
                "wall_s": round(outcome["wall_s"], 3),
                "sequential_s": round(sequential, 3),
                "wall_vs_sequential": round(outcome["wall_s"] / sequential, 3),
                "samples_timed_out": outcome["samples_timed_out"],
            }
        )
    return rows


# -- main ----------------------------------------------------------------------------


def table(rows: list[Row]) -> str:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


async def main(quick: bool, backend: str) -> dict[str, list[Row]]:
    duration = 0.1 if quick else 0.5
    sections: dict[str, list[Row]] = {
        "speedup": [
            await speedup(20, 4, duration, plain=False),
            await speedup(100, 8, duration, plain=False),
            await speedup(20, 4, duration, plain=True),
        ],
        "overhead": await overhead(2_000 if quick else 10_000, 8, 3 if quick else 5),
        "nested": await nested(16, 0.05, 1.0),
    }
    for name, rows in sections.items():
        print(f"\n### {name} ({backend})\n")
        print(table(rows))
    return sections


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default=None)
    args = parser.parse_args()
    report: dict[str, Any] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "quick": args.quick,
    }
    for backend in [args.backend] if args.backend else ["asyncio", "trio"]:
        report[backend] = anyio.run(main, args.quick, backend, backend=backend)
    out = ROOT / "benchmarks" / "results" / "bench_runner.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out.relative_to(ROOT)}")
