"""gpupool side by side with Ray and Dask on the same box, in the same run.

The question a user asks before picking a tool for a GPU sweep on one machine:
what does each cost to start, what does each task cost, how many GPU tasks run
at once, and is each task told which GPUs are its own? This script runs the
same workloads on:

* gpupool: ``GPUResourcePool`` driven by an anyio task group, and
  ``ParallelRunner.map`` (what users would write), on ``FakeGPUProvider(8)``;
* Ray: ``ray.init(num_cpus=8, num_gpus=8)`` (logical resources, no GPU needed),
  once with Ray's default for GPU tasks (``max_calls=1``: a fresh worker
  process per task) and once with worker reuse (``max_calls=0``);
* Dask: ``LocalCluster`` with one worker process of 8 threads and
  ``resources={"GPU": 8}``.

Workloads: 2,000 trivial 1-GPU tasks; 2,000 tasks needing 1, 1, 2 or 4 GPUs;
2,000 fractional tasks (0.25 GPU in Ray and Dask; ``exclusive=False`` with a
quarter of a GPU's memory in gpupool); 16 tasks of 0.5 s needing 1 GPU each
(ideal wall time 1 s on 8 GPUs). Ray's default configuration runs about
3 tasks/s here, so it runs only the first ``--ray-default-tasks`` tasks of each
workload; per-task figures are per task either way.

Each peer runs in its own child process (so one peer's threads and processes
cannot slow another's figures, and a missing or crashing peer is skipped with
a note). Every task records when it started and ended (``time.monotonic``,
which is system-wide on Linux) and which GPUs it was told it may use; the
parent then checks whether two tasks that overlapped in time were ever told
the same GPU while at least one of them held it exclusively.

Output: a markdown table with every figure also given as a ratio to gpupool's
``ParallelRunner`` measured in the same run (the ``GPUResourcePool`` column
when the runner is not available), printed, written to ``docs/benchmarks.md``
between the ``bench_peers`` markers (the rest of that file is kept), and JSON
in ``benchmarks/results/bench_peers.json``.

Run: ``pip install -e '.[bench]'`` then ``python benchmarks/bench_peers.py``.
Targets (issue 7): gpupool's per-task cost at least 10x lower than the faster
Ray configuration and than Dask on the 2,000-task workloads; start-up at least
10x faster than ``ray.init``; peak concurrency equal to the GPU count; never
two concurrent tasks told the same exclusive GPU.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import inspect
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCS_PATH = REPO_ROOT / "docs" / "benchmarks.md"
RESULTS_PATH = REPO_ROOT / "benchmarks" / "results" / "bench_peers.json"

# Measure this checkout's gpupool, installed or not (the script runs from benchmarks/).
if (REPO_ROOT / "gpupool").is_dir() and str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

START_MARKER = "<!-- bench_peers:start -->"
END_MARKER = "<!-- bench_peers:end -->"

GPU_COUNT = 8
MEMORY_MB = 24_576  # each fake GPU's memory; fractional tasks ask a quarter of it
FRACTION = 0.25
SLEEP_TASKS = 16
SLEEP_S = 0.5
GPUPOOL_REPEATS = 5  # at least this many runs per workload per round for gpupool
WARMUP_TASKS = 2 * GPU_COUNT
WARMUP_SLEEP_S = 0.05
MIX_PATTERN = (1, 1, 2, 4)

PEERS = ("gpupool", "ray", "dask")


# ---------------------------------------------------------------------------
# Workloads and what every task reports (plain values: they cross processes)


class Demand(NamedTuple):
    """What one task asks for: ``gpus`` may be fractional (< 1) for shared tasks."""

    gpus: float
    sleep_s: float = 0.0

    @property
    def exclusive(self) -> bool:
        return self.gpus >= 1


WARMUP = [Demand(1, WARMUP_SLEEP_S)] * WARMUP_TASKS  # brings every worker slot up


class Record(NamedTuple):
    """What one task saw: its running interval, the GPUs it was told, its process."""

    start: float
    end: float
    gpus: tuple[str, ...]
    exclusive: bool
    cuda_visible_devices: str | None
    pid: int


def workloads(n_tasks: int) -> dict[str, list[Demand]]:
    """The four workloads, by name, in the order the table shows them."""
    return {
        "trivial": [Demand(1)] * n_tasks,
        "mixed": [Demand(MIX_PATTERN[i % len(MIX_PATTERN)]) for i in range(n_tasks)],
        "fractional": [Demand(FRACTION)] * n_tasks,
        "sleep": [Demand(1, SLEEP_S)] * SLEEP_TASKS,
    }


# ---------------------------------------------------------------------------
# Pure checks (tested in tests/test_bench_peers.py)


class Conflict(NamedTuple):
    """Two tasks that ran at the same time and were told the same GPU,
    at least one of them holding it exclusively."""

    gpu: str
    first: int
    second: int


def find_conflicts(records: Sequence[Record]) -> list[Conflict]:
    """Every pair of time-overlapping tasks told the same GPU, one of them exclusively.

    Intervals are half-open: a task that starts exactly when another ends does
    not overlap it. Shared (non-exclusive) tasks may overlap each other.
    """
    by_gpu: dict[str, list[int]] = defaultdict(list)
    for i, record in enumerate(records):
        if record.end < record.start:
            raise ValueError(f"record {i} ends before it starts: {record!r}")
        for gpu in set(record.gpus):
            by_gpu[gpu].append(i)
    conflicts: list[Conflict] = []
    for gpu in sorted(by_gpu):
        order = sorted(by_gpu[gpu], key=lambda i: (records[i].start, records[i].end))
        active: list[int] = []  # tasks on this GPU that may still overlap the next one
        for i in order:
            record = records[i]
            active = [j for j in active if records[j].end > record.start]
            conflicts.extend(
                Conflict(gpu, j, i)
                for j in active
                if (record.exclusive or records[j].exclusive) and record.end > record.start
            )
            active.append(i)
    return conflicts


def peak_concurrency(records: Iterable[Record]) -> int:
    """The largest number of tasks running at one instant (half-open intervals)."""
    events: list[tuple[float, int]] = []
    for record in records:
        if record.end > record.start:
            events.append((record.start, 1))
            events.append((record.end, -1))
    running = peak = 0
    for _, step in sorted(events):  # at equal times an end (-1) sorts before a start
        running += step
        peak = max(peak, running)
    return peak


def summarize(name: str, wall_s: float, records: Sequence[Record]) -> dict[str, Any]:
    """The figures the table needs for one workload on one configuration."""
    n = len(records)
    conflicts = find_conflicts(records)
    return {
        "workload": name,
        "tasks": n,
        "wall_s": wall_s,
        "per_task_us": wall_s / n * 1e6 if n else math.nan,
        "peak": peak_concurrency(records),
        "exclusive_tasks": sum(r.exclusive for r in records),
        "conflicts": len(conflicts),
        "conflict_examples": [c._asdict() for c in conflicts[:3]],
        "told_gpus": sum(bool(r.gpus) for r in records),
        "cuda_visible_devices_set": sum(r.cuda_visible_devices is not None for r in records),
        "example_told": (
            {
                "gpus": list(records[-1].gpus),
                "CUDA_VISIBLE_DEVICES": records[-1].cuda_visible_devices,
            }
            if records
            else None
        ),
        "distinct_processes": len({r.pid for r in records}),
    }


# ---------------------------------------------------------------------------
# Table and docs section (pure)


def _fmt_number(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def _fmt_ratio(value: float, base: float) -> str:
    if base <= 0 or math.isnan(value) or math.isnan(base):
        return ""
    ratio = value / base
    return f" ({_fmt_number(ratio)}x)"


def render_table(configs: Sequence[dict[str, Any]], baseline: str) -> str:
    """One markdown table: a row per measure, a column per configuration.

    ``configs`` are the per-configuration results (``key``, ``label``,
    ``startup_s``, ``shutdown_s``, ``workloads`` by name, optional ``told``,
    ``notes``); timings in every column are followed by their ratio to the
    ``baseline`` configuration's figure.
    """
    by_key = {c["key"]: c for c in configs}
    if baseline not in by_key:
        raise ValueError(f"baseline must be one of {sorted(by_key)}, got {baseline!r}")
    base = by_key[baseline]

    def timing(
        label: str, get: Callable[[dict[str, Any]], float | None], unit: str, scale: float
    ) -> list[str]:
        cells = [label]
        base_value = get(base)
        for config in configs:
            value = get(config)
            if value is None:
                cells.append("—")
                continue
            text = _fmt_number(value * scale) + f" {unit}"
            if config is not base and base_value is not None:
                text += _fmt_ratio(value, base_value)
            cells.append(text)
        return cells

    def workload(config: dict[str, Any], name: str) -> dict[str, Any] | None:
        result: dict[str, Any] | None = config.get("workloads", {}).get(name)
        return result

    def per_task(name: str) -> Callable[[dict[str, Any]], float | None]:
        def get(config: dict[str, Any]) -> float | None:
            w = workload(config, name)
            return None if w is None else float(w["wall_s"]) / int(w["tasks"])

        return get

    def wall(name: str) -> Callable[[dict[str, Any]], float | None]:
        def get(config: dict[str, Any]) -> float | None:
            w = workload(config, name)
            return None if w is None else float(w["wall_s"])

        return get

    rows: list[list[str]] = []
    rows.append(timing("start-up", lambda c: c.get("startup_s"), "s", 1.0))
    for name, label in (
        ("trivial", "per task: trivial, 1 GPU each"),
        ("mixed", "per task: mixed 1/1/2/4 GPUs"),
        ("fractional", "per task: fractional (0.25 GPU, shared)"),
    ):
        row = timing(label, per_task(name), "µs", 1e6)
        for i, config in enumerate(configs, start=1):
            w = workload(config, name)
            if w is not None:
                row[i] += f" [{w['tasks']:,} tasks]"
        rows.append(row)
    rows.append(
        timing(
            f"{SLEEP_TASKS} x {SLEEP_S} s tasks, 1 GPU each: wall (ideal "
            f"{_fmt_number(SLEEP_TASKS * SLEEP_S / GPU_COUNT)} s)",
            wall("sleep"),
            "s",
            1.0,
        )
    )
    peak_row = [f"{SLEEP_TASKS} x {SLEEP_S} s tasks: peak concurrency ({GPU_COUNT} GPUs)"]
    for config in configs:
        w = workload(config, "sleep")
        peak_row.append("—" if w is None else str(w["peak"]))
    rows.append(peak_row)
    process_row = ["processes the trivial tasks ran in"]
    for config in configs:
        w = workload(config, "trivial")
        process_row.append("—" if w is None else f"{w['distinct_processes']:,} for {w['tasks']:,}")
    rows.append(process_row)
    rows.append(timing("shutdown", lambda c: c.get("shutdown_s"), "s", 1.0))

    told_row = ["GPUs each task is told"]
    conflict_row = ["two concurrent tasks told the same exclusive GPU"]
    for config in configs:
        results = list(config.get("workloads", {}).values())
        n = sum(int(w["tasks"]) for w in results)
        told = sum(int(w["told_gpus"]) for w in results)
        cvd = sum(int(w["cuda_visible_devices_set"]) for w in results)
        how = config.get("told", "")
        if not results:
            told_row.append("—")
            conflict_row.append("—")
            continue
        told_row.append(
            f"{how if told else 'none'} ({told:,}/{n:,} tasks); "
            f"`CUDA_VISIBLE_DEVICES` set in {cvd:,}/{n:,}"
        )
        exclusive = sum(
            int(w.get("exclusive_tasks_checked", w["exclusive_tasks"])) for w in results
        )
        conflicts = sum(int(w["conflicts"]) for w in results)
        if not told:
            conflict_row.append("cannot happen: told no GPU (nothing to check)")
        elif conflicts:
            conflict_row.append(f"**yes: {conflicts:,} overlapping pairs**")
        else:
            conflict_row.append(f"never (0 in {exclusive:,} exclusive tasks checked)")
    rows.append(told_row)
    rows.append(conflict_row)

    header = ["measure", *(c["label"] for c in configs)]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return "\n".join(lines)


def replace_section(document: str, section: str) -> str:
    """``document`` with the text between the bench_peers markers replaced by ``section``.

    A document without the markers gets them, around ``section``, appended at
    its end; everything outside the markers is kept byte for byte. Markers
    that are unbalanced or out of order raise ``ValueError`` rather than risk
    eating another benchmark's section.
    """
    starts = document.count(START_MARKER)
    ends = document.count(END_MARKER)
    block = f"{START_MARKER}\n{section.strip()}\n{END_MARKER}"
    if starts == 0 and ends == 0:
        if not document.strip():
            return f"# Benchmarks\n\n{block}\n"
        return document.rstrip("\n") + "\n\n" + block + "\n"
    if starts != 1 or ends != 1:
        raise ValueError(
            f"docs must hold exactly one {START_MARKER} and one {END_MARKER}, "
            f"found {starts} and {ends}"
        )
    head, rest = document.split(START_MARKER)
    if END_MARKER not in rest:
        raise ValueError(f"{END_MARKER} must come after {START_MARKER}")
    _, tail = rest.split(END_MARKER)
    return head + block + tail


def render_section(report: dict[str, Any]) -> str:
    """The whole docs section: heading, context, table, targets, notes."""
    configs = report["configs"]
    lines = [
        "## gpupool, Ray and Dask side by side (`bench_peers.py`)",
        "",
        "Generated by `python benchmarks/bench_peers.py`; do not edit by hand.",
        "",
        f"- date: {report['date']}",
        f"- machine: {report['machine']}",
        f"- versions: {', '.join(f'{k} {v}' for k, v in report['versions'].items())}",
        f"- {GPU_COUNT} fake GPUs everywhere; ratios in brackets are to "
        f"**{report['baseline_label']}** measured in the same run "
        "(> 1x means slower than gpupool).",
        "- per task = wall time of a whole batch / its number of tasks, best of "
        f"{report['repeats']} runs (gpupool: {max(report['repeats'], GPUPOOL_REPEATS)}; "
        f"Ray's GPU default: 1) in each of {report['rounds']} rounds that interleave the peers "
        "(Ray's GPU default: first round only), each after a warm-up of "
        f"{WARMUP_TASKS} tasks of {WARMUP_SLEEP_S * 1000:.0f} ms that brings every worker up. "
        "Tasks do nothing but record when they ran and which GPUs they were told.",
        "- gpupool's tasks run in the caller's event loop (a real task starts its own "
        "process, e.g. with `gpupool.run_process`); Ray and Dask ship each task to a "
        "worker process. So the per-task rows compare what each tool adds to scheduling "
        "a GPU task, not the cost of the task itself.",
        "",
        render_table(configs, report["baseline"]),
        "",
    ]
    if report.get("targets"):
        lines.append("Targets (issue 7):")
        lines.append("")
        lines.extend(
            f"- {'met' if ok else '**not met**'}: {text}" for text, ok in report["targets"]
        )
        lines.append("")
    notes = [n for c in configs for n in c.get("notes", [])] + report.get("notes", [])
    if notes:
        lines.append("Notes:")
        lines.append("")
        lines.extend(f"- {note}" for note in notes)
        lines.append("")
    return "\n".join(lines)


def check_targets(configs: Sequence[dict[str, Any]]) -> list[tuple[str, bool]]:
    """The issue's targets for every gpupool column, each as (what was measured, met?)."""
    targets: list[tuple[str, bool]] = []

    def per_task(config: dict[str, Any], name: str) -> float | None:
        w = config.get("workloads", {}).get(name)
        return None if w is None else float(w["wall_s"]) / int(w["tasks"])

    rays = [c for c in configs if c["key"].startswith("ray")]
    dasks = [c for c in configs if c["key"] == "dask"]
    for ours in (c for c in configs if c["key"].startswith("gpupool")):
        label = ours["label"]
        for name in ("trivial", "mixed", "fractional"):
            own = per_task(ours, name)
            if own is None:
                continue
            ray_costs = [v for c in rays if (v := per_task(c, name)) is not None]
            if ray_costs:
                ratio = min(ray_costs) / own
                targets.append(
                    (
                        f"{label}, {name}: faster Ray config / gpupool = {ratio:.1f}x (>= 10x)",
                        ratio >= 10,
                    )
                )
            for dask in dasks:
                if (cost := per_task(dask, name)) is not None:
                    ratio = cost / own
                    targets.append(
                        (f"{label}, {name}: Dask / gpupool = {ratio:.1f}x (>= 10x)", ratio >= 10)
                    )
        if rays and ours.get("startup_s"):
            ratio = rays[0]["startup_s"] / ours["startup_s"]
            targets.append(
                (f"{label}, start-up: ray.init / gpupool = {ratio:,.0f}x (>= 10x)", ratio >= 10)
            )
        sleep = ours.get("workloads", {}).get("sleep")
        if sleep is not None:
            targets.append(
                (
                    f"{label}: peak concurrency {sleep['peak']} == {GPU_COUNT} GPUs",
                    sleep["peak"] == GPU_COUNT,
                )
            )
        conflicts = sum(int(w["conflicts"]) for w in ours.get("workloads", {}).values())
        targets.append(
            (
                f"{label}: {conflicts} pairs of concurrent tasks told the same exclusive GPU (== 0)",
                conflicts == 0,
            )
        )
    return targets


# ---------------------------------------------------------------------------
# The peers' sides (each runs in its own child process)


def _record_raw(sleep_s: float, gpus: tuple[str, ...], exclusive: bool) -> list[Any]:
    start = time.monotonic()
    if sleep_s:
        time.sleep(sleep_s)
    end = time.monotonic()
    return [start, end, list(gpus), exclusive, os.environ.get("CUDA_VISIBLE_DEVICES"), os.getpid()]


def _to_record(raw: Sequence[Any]) -> Record:
    start, end, gpus, exclusive, cvd, pid = raw
    return Record(float(start), float(end), tuple(str(g) for g in gpus), bool(exclusive), cvd, pid)


def run_ray(n_tasks: int, repeats: int, ray_default_tasks: int) -> list[dict[str, Any]]:
    """Both Ray columns (the GPU default only when ``ray_default_tasks`` > 0)."""
    import ray

    def ray_task(sleep_s: float, exclusive: bool) -> list[Any]:
        gpus = tuple(str(g) for g in ray.get_gpu_ids())
        return _record_raw(sleep_s, gpus, exclusive)

    t0 = time.perf_counter()
    ray.init(
        num_cpus=GPU_COUNT,
        num_gpus=GPU_COUNT,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    startup = time.perf_counter() - t0
    results: list[dict[str, Any]] = []
    columns: list[tuple[str, str, dict[str, Any], int | None]] = [
        ("ray_reuse", "Ray, worker reuse (`max_calls=0`)", {"max_calls": 0}, None),
        ("ray_default", "Ray, GPU default (fresh worker per task)", {}, ray_default_tasks),
    ]
    for key, label, extra, cap in columns if ray_default_tasks > 0 else columns[:1]:
        # Decorate once per GPU demand: Ray picks its max_calls=1 default for
        # GPU tasks at decoration time (.options(num_gpus=...) would keep 0).
        remotes: dict[float, Any] = {}

        def submit(
            demand: Demand, extra: dict[str, Any] = extra, remotes: dict[float, Any] = remotes
        ) -> Any:
            fn = remotes.get(demand.gpus)
            if fn is None:
                fn = remotes[demand.gpus] = ray.remote(num_gpus=demand.gpus, **extra)(ray_task)
            return fn.remote(demand.sleep_s, demand.exclusive)

        def run(
            demands: Sequence[Demand], submit: Callable[[Demand], Any] = submit
        ) -> list[Record]:
            return [_to_record(r) for r in ray.get([submit(d) for d in demands])]

        summaries = measure(run, n_tasks, 1 if cap else repeats, cap=cap)
        notes = []
        if cap is not None:
            notes.append(
                f"{label}: only the first {cap} tasks of each 2,000-task workload "
                "(a fresh worker process per task makes 2,000 take many minutes)."
            )
        results.append(
            {
                "key": key,
                "label": label,
                "workloads": summaries,
                "told": "`ray.get_gpu_ids()`",
                "notes": notes,
            }
        )
    t0 = time.perf_counter()
    ray.shutdown()
    shutdown = time.perf_counter() - t0
    for result in results:
        result["startup_s"] = startup
        result["shutdown_s"] = shutdown
    results[0]["notes"].append(
        f"Ray: `ray.init(num_cpus={GPU_COUNT}, num_gpus={GPU_COUNT})` (logical resources, "
        "dashboard off), tasks keep their default `num_cpus=1`; start-up and shutdown are "
        "shared by both Ray columns."
    )
    return results


def run_dask(n_tasks: int, repeats: int) -> list[dict[str, Any]]:
    from dask.distributed import Client, LocalCluster

    t0 = time.perf_counter()
    cluster = LocalCluster(  # type: ignore[no-untyped-call,unused-ignore]
        n_workers=1,
        threads_per_worker=GPU_COUNT,
        processes=True,
        resources={"GPU": GPU_COUNT},
        dashboard_address=None,
    )
    client = Client(cluster)  # type: ignore[no-untyped-call,unused-ignore]
    startup = time.perf_counter() - t0

    def run(demands: Sequence[Demand]) -> list[Record]:
        # One client.map per distinct demand (map batches submissions; a
        # resource spec is per call), all submitted before gathering.
        groups: dict[Demand, int] = defaultdict(int)
        for demand in demands:
            groups[demand] += 1
        futures = []
        for demand, count in groups.items():
            futures.extend(
                client.map(
                    _record_raw,
                    [demand.sleep_s] * count,
                    [()] * count,
                    [demand.exclusive] * count,
                    resources={"GPU": demand.gpus},
                    pure=False,
                )
            )
        return [_to_record(r) for r in client.gather(futures)]  # type: ignore[no-untyped-call,unused-ignore]

    summaries = measure(run, n_tasks, repeats)
    t0 = time.perf_counter()
    client.close()  # type: ignore[no-untyped-call,unused-ignore]
    cluster.close()
    shutdown = time.perf_counter() - t0
    return [
        {
            "key": "dask",
            "label": "Dask `LocalCluster`",
            "startup_s": startup,
            "shutdown_s": shutdown,
            "workloads": summaries,
            "told": "nothing",
            "notes": [
                f"Dask: `LocalCluster(n_workers=1, threads_per_worker={GPU_COUNT}, "
                f'resources={{"GPU": {GPU_COUNT}}})`; one `client.map` per distinct '
                "resource demand. Dask's resources are counters: a task is not told which "
                "GPU it may use (no `CUDA_VISIBLE_DEVICES`)."
            ],
        }
    ]


def run_gpupool(n_tasks: int, repeats: int) -> list[dict[str, Any]]:
    import anyio

    return anyio.run(_run_gpupool, n_tasks, repeats)


async def _run_gpupool(n_tasks: int, repeats: int) -> list[dict[str, Any]]:
    import anyio

    from gpupool import FakeGPUProvider, GPUAllocation, GPUResourcePool

    def request(demand: Demand) -> dict[str, Any]:
        if demand.exclusive:
            return {"required_gpus": int(demand.gpus)}
        return {
            "required_gpus": 1,
            "min_memory_mb": int(MEMORY_MB * demand.gpus),
            "exclusive": False,
        }

    async def task(allocation: GPUAllocation, demand: Demand) -> Record:
        start = time.monotonic()
        gpus = tuple(str(i) for i in allocation.gpu_indices)
        cvd = allocation.env.get("CUDA_VISIBLE_DEVICES")
        if demand.sleep_s:
            await anyio.sleep(demand.sleep_s)
        return Record(start, time.monotonic(), gpus, allocation.exclusive, cvd, os.getpid())

    results: list[dict[str, Any]] = []

    # GPUResourcePool driven by a task group: what the runner is built on.
    t0 = time.perf_counter()
    pool = GPUResourcePool(provider=FakeGPUProvider(count=GPU_COUNT, memory_mb=MEMORY_MB))
    await pool.__aenter__()
    startup = time.perf_counter() - t0

    async def run_pool(demands: Sequence[Demand]) -> list[Record]:
        records: list[Record] = []

        async def one(demand: Demand) -> None:
            async with pool.allocation(**request(demand)) as allocation:
                records.append(await task(allocation, demand))

        async with anyio.create_task_group() as tg:
            for demand in demands:
                tg.start_soon(one, demand)
        return records

    summaries = await _measure(run_pool, n_tasks, repeats)
    t0 = time.perf_counter()
    await pool.__aexit__(None, None, None)
    results.append(
        {
            "key": "gpupool_pool",
            "label": "gpupool `GPUResourcePool` + task group",
            "startup_s": startup,
            "shutdown_s": time.perf_counter() - t0,
            "workloads": summaries,
            "told": "`allocation.gpu_indices`",
            "notes": [
                "gpupool: `FakeGPUProvider(count=8)`, asyncio backend; fractional tasks are "
                f"`exclusive=False, min_memory_mb={int(MEMORY_MB * FRACTION)}` "
                f"(a quarter of a {MEMORY_MB} MB GPU); `CUDA_VISIBLE_DEVICES` holds GPU UUIDs."
            ],
        }
    )
    runner_result = await _run_gpupool_runner(n_tasks, repeats, request, task)
    if runner_result is not None:
        results.append(runner_result)
    return results


def measure(
    run: Callable[[Sequence[Demand]], list[Record]],
    n_tasks: int,
    repeats: int,
    cap: int | None = None,
) -> dict[str, Any]:
    """Best of ``repeats`` runs of each workload (the sleeping one at most twice);
    ``cap`` shortens the 2,000-task ones."""
    run(WARMUP)
    summaries = {}
    for name, demands in workloads(n_tasks).items():
        if cap is not None and name != "sleep":
            demands = demands[:cap]
        best: dict[str, Any] | None = None
        for _ in range(repeats if name != "sleep" else min(repeats, 2)):
            t0 = time.perf_counter()
            records = run(demands)
            best = _better(best, summarize(name, time.perf_counter() - t0, records))
        summaries[name] = best
    return summaries


async def _measure(
    run: Callable[[Sequence[Demand]], Awaitable[list[Record]]],
    n_tasks: int,
    repeats: int,
    names: Iterable[str] | None = None,
) -> dict[str, Any]:
    """Best of ``repeats`` runs of each workload (the sleeping one at most twice),
    all of them unless ``names``."""
    await run(WARMUP)
    wanted = None if names is None else set(names)
    summaries = {}
    for name, demands in workloads(n_tasks).items():
        if wanted is not None and name not in wanted:
            continue
        best: dict[str, Any] | None = None
        for _ in range(repeats if name != "sleep" else min(repeats, 2)):
            t0 = time.perf_counter()
            records = await run(demands)
            summary = summarize(name, time.perf_counter() - t0, records)
            best = _better(best, summary)
        summaries[name] = best
    return summaries


def merge_configs(
    merged: dict[str, dict[str, Any]], results: Iterable[dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """``merged`` with another round's results folded in: per configuration the
    fastest start-up, shutdown and run of each workload, every run's conflicts
    counted, notes kept once. Returns a new dict; the inputs are not changed."""
    out = dict(merged)
    for result in results:
        old = out.get(result["key"])
        if old is None:
            out[result["key"]] = result
            continue
        workloads_ = dict(old["workloads"])
        for name, summary in result["workloads"].items():
            workloads_[name] = _better(workloads_.get(name), summary)
        out[result["key"]] = {
            **old,
            "startup_s": min(old["startup_s"], result["startup_s"]),
            "shutdown_s": min(old["shutdown_s"], result["shutdown_s"]),
            "workloads": workloads_,
            "notes": list(dict.fromkeys([*old.get("notes", []), *result.get("notes", [])])),
        }
    return out


def _better(best: dict[str, Any] | None, summary: dict[str, Any]) -> dict[str, Any]:
    """The faster of two runs of one workload, counting every run's conflicts."""
    if best is None:
        return summary
    chosen = summary if summary["wall_s"] < best["wall_s"] else best
    return {
        **chosen,
        "conflicts": best["conflicts"] + summary["conflicts"],
        "exclusive_tasks_checked": best.get("exclusive_tasks_checked", best["exclusive_tasks"])
        + summary.get("exclusive_tasks_checked", summary["exclusive_tasks"]),
        "runs": best.get("runs", 1) + summary.get("runs", 1),
    }


async def _run_gpupool_runner(
    n_tasks: int,
    repeats: int,
    request: Callable[[Demand], dict[str, Any]],
    task: Callable[[Any, Demand], Awaitable[Record]],
) -> dict[str, Any] | None:
    """``ParallelRunner.map``, what users would write; ``None`` where it does not exist yet."""
    import anyio

    import gpupool
    from gpupool import FakeGPUProvider, GPUResourcePool

    runner_cls = getattr(gpupool, "ParallelRunner", None)
    if runner_cls is None:
        return None
    notes: list[str] = []
    # Up to one shared task per quarter GPU; exclusive tasks are capped by the GPUs.
    max_parallel = int(GPU_COUNT / FRACTION)
    t0 = time.perf_counter()
    pool = GPUResourcePool(provider=FakeGPUProvider(count=GPU_COUNT, memory_mb=MEMORY_MB))
    await pool.__aenter__()
    runner = runner_cls(pool, max_parallel=max_parallel)
    await runner.__aenter__()
    startup = time.perf_counter() - t0
    # Since gpupool.Resources the request keywords are typed (**options), not named
    # parameters: either marks a runner.map that takes exclusive=.
    map_params = inspect.signature(runner.map).parameters
    shares = "exclusive" in map_params or hasattr(gpupool, "Resources")

    async def fn(demand: Demand, allocation: Any) -> Record:
        return await task(allocation, demand)

    async def map_group(exclusive: bool, items: list[Demand], out: list[Record]) -> None:
        # Per-item resources as callables, as a user with a mixed sweep would
        # write it; ``exclusive`` is per call, so shared items get their own map.
        options: dict[str, Any] = {
            "required_gpus": lambda d: int(request(d)["required_gpus"]),
            "min_memory_mb": lambda d: int(request(d).get("min_memory_mb", 0)),
        }
        if not exclusive:
            options["exclusive"] = False
        for result in await runner.map(fn, items, **options):
            if not result.ok:
                raise RuntimeError(f"runner task failed: {result.error}\n{result.traceback}")
            out.append(result.value)

    async def run_runner(demands: Sequence[Demand]) -> list[Record]:
        records: list[Record] = []
        groups: dict[bool, list[Demand]] = defaultdict(list)
        for demand in demands:
            groups[demand.exclusive].append(demand)
        async with anyio.create_task_group() as tg:
            for exclusive, items in groups.items():
                tg.start_soon(map_group, exclusive, items, records)
        return records

    names = None if shares else ("trivial", "mixed", "sleep")
    summaries = await _measure(run_runner, n_tasks, repeats, names)
    if not shares:
        notes.append("gpupool runner: `runner.map` has no `exclusive=` yet; fractional skipped.")
    t0 = time.perf_counter()
    await runner.__aexit__(None, None, None)
    await pool.__aexit__(None, None, None)
    notes.append(
        f"gpupool runner: `ParallelRunner(pool, max_parallel={max_parallel})`, an async task "
        "function, one `runner.map` per workload with per-item `required_gpus` / "
        "`min_memory_mb` callables (`exclusive=False` for the fractional one); start-up and "
        "shutdown include the pool's."
    )
    return {
        "key": "gpupool_runner",
        "label": "gpupool `ParallelRunner.map`",
        "startup_s": startup,
        "shutdown_s": time.perf_counter() - t0,
        "workloads": summaries,
        "told": "`allocation.gpu_indices`",
        "notes": notes,
    }


PEER_RUNNERS: dict[str, Callable[[argparse.Namespace], list[dict[str, Any]]]] = {
    # gpupool's batches last a fraction of a second, so a burst of load from
    # elsewhere distorts one run more easily: it gets more runs to take the best of.
    "gpupool": lambda args: run_gpupool(args.tasks, max(args.repeats, GPUPOOL_REPEATS)),
    "ray": lambda args: run_ray(args.tasks, args.repeats, args.ray_default_tasks),
    "dask": lambda args: run_dask(args.tasks, args.repeats),
}

PEER_MODULES = {"gpupool": "gpupool", "ray": "ray", "dask": "distributed"}


# ---------------------------------------------------------------------------
# Orchestration


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _gpupool_version() -> str:
    """This checkout's gpupool: the package version plus the git commit measured."""
    version = "?"
    init = REPO_ROOT / "pyproject.toml"
    if init.exists():
        for line in init.read_text().splitlines():
            if line.startswith("version"):
                version = line.split("=", 1)[1].strip().strip('"')
                break
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return version
    return f"{version} ({commit})"


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.system()} {platform.release()}, {os.cpu_count()} CPUs ({cpu})"


def run_peer_in_child(
    peer: str, args: argparse.Namespace, first_round: bool
) -> tuple[list[dict[str, Any]], str]:
    """Run one peer in a fresh interpreter; (results, note) — note says why it was skipped.

    Ray's fresh-worker-per-task column runs in the first round only (it is slow
    enough that load on the machine barely moves it).
    """
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "peer.json"
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join(
                filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])
            ),
        )
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--peer",
            peer,
            "--out",
            str(out),
            "--tasks",
            str(args.tasks),
            "--ray-default-tasks",
            str(args.ray_default_tasks if first_round else 0),
            "--repeats",
            str(args.repeats),
        ]
        proc = subprocess.run(
            command,
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=args.peer_timeout,
        )
        if proc.returncode != 0 or not out.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            return [], f"{peer}: failed (exit {proc.returncode}): " + " / ".join(tail)
        payload = json.loads(out.read_text())
    if "skipped" in payload:
        return [], str(payload["skipped"])
    return list(payload["configs"]), ""


def child_main(args: argparse.Namespace) -> int:
    """Inside a child: run one peer and write its results as JSON."""
    out = Path(args.out)
    module = PEER_MODULES[args.peer]
    try:
        __import__(module)
    except ImportError as exc:
        out.write_text(
            json.dumps(
                {"skipped": f"{args.peer}: not installed ({exc}); `pip install -e '.[bench]'`"}
            )
        )
        return 0
    configs = PEER_RUNNERS[args.peer](args)
    out.write_text(json.dumps({"configs": configs}))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=2000, help="tasks per workload (default 2000)")
    parser.add_argument(
        "--ray-default-tasks",
        type=int,
        default=16,
        help="tasks per workload for Ray's fresh-worker-per-task default (default 16)",
    )
    parser.add_argument(
        "--repeats", type=int, default=2, help="runs per workload per round (default 2)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="rounds over all peers, interleaved, best kept (default 2)",
    )
    parser.add_argument("--peers", default=",".join(PEERS), help="comma-separated subset of peers")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md")
    parser.add_argument("--peer-timeout", type=float, default=600.0, help="seconds per peer")
    parser.add_argument("--peer", choices=PEERS, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.tasks < 1:
        parser.error(f"--tasks must be >= 1, got {args.tasks}")
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    if args.ray_default_tasks < (0 if args.peer else 1):
        parser.error(f"--ray-default-tasks must be >= 1, got {args.ray_default_tasks}")
    if args.peer:
        return child_main(args)

    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = sorted(set(peers) - set(PEERS))
    if unknown or "gpupool" not in peers:
        parser.error(
            f"--peers must include gpupool and name only {', '.join(PEERS)}; got {args.peers!r}"
        )

    merged: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    # Rounds interleave the peers, so a burst of load from elsewhere on the
    # machine does not land on one peer only; each figure is the best seen.
    for round_ in range(args.rounds):
        for peer in peers:
            print(f"round {round_ + 1}: {peer} ...", file=sys.stderr, flush=True)
            started = time.perf_counter()
            try:
                results, note = run_peer_in_child(peer, args, first_round=round_ == 0)
            except subprocess.TimeoutExpired:
                results = []
                note = f"{peer}: did not finish within {args.peer_timeout:.0f} s; skipped"
            elapsed = time.perf_counter() - started
            print(f"  {peer}: {elapsed:.1f} s {note}", file=sys.stderr, flush=True)
            merged = merge_configs(merged, results)
            if note and note not in notes:
                notes.append(note)
    if "ray_reuse" in merged and "ray_default" in merged:
        # One ray.init serves both Ray columns; show the best one seen in both.
        for field in ("startup_s", "shutdown_s"):
            merged["ray_default"][field] = merged["ray_reuse"][field]
    configs = list(merged.values())
    keys = [c["key"] for c in configs]
    if "gpupool_runner" in keys:
        baseline = "gpupool_runner"
    elif "gpupool_pool" in keys:
        baseline = "gpupool_pool"
    else:
        print("gpupool itself did not run: " + "; ".join(notes), file=sys.stderr)
        return 1
    order = ["gpupool_pool", "gpupool_runner", "ray_reuse", "ray_default", "dask"]
    configs.sort(key=lambda c: order.index(c["key"]))
    versions = {
        "Python": platform.python_version(),
        "gpupool": _gpupool_version(),
        **{
            dist: v
            for dist in ("anyio", "ray", "dask", "distributed")
            if (v := _version(dist)) is not None
        },
    }
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_description(),
        "versions": versions,
        "baseline": baseline,
        "baseline_label": next(c["label"] for c in configs if c["key"] == baseline),
        "tasks": args.tasks,
        "repeats": args.repeats,
        "rounds": args.rounds,
        "ray_default_tasks": args.ray_default_tasks,
        "configs": configs,
        "notes": notes,
    }
    report["targets"] = check_targets(configs)
    section = render_section(report)
    print(section)
    RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_PATH.write_text(json.dumps(report, indent=2) + "\n")
    if not args.no_docs:
        DOCS_PATH.parent.mkdir(parents=True, exist_ok=True)
        document = DOCS_PATH.read_text() if DOCS_PATH.exists() else ""
        DOCS_PATH.write_text(replace_section(document, section))
        print(
            f"wrote {DOCS_PATH.relative_to(REPO_ROOT)} and {RESULTS_PATH.relative_to(REPO_ROOT)}",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
