"""gpupool on a Ray cluster (issue 13): per-task overhead, wall time, start-up, beside plain Ray.

Run from the repository root (the extra ``ray`` installed)::

    python benchmarks/bench_ray.py                      # both backends, full sizes (~3.5 min)
    python benchmarks/bench_ray.py --quick              # smaller, for a smoke run
    python benchmarks/bench_ray.py --profile tasks      # where a task's time goes; then stop
    python benchmarks/bench_ray.py --profile placement  # figure 2 with each node choice logged

One real Ray cluster serves the whole run, every process on 127.0.0.1
(``ray.cluster_utils.Cluster``, as in ``tests/ray/conftest.py``): a head
with 1 CPU and no GPU, and 2 worker nodes with 4 CPUs and 4 GPUs each.
Each worker node has ``num_gpus=4`` for Ray (so that plain Ray schedules GPU
tasks there) and 4 fake GPUs of its own for gpupool: every agent calls the
provider factory ``fake_gpus`` below, which reads the node's environment
(``add_node(env_vars=...)``); the head has none, so no agent serves there.
The driver is this process, connected with ``ray.init``. Every figure stands
beside a baseline measured in the same run, on the same cluster, because
this machine is shared and noisy:

1. **Per-task overhead**, trivial 1-GPU tasks (the function returns its item
   at once). (a) gpupool: ``ParallelRunner(RayCluster(...), max_parallel=8)``
   and ``runner.map(fn, range(N), required_gpus=1)``, per task = wall / N
   (all 8 GPUs busy); (b) plain Ray with worker reuse:
   ``@ray.remote(num_gpus=1, max_calls=0)`` over the same N, the driver doing
   ``ray.get([f.remote(i) for i in range(N)])``. Rounds interleave a, b, a,
   b, ... on one open ``RayCluster`` (workers warm: a warm-up map ran first);
   the figure is the median round. Target: (a) at most 1.25x (b). (c) plain
   Ray's GPU default ``@ray.remote(num_gpus=1)`` (``max_calls=1``: a fresh
   worker process per task), all NC (32) in flight, per task = wall / NC,
   measured after both backends, after a first round of 16 (not counted)
   that uses up the workers Ray starts in advance; target: (a) at least 100x
   better than (c). Info rows: the sequential latency (one task at a time:
   ``max_parallel=1``, and ``ray.get(f.remote(i))`` in a loop), and the CPU
   per task of every process involved (this driver and every Ray process of
   the cluster, from ``/proc/PID/stat``, summed over the round), which is
   what bounds the rate on 2 shared cores.
2. **32 x 0.5 s tasks** (``time.sleep(0.5)``) on 2 nodes x 4 GPUs through
   gpupool (warm workers, ``max_parallel=8``): wall time of the ``map``
   against the ideal, ceil(32 / 8) x 0.5 s = 2.0 s; target within 10 %.
   Baseline row: plain Ray ``max_calls=0`` for the same, interleaved. Info
   rows: how the tasks spread in the median round (tasks per node and per GPU,
   from what each task reports; the idle gap between consecutive tasks on a
   GPU), and the same 32 tasks on a ``RayCluster`` just opened (8 worker
   actors to start).
3. **Start-up** on the running cluster: the time for ``async with
   RayCluster(...)`` to enter (an agent started on each of the 3 nodes and
   its first statistics back, the GPU-less head's agent ended), the first
   task after it (``map`` of one item: a worker actor to start), a second
   one (it reports whether it ran in the first one's worker: workers are per
   GPU set, and the second task may get another GPU), and ``aclose``. Info
   rows, the median of 3 rounds.

The gpupool rows run on each anyio backend (``--backend``); the plain Ray
baselines are measured again inside each backend's run. After the run the
cluster is shut down (also on errors, Ctrl-C and SIGTERM) and the script
checks that no process it started is left (a row, target 0).

``--profile tasks`` (asyncio only) times each RPC of a gpupool task alone,
latency and CPU per process kind (the agent's ``acquire`` and ``release``,
the worker's ``call``, beside a plain Ray task, no-op actor calls, and an
async actor sending back each piece of what ``acquire`` returns); then task
paths with fewer RPCs built from the real agents' workers (no product
change: 8 leases held by the driver, one ``worker.call`` per task, sync and
awaited; and one call per task to a node-side relay, the shape of an
``agent.run``), interleaved with plain Ray and gpupool as it is; then the
driver's awaits inside a real 8-wide ``map``, the CPU per task of every
process kind, and a cProfile of the driver during the ``map`` (saved to
``benchmarks/results/``). ``--profile placement`` runs figure 2's rounds
and prints every node choice of the driver with what it knew then.

Prints a markdown table and writes JSON to ``benchmarks/results/bench_ray.json``
(or ``--json FILE``).
"""

from __future__ import annotations

import os

# Before `import ray` (read at import; the nodes inherit them): every Ray process on
# loopback only (without it a client hangs connecting to the machine's interface
# address), and no usage report sent out.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

import argparse
import asyncio
import contextlib
import cProfile
import gc
import itertools
import logging
import math
import operator
import platform
import pstats
import signal
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import anyio
import ray
from ray.cluster_utils import Cluster
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.report import Row, publish, table  # noqa: E402
from gpupool import (  # noqa: E402
    FakeGPUProvider,
    GPUAllocation,
    ParallelRunner,
    Resources,
    TaskStatus,
)
from gpupool.integrations.ray import RayCluster  # noqa: E402
from gpupool.integrations.ray.refs import resolved  # noqa: E402
from gpupool.integrations.ray.worker import Call  # noqa: E402

BACKENDS = ("asyncio", "trio")
#: Worker nodes, and the (fake) GPUs and CPUs of each.
NODES, GPUS_PER_NODE, CPUS_PER_NODE = 2, 4, 4
GPUS = NODES * GPUS_PER_NODE
#: The environment variable that tells a node's agent how many fake GPUs it has.
NODE_ENV = "GPUPOOL_BENCH_NODE_GPUS"
#: Figure 2: tasks of SLEEP seconds each.
SLEEP_TASKS, SLEEP = 32, 0.5
IDEAL = math.ceil(SLEEP_TASKS / GPUS) * SLEEP


# ==================================================================== what runs on the nodes


def fake_gpus() -> FakeGPUProvider:
    """The provider factory each agent calls on its node (a module function: picklable)."""
    return FakeGPUProvider(count=int(os.environ.get(NODE_ENV, "0")))


def trivial(item: int, allocation: GPUAllocation | None) -> int:
    return item


#: What a sleeping task reports: (node id, its GPUs, started, ended) (time.time()).
Span = tuple[str, str, float, float]


def sleeps(item: float, allocation: GPUAllocation | None) -> Span:
    assert allocation is not None
    start = time.time()
    time.sleep(item)
    node = ray.get_runtime_context().get_node_id()
    return node, ",".join(allocation.gpu_uuids), start, time.time()


_CALL_NUMBERS = itertools.count(1)


def worker_call(worker: Any, fn: Any, item: object, allocation: GPUAllocation) -> Any:
    """A gpupool worker's ``call`` as the profile's prototypes make it: the function
    sent pickled with every call (RayCluster sends it once per lease's worker)."""
    payload = ray.cloudpickle.dumps(fn)
    call = Call(next(_CALL_NUMBERS), 0, payload, item, allocation.id, allocation, False)
    return worker.call.remote(call)


def plain_trivial(item: int) -> int:
    return item


def plain_sleeps(item: float) -> Span:
    start = time.time()
    time.sleep(item)
    node = ray.get_runtime_context().get_node_id()
    return node, os.environ.get("CUDA_VISIBLE_DEVICES", ""), start, time.time()


# Plain Ray, made once the module is loaded (ray.remote needs no connection).
#: (b) worker reuse.
reused_trivial = ray.remote(num_gpus=1, max_calls=0)(plain_trivial)
reused_sleeps = ray.remote(num_gpus=1, max_calls=0)(plain_sleeps)
#: (c) Ray's GPU default: max_calls=1, a fresh worker process per task.
fresh_trivial = ray.remote(num_gpus=1)(plain_trivial)


# ==================================================================== the cluster and its processes


class _Terminated(SystemExit):
    """SIGTERM, raised in the main thread so that the cluster is shut down on the way out."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Terminated(128 + signum)


def start_cluster() -> tuple[Cluster, float]:
    """Head + 2 worker nodes, every one on 127.0.0.1, and this process connected."""
    start = time.perf_counter()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "node_ip_address": "127.0.0.1",
            "include_dashboard": False,
        },
    )
    try:
        for _ in range(NODES):
            cluster.add_node(
                num_cpus=CPUS_PER_NODE,
                num_gpus=GPUS_PER_NODE,
                node_ip_address="127.0.0.1",
                env_vars={NODE_ENV: str(GPUS_PER_NODE)},
            )
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, logging_level=logging.WARNING)
        # Ray's core worker installs a SIGTERM handler that ends the process at once;
        # ours raises in the main thread, so that the cluster is shut down on the way out.
        signal.signal(signal.SIGTERM, _on_sigterm)
    except BaseException:
        stop_cluster(cluster)
        raise
    return cluster, time.perf_counter() - start


def stop_cluster(cluster: Cluster) -> None:
    try:
        ray.shutdown()
    finally:
        cluster.shutdown()  # type: ignore[no-untyped-call]


def _proc_stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds so far) of a live process, from /proc/PID/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] == "Z":  # exited, not reaped yet
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / ticks


def descendants() -> dict[int, float]:
    """Every live process started (directly or not) by this one: pid -> CPU seconds."""
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _proc_stat(int(entry.name))) is not None:
            stats[int(entry.name)] = stat
    children: dict[int, list[int]] = defaultdict(list)
    for pid, (parent, _) in stats.items():
        children[parent].append(pid)
    found, todo = {}, list(children[os.getpid()])
    while todo:
        pid = todo.pop()
        found[pid] = stats[pid][1]
        todo += children[pid]
    return found


def kind(pid: int) -> str:
    """What a Ray process is, from its command line (Ray workers set their titles)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "gone"
    line = b" ".join(argv).decode(errors="replace")
    if line.startswith("ray::NodeAgent"):
        return "gpupool agents"
    if line.startswith("ray::TaskWorker"):
        return "gpupool workers"
    if line.startswith("ray::"):
        return "Ray task workers (ray::IDLE, ray::plain_*)"
    if "raylet" in argv[0].decode(errors="replace"):
        return "raylets"
    if "gcs_server" in line:
        return "gcs_server"
    return "other Ray processes"


class CpuMeter:
    """CPU seconds this process and every process it started spent between start and stop."""

    def __init__(self) -> None:
        self.by_kind: dict[str, float] = {}

    def __enter__(self) -> CpuMeter:
        self._self = time.process_time()
        self._others = descendants()
        return self

    def __exit__(self, *exc: object) -> None:
        driver = time.process_time() - self._self
        now = descendants()
        by_kind: dict[str, float] = defaultdict(float)
        by_kind["driver"] = driver
        for pid, cpu in now.items():
            by_kind[kind(pid)] += cpu - self._others.get(pid, 0.0)
        self.by_kind = dict(by_kind)

    @property
    def total(self) -> float:
        return sum(self.by_kind.values())


def reap(pids: set[int], within: float = 15.0) -> list[str]:
    """Wait for ``pids`` (processes this run started) to end; kill, by pid, any left."""
    deadline = time.monotonic() + within
    left = pids
    while left and time.monotonic() < deadline:
        left = {pid for pid in left if _proc_stat(pid) is not None}
        time.sleep(0.1)
    named = [f"{pid} {kind(pid)}" for pid in sorted(left)]
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return named


# ==================================================================== measuring


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1e3


def median_index(values: list[float]) -> int:
    """The index of the median of ``values`` (the lower one of an even count)."""
    return values.index(sorted(values)[(len(values) - 1) // 2])


def spread(values: list[float], unit: float = 1e3, digits: int = 2) -> str:
    """``values`` as "median (min-max)", in ms (or times ``unit``)."""
    scaled = [v * unit for v in values]
    return f"{statistics.median(scaled):.{digits}f} ({min(scaled):.{digits}f}-{max(scaled):.{digits}f})"


def plain_round(
    remote: Any, items: list[Any], *, in_flight: bool, values: list[Any] | None = None
) -> float:
    """Wall seconds for plain Ray to run ``remote`` over ``items`` (values into ``values``)."""
    gc.collect()
    start = time.perf_counter()
    if in_flight:
        got = ray.get([remote.remote(i) for i in items])
    else:
        got = [ray.get(remote.remote(i)) for i in items]
    elapsed = time.perf_counter() - start
    if values is not None:
        values += got
    return elapsed


async def gpupool_round(
    runner: ParallelRunner, fn: Any, items: list[Any], *, values: list[Any] | None = None
) -> float:
    """Wall seconds for ``runner.map(fn, items, required_gpus=1)``; every task must succeed
    (their values into ``values``)."""
    gc.collect()
    start = time.perf_counter()
    results = await runner.map(fn, items, required_gpus=1)
    elapsed = time.perf_counter() - start
    failed = [r for r in results if r.status is not TaskStatus.SUCCEEDED]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(items)} tasks failed: {failed[0].error}")
    if values is not None:
        values += [r.value for r in results]
    return elapsed


def layout(spans: list[Span]) -> dict[str, Any]:
    """How the sleeping tasks of one round spread: per node, per GPU, and the idle gap
    between one task's end and the next one's start on the same GPU."""
    per_node: dict[str, int] = defaultdict(int)
    per_gpu: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for node, gpus, start, end in spans:
        per_node[node] += 1
        per_gpu[node, gpus].append((start, end))
    gaps = []
    for runs in per_gpu.values():
        runs.sort()
        gaps += [b[0] - a[1] for a, b in itertools.pairwise(runs)]
    return {
        "per_node": sorted(per_node.values(), reverse=True),
        "gpus_used": len(per_gpu),
        "most_on_one_gpu": max(len(r) for r in per_gpu.values()),
        "gap_median_ms": round(median_ms(gaps), 1) if gaps else None,
        "gap_max_ms": round(max(gaps) * 1e3, 1) if gaps else None,
        "span_s": round(max(e for *_, e in spans) - min(s for *_, s, _ in spans), 3),
    }


def _layout_text(shape: dict[str, Any]) -> str:
    return (
        f"tasks per node {'/'.join(map(str, shape['per_node']))}, on {shape['gpus_used']} GPUs, "
        f"at most {shape['most_on_one_gpu']} on one; gap between tasks on a GPU median "
        f"{shape['gap_median_ms']} ms, max {shape['gap_max_ms']} ms; first start to last end "
        f"{shape['span_s']:.3f} s"
    )


async def timed(step: Awaitable[Any]) -> float:
    start = time.perf_counter()
    await step
    return time.perf_counter() - start


def where(item: int, allocation: GPUAllocation | None) -> tuple[str, int]:
    """A trivial task that says which worker ran it: (node id, pid)."""
    return ray.get_runtime_context().get_node_id(), os.getpid()


async def start_up(sizes: dict[str, int]) -> dict[str, Any]:
    """Figure 3: enter, first task, second task, aclose, on fresh RayClusters."""
    runs: dict[str, list[float]] = defaultdict(list)
    same_worker = 0
    for _ in range(sizes["startup_rounds"]):
        gc.collect()
        cluster = RayCluster(provider=fake_gpus)
        try:
            runs["enter"].append(await timed(cluster.__aenter__()))
            async with ParallelRunner(cluster, max_parallel=GPUS) as runner:
                ran = []
                for key in ("first", "second"):
                    start = time.perf_counter()
                    [result] = await runner.map(where, [0], required_gpus=1)
                    runs[key].append(time.perf_counter() - start)
                    assert result.status is TaskStatus.SUCCEEDED, result.error
                    ran.append(result.value)
                same_worker += ran[0] == ran[1]
        finally:
            runs["aclose"].append(await timed(cluster.aclose()))
    # The 32 x 0.5 s on a cluster just opened: 8 worker actors start during it.
    async with (
        RayCluster(provider=fake_gpus) as cluster,
        ParallelRunner(cluster, max_parallel=GPUS) as runner,
    ):
        runs["cold_sleeps"].append(await gpupool_round(runner, sleeps, [SLEEP] * SLEEP_TASKS))
    return {**runs, "same_worker": same_worker}


async def per_task(sizes: dict[str, int]) -> dict[str, Any]:
    """Figures 1 (a, b) and 2, interleaved rounds on one open RayCluster."""
    n, n_seq = sizes["tasks"], sizes["sequential"]
    runs: dict[str, list[float]] = defaultdict(list)
    cpu: dict[str, list[dict[str, float]]] = defaultdict(list)
    shapes: dict[str, list[dict[str, Any]]] = defaultdict(list)
    async with (
        RayCluster(provider=fake_gpus) as cluster,
        ParallelRunner(cluster, max_parallel=GPUS) as wide,
        ParallelRunner(cluster, max_parallel=1) as narrow,
    ):
        # Warm-up: a worker actor per GPU on each node, Ray's workers for (b).
        await gpupool_round(wide, trivial, list(range(8 * GPUS)))
        await gpupool_round(narrow, trivial, list(range(20)))
        plain_round(reused_trivial, list(range(8 * GPUS)), in_flight=True)
        plain_round(reused_sleeps, [0.0] * GPUS, in_flight=True)
        grants = {node: s.grants_total for node, s in cluster.node_statistics().items()}
        for _ in range(sizes["rounds"]):
            with CpuMeter() as meter:
                runs["a"].append(await gpupool_round(wide, trivial, list(range(n))))
            cpu["a"].append(meter.by_kind)
            with CpuMeter() as meter:
                runs["b"].append(plain_round(reused_trivial, list(range(n)), in_flight=True))
            cpu["b"].append(meter.by_kind)
            runs["a_seq"].append(await gpupool_round(narrow, trivial, list(range(n_seq))))
            runs["b_seq"].append(plain_round(reused_trivial, list(range(n_seq)), in_flight=False))
        for _ in range(sizes["sleep_rounds"]):
            spans: list[Span] = []
            runs["a_sleeps"].append(
                await gpupool_round(wide, sleeps, [SLEEP] * SLEEP_TASKS, values=spans)
            )
            shapes["a_sleeps"].append(layout(spans))
            spans = []
            runs["b_sleeps"].append(
                plain_round(reused_sleeps, [SLEEP] * SLEEP_TASKS, in_flight=True, values=spans)
            )
            shapes["b_sleeps"].append(layout(spans))
        after = cluster.node_statistics()
        grants = {node: after[node].grants_total - grants.get(node, 0) for node in after}
    return {"runs": dict(runs), "cpu": dict(cpu), "shapes": dict(shapes), "grants_by_node": grants}


async def gpupool_phase(sizes: dict[str, int]) -> dict[str, Any]:
    return {"startup": await start_up(sizes), **await per_task(sizes)}


def fresh_worker_rounds(sizes: dict[str, int]) -> list[float]:
    """(c): Ray's GPU default, NC tasks in flight, per-round wall seconds.

    A first round of 2 x GPUS tasks, not counted, uses up the workers Ray
    started in advance (as many as each node has CPUs), which would otherwise
    serve the first tasks without a process start.
    """
    plain_round(fresh_trivial, list(range(2 * GPUS)), in_flight=True)
    items = list(range(sizes["fresh"]))
    return [plain_round(fresh_trivial, items, in_flight=True) for _ in range(sizes["fresh_rounds"])]


# ==================================================================== the rows


def cpu_per_task(rounds: list[dict[str, float]], n: int) -> tuple[float, dict[str, float]]:
    """The median round's CPU per task (s), total and by process kind."""
    totals = [sum(r.values()) for r in rounds]
    middle = rounds[totals.index(sorted(totals)[len(totals) // 2])]
    return sum(middle.values()) / n, {k: v / n for k, v in sorted(middle.items())}


def _kinds(by_kind: dict[str, float]) -> str:
    return ", ".join(f"{k} {v * 1e3:.2f}" for k, v in by_kind.items() if v * 1e3 >= 0.005)


def backend_rows(backend: str, got: dict[str, Any], sizes: dict[str, int]) -> list[Row]:
    runs, n, n_seq = got["runs"], sizes["tasks"], sizes["sequential"]
    rounds = len(runs["a"])
    a = median_ms(runs["a"]) / n
    b = median_ms(runs["b"]) / n
    a_seq, b_seq = median_ms(runs["a_seq"]) / n_seq, median_ms(runs["b_seq"]) / n_seq
    cpu_a, kinds_a = cpu_per_task(got["cpu"]["a"], n)
    cpu_b, kinds_b = cpu_per_task(got["cpu"]["b"], n)
    a_sleeps, b_sleeps = statistics.median(runs["a_sleeps"]), statistics.median(runs["b_sleeps"])
    start = got["startup"]
    rows = [
        {
            "backend": backend,
            "what": f"1. trivial 1-GPU tasks, {GPUS} in flight: per task (median of {rounds} "
            f"interleaved rounds of {n:,})",
            "baseline": f"plain Ray `max_calls=0`: {b:.2f} ms",
            "measured": f"{a:.2f} ms",
            "ratio": round(a / b, 2),
            "target": "<= 1.25",
            "ok": a / b <= 1.25,
            "value": a,
        },
        {
            "backend": backend,
            "what": f"1. the same, sequential (1 in flight, rounds of {n_seq:,}): per task",
            "baseline": f"plain Ray `max_calls=0`: {b_seq:.2f} ms",
            "measured": f"{a_seq:.2f} ms",
            "ratio": round(a_seq / b_seq, 2),
            "target": "(info)",
            "ok": None,
            "value": a_seq,
        },
        {
            "backend": backend,
            "what": f"1. CPU per task, {GPUS} in flight, this driver + every Ray process "
            "(median round), in ms: by process",
            "baseline": f"plain Ray: {cpu_b * 1e3:.2f} ms ({_kinds(kinds_b)})",
            "measured": f"{cpu_a * 1e3:.2f} ms ({_kinds(kinds_a)})",
            "ratio": round(cpu_a / cpu_b, 2),
            "target": "(info)",
            "ok": None,
            "value": cpu_a,
            "by_kind_ms": {"gpupool": kinds_a, "plain": kinds_b},
        },
        {
            "backend": backend,
            "what": f"2. {SLEEP_TASKS} x {SLEEP:g} s tasks on {NODES} nodes x {GPUS_PER_NODE} GPUs, "
            f"warm workers: wall (median of {len(runs['a_sleeps'])})",
            "baseline": f"ideal {IDEAL:.2f} s; plain Ray `max_calls=0`: {b_sleeps:.3f} s "
            f"({b_sleeps / IDEAL:.3f}x ideal)",
            "measured": f"{a_sleeps:.3f} s",
            "ratio": round(a_sleeps / IDEAL, 3),
            "target": "<= 1.10 (of ideal)",
            "ok": a_sleeps <= 1.10 * IDEAL,
            "value": a_sleeps,
        },
        {
            "backend": backend,
            "what": "2. how those tasks spread (the median round of each)",
            "baseline": "plain Ray: "
            + _layout_text(got["shapes"]["b_sleeps"][median_index(runs["b_sleeps"])]),
            "measured": _layout_text(got["shapes"]["a_sleeps"][median_index(runs["a_sleeps"])]),
            "ratio": None,
            "target": "(info)",
            "ok": None,
            "value": None,
        },
        {
            "backend": backend,
            "what": f"2. the same on a RayCluster just opened ({GPUS} worker actors to start)",
            "baseline": f"ideal {IDEAL:.2f} s",
            "measured": f"{start['cold_sleeps'][0]:.3f} s",
            "ratio": round(start["cold_sleeps"][0] / IDEAL, 3),
            "target": "(info)",
            "ok": None,
            "value": start["cold_sleeps"][0],
        },
    ]
    rounds3 = len(start["enter"])
    for key, what in (
        ("enter", "`async with RayCluster(...)` enters: agents on 3 nodes, first statistics back"),
        ("first", "the first task after it (`map` of 1 item: a worker actor starts)"),
        (
            "second",
            f"the next task (it ran in the first one's worker in {start['same_worker']} "
            f"of {len(start['enter'])} rounds; else another GPU's, cold)",
        ),
        ("aclose", "`aclose()`: agents' pools closed, workers and agents ended"),
    ):
        rows.append(
            {
                "backend": backend,
                "what": f"3. {what}: median (min-max) of {rounds3}",
                "baseline": "",
                "measured": f"{spread(start[key])} ms",
                "ratio": None,
                "target": "(info)",
                "ok": None,
                "value": statistics.median(start[key]),
            }
        )
    return rows


def fresh_rows(per_backend: dict[str, float], fresh: list[float], nc: int) -> list[Row]:
    c = median_ms(fresh) / nc
    rows = []
    for backend, a in per_backend.items():
        rows.append(
            {
                "backend": backend,
                "what": f"1. trivial 1-GPU tasks, {GPUS} in flight: gpupool per task against Ray's "
                f"GPU default (fresh worker per task; {nc} in flight, median of {len(fresh)})",
                "baseline": f"Ray GPU default: {c:.1f} ms",
                "measured": f"{a:.2f} ms ({c / a:.0f}x better)",
                "ratio": round(a / c, 4),
                "target": "<= 0.01 (100x better)",
                "ok": a / c <= 0.01,
                "value": a,
            }
        )
    return rows


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# ==================================================================== the run


def sizes_for(quick: bool) -> dict[str, int]:
    if quick:
        return {"tasks": 200, "sequential": 50, "rounds": 3, "sleep_rounds": 1,
                "startup_rounds": 1, "fresh": 16, "fresh_rounds": 1}  # fmt: skip
    return {"tasks": 1_000, "sequential": 200, "rounds": 7, "sleep_rounds": 3,
            "startup_rounds": 3, "fresh": 32, "fresh_rounds": 3}  # fmt: skip


class OwnProcesses:
    """The processes this run started (the cluster's, and those Ray started for it), noted
    while they live, so that what is left after the shutdown can be found and ended by pid."""

    def __init__(self) -> None:
        self.pids: set[int] = set()

    def note(self) -> None:
        self.pids |= set(descendants())


def run(args: argparse.Namespace) -> dict[str, Any]:
    sizes = sizes_for(args.quick)
    backends = BACKENDS if args.backend == "both" else (args.backend,)
    rows: list[Row] = []
    raw: dict[str, Any] = {"sizes": sizes}
    own = OwnProcesses()
    cluster, up = start_cluster()
    try:
        own.note()
        fast: dict[str, float] = {}
        for backend in backends:
            got = anyio.run(gpupool_phase, sizes, backend=backend)
            own.note()
            raw[backend] = got
            rows += backend_rows(backend, got, sizes)
            fast[backend] = median_ms(got["runs"]["a"]) / sizes["tasks"]
        raw["fresh"] = fresh_worker_rounds(sizes)
        rows += fresh_rows(fast, raw["fresh"], sizes["fresh"])
    finally:
        own.note()
        stop_cluster(cluster)
        left = reap(own.pids)
    rows.sort(key=lambda r: (backends.index(r["backend"]), r["what"][:2]))
    rows += [
        {
            "backend": "-",
            "what": f"the cluster: head + {NODES} nodes up and `ray.init` connected (once)",
            "baseline": "",
            "measured": f"{up:.2f} s",
            "ratio": None,
            "target": "(info)",
            "ok": None,
            "value": up,
        },
        {
            "backend": "-",
            "what": f"processes of this run left 15 s after the cluster's shutdown "
            f"(of {len(own.pids)} seen)",
            "baseline": "",
            "measured": str(len(left)) + (f" ({', '.join(left)}; killed)" if left else ""),
            "ratio": None,
            "target": "0",
            "ok": not left,
            "value": len(left),
        },
    ]
    return {"rows": rows, "raw": raw}


# ==================================================================== --profile


PROBES = {
    "none": "None",
    "allocation": "a GPUAllocation",
    "stats": "a PoolStatistics (4 GPUs)",
    "handle": "an actor handle",
    "all": "(allocation, handle, statistics)",
}


@ray.remote
class Probe:
    """An async actor that sends back what the agent's ``acquire`` sends, piece by piece."""

    def __init__(self, handle: Any, allocation: GPUAllocation, stats: Any) -> None:
        self._handle, self._allocation, self._stats = handle, allocation, stats

    async def none(self) -> None:
        return None

    async def allocation(self) -> GPUAllocation:
        return self._allocation

    async def stats(self) -> Any:
        return self._stats

    async def handle(self) -> Any:
        return self._handle

    async def all(self) -> tuple[Any, ...]:
        return self._allocation, self._handle, self._stats


def rpc_costs(agent: Any, node: str, k: int, rounds: int = 3) -> dict[str, dict[str, Any]]:
    """Latency (s, each call) and CPU (s per call, by process kind) of each RPC kind alone.

    Blocks of ``k`` sequential calls of one kind, the kinds interleaved over
    ``rounds``; the CPU is the block's, divided by ``k``, summed over rounds.
    """
    latency: dict[str, list[float]] = defaultdict(list)
    cpu: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    probes: dict[str, Any] = {}

    def block(name: str, call: Callable[[], Any]) -> None:
        with CpuMeter() as meter:
            for _ in range(k):
                start = time.perf_counter()
                call()
                latency[name].append(time.perf_counter() - start)
        for kind_, seconds in meter.by_kind.items():
            cpu[name][kind_] += seconds / k / rounds

    def pair() -> None:
        start = time.perf_counter()
        granted, _, _ = ray.get(agent.acquire.remote(Resources(1), None))
        latency["  of which agent.acquire"].append(time.perf_counter() - start)
        start = time.perf_counter()
        ray.get(agent.release.remote(granted.id, True))
        latency["  of which agent.release"].append(time.perf_counter() - start)

    for _ in range(rounds):
        gc.collect()
        block("plain Ray task (max_calls=0)", lambda: ray.get(reused_trivial.remote(0)))
        block(
            "agent.statistics (no-op call, async actor)", lambda: ray.get(agent.statistics.remote())
        )
        block("agent.acquire + agent.release", pair)
        granted, worker, _ = ray.get(agent.acquire.remote(Resources(1), None))
        block(
            "worker.call, fn from __main__ (by value)",
            lambda w=worker, g=granted: ray.get(worker_call(w, trivial, 0, g)),
        )
        block(
            "worker.call, fn importable (operator.is_)",
            lambda w=worker, g=granted: ray.get(worker_call(w, operator.is_, 0, g)),
        )
        block("worker.pid (no-op call, sync actor)", lambda w=worker: ray.get(w.pid.remote()))
        # What the agent's acquire sends back, piece by piece, from an async actor.
        probe = probes.get("probe")
        if probe is None:
            stats = ray.get(agent.statistics.remote())
            on_node = NodeAffinitySchedulingStrategy(node, soft=False)
            probe = probes["probe"] = Probe.options(num_cpus=0, scheduling_strategy=on_node).remote(
                worker, granted, stats
            )
            ray.get(probe.none.remote())
        for what in ("none", "allocation", "stats", "handle", "all"):
            block(
                f"async actor returning {PROBES[what]}",
                lambda p=probe, w=what: ray.get(getattr(p, w).remote()),
            )
        ray.get(agent.release.remote(granted.id, True))
    for actor in probes.values():
        ray.kill(actor)
    return {name: {"latency": latency[name], "cpu": dict(cpu.get(name, {}))} for name in latency}


def report_rpcs(costs: dict[str, dict[str, Any]]) -> None:
    kinds = (
        "driver",
        "gpupool agents",
        "gpupool workers",
        "Ray task workers (ray::IDLE, ray::plain_*)",
        "raylets",
        "gcs_server",
    )
    short = ("driver", "agent", "worker", "Ray wkr", "raylets", "gcs")
    print(
        "\nEach RPC alone, sequential (blocking ray.get): latency median (p90) ms; CPU ms per call"
    )
    print(f"  {'':46} {'latency':>15} {'CPU':>6} " + " ".join(f"{s:>7}" for s in short))
    for name, cost in costs.items():
        values = cost["latency"]
        p90 = sorted(values)[int(0.9 * len(values))]
        by_kind = cost["cpu"]
        total = sum(by_kind.values())
        cpu_cells = (
            f"{total * 1e3:6.2f} " + " ".join(f"{by_kind.get(k, 0) * 1e3:7.2f}" for k in kinds)
            if by_kind
            else ""
        )
        print(f"  {name:46} {median_ms(values):6.2f} ({p90 * 1e3:6.2f}) {cpu_cells}")


@ray.remote
class Relay:
    """A node-side actor taking one driver call per task: it takes a free (worker,
    allocation) pair, awaits the worker's call and puts the pair back. The shape of an
    ``agent.run`` design (acquire, call, release on the node), without the pool's calls."""

    def __init__(self) -> None:
        self._free: asyncio.Queue[tuple[Any, GPUAllocation]] = asyncio.Queue()

    async def use(self, pairs: list[tuple[Any, GPUAllocation]]) -> None:
        self._free = asyncio.Queue()
        for pair in pairs:
            self._free.put_nowait(pair)

    async def run(self, fn: Any, item: object) -> Any:
        worker, allocation = await self._free.get()
        try:
            return await worker_call(worker, fn, item, allocation)
        finally:
            self._free.put_nowait((worker, allocation))


def hold_all(cluster: RayCluster) -> dict[str, list[tuple[GPUAllocation, Any]]]:
    """Every GPU of every node, acquired straight from the agents: (allocation, worker)."""
    held: dict[str, list[tuple[GPUAllocation, Any]]] = {}
    for node, agent in cluster._agents.items():
        refs = [agent.acquire.remote(Resources(1), None) for _ in range(GPUS_PER_NODE)]
        held[node] = [(granted, worker) for granted, worker, _ in ray.get(refs)]
    return held


def release_all(cluster: RayCluster, held: dict[str, list[tuple[GPUAllocation, Any]]]) -> None:
    ray.get(
        [
            cluster._agents[node].release.remote(granted.id, True)
            for node, pairs in held.items()
            for granted, _ in pairs
        ]
    )


async def candidates(cluster: RayCluster, wide: ParallelRunner, n: int, rounds: int = 3) -> None:
    """Per-task wall and CPU of task paths with fewer RPCs, built from the real agents'
    workers (no product change), interleaved with plain Ray and gpupool as it is.

    The 1-RPC paths hold all 8 GPUs (from the agents) while they run, as leases a
    driver would keep; they are given back before gpupool's own path runs.
    """
    node_ids = list(cluster._agents)
    relays = [
        Relay.options(
            num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)
        ).remote()
        for node in node_ids
    ]
    leases: list[tuple[GPUAllocation, Any]] = []

    async def plain() -> None:
        plain_round(reused_trivial, list(range(n)), in_flight=True)

    async def as_is() -> None:
        await gpupool_round(wide, trivial, list(range(n)))

    async def leased_sync() -> None:
        ray.get(
            [worker_call(leases[i % GPUS][1], trivial, i, leases[i % GPUS][0]) for i in range(n)]
        )

    async def leased_async() -> None:
        async def loop(granted: GPUAllocation, worker: Any) -> None:
            for i in range(n // GPUS):
                await resolved(worker_call(worker, trivial, i, granted))

        async with anyio.create_task_group() as group:
            for granted, worker in leases:
                group.start_soon(loop, granted, worker)

    async def relayed() -> None:
        async def loop(relay: Any) -> None:
            for i in range(n // GPUS):
                await resolved(relay.run.remote(trivial, i))

        async with anyio.create_task_group() as group:
            for k in range(GPUS):
                group.start_soon(loop, relays[k % len(relays)])

    unleased: dict[str, Callable[[], Awaitable[None]]] = {
        "plain Ray max_calls=0, ray.get(list of N refs)": plain,
        "gpupool as it is: runner.map, 3 driver RPCs per task": as_is,
    }
    leased: dict[str, Callable[[], Awaitable[None]]] = {
        "1 RPC per task, sync: worker.call on 8 held leases, ray.get(list)": leased_sync,
        "1 RPC per task, anyio: 8 loops awaiting worker.call (resolved)": leased_async,
        "1 driver RPC + 1 on the node per task: relay.run (agent.run shape)": relayed,
    }
    walls: dict[str, list[float]] = defaultdict(list)
    by_kind: dict[str, list[dict[str, float]]] = defaultdict(list)

    async def measure(name: str, path: Callable[[], Awaitable[None]]) -> None:
        gc.collect()
        with CpuMeter() as meter:
            start = time.perf_counter()
            await path()
            walls[name].append(time.perf_counter() - start)
        by_kind[name].append(meter.by_kind)

    try:
        for _ in range(rounds):
            for name, path in unleased.items():
                await measure(name, path)
            held = hold_all(cluster)
            try:
                leases[:] = [pair for pairs in held.values() for pair in pairs]
                ray.get(
                    [
                        relay.use.remote([(w, g) for g, w in held[node]])
                        for relay, node in zip(relays, node_ids, strict=True)
                    ]
                )
                for name, path in leased.items():
                    await measure(name, path)
            finally:
                release_all(cluster, held)
    finally:
        for relay in relays:
            ray.kill(relay)
    paths = {**unleased, **leased}
    base = median_ms(walls["plain Ray max_calls=0, ray.get(list of N refs)"]) / n
    print(f"\nTask paths, {n:,} trivial tasks, {GPUS} in flight, median of {rounds} interleaved "
          "rounds: ms per task (x plain Ray); CPU ms per task, all processes (driver)")  # fmt: skip
    for name in paths:
        wall = median_ms(walls[name]) / n
        cpu, kinds = cpu_per_task(by_kind[name], n)
        print(f"  {name:68} {wall:6.2f} ({wall / base:4.2f}x)  CPU {cpu * 1e3:5.2f} "
              f"(driver {kinds.get('driver', 0) * 1e3:.2f})")  # fmt: skip


async def profile_phase(n: int, out: Path) -> None:
    """Where a gpupool task's time goes (asyncio): see the module docstring."""
    async with (
        RayCluster(provider=fake_gpus) as cluster,
        ParallelRunner(cluster, max_parallel=GPUS) as wide,
    ):
        await gpupool_round(wide, trivial, list(range(8 * GPUS)))
        plain_round(reused_trivial, list(range(8 * GPUS)), in_flight=True)

        # Each RPC of a task alone, one at a time, with a blocking ray.get (no event loop
        # in the way), against a plain Ray task and a no-op call on the same agent.
        node, agent = next(iter(cluster._agents.items()))
        report_rpcs(rpc_costs(agent, node, max(100, n // 5)))
        await candidates(cluster, wide, n)

        # The driver's awaits inside a real 8-wide map.
        spent: dict[str, float] = defaultdict(float)

        def wrap(name: str) -> None:
            original = getattr(cluster, name)

            async def measured(*args: Any, **kwargs: Any) -> Any:
                start = time.perf_counter()
                try:
                    return await original(*args, **kwargs)
                finally:
                    spent[name] += time.perf_counter() - start

            setattr(cluster, name, measured)

        for name in ("acquire", "call", "release"):
            wrap(name)
        with CpuMeter() as meter_a:
            wall = await gpupool_round(wide, trivial, list(range(n)))
        with CpuMeter() as meter_b:
            plain = plain_round(reused_trivial, list(range(n)), in_flight=True)
        print(f"\nA {GPUS}-wide map of {n:,} trivial tasks: {wall / n * 1e3:.3f} ms per task "
              f"(plain Ray, same tasks in flight: {plain / n * 1e3:.3f} ms). The driver's awaits, "
              "per task, and how many tasks were in each on average (time in it / wall):")  # fmt: skip
        for name, seconds in spent.items():
            print(f"  RayCluster.{name:10} {seconds / n * 1e3:7.3f} ms per task, "
                  f"{seconds / wall:5.2f} tasks in it")  # fmt: skip
        print("\nCPU per task (ms), every process of the run, by kind:")
        for kind_ in sorted(set(meter_a.by_kind) | set(meter_b.by_kind)):
            print(f"  {kind_:44} gpupool {meter_a.by_kind.get(kind_, 0) / n * 1e3:7.3f}   "
                  f"plain Ray {meter_b.by_kind.get(kind_, 0) / n * 1e3:7.3f}")  # fmt: skip
        print(f"  {'total':44} gpupool {meter_a.total / n * 1e3:7.3f}   "
              f"plain Ray {meter_b.total / n * 1e3:7.3f}")  # fmt: skip

        # cProfile of the driver's main thread (wall time) during the same map.
        profiler = cProfile.Profile()
        profiler.enable()
        await gpupool_round(wide, trivial, list(range(n)))
        profiler.disable()
    path = out / "bench_ray-driver.prof"
    profiler.dump_stats(path)
    print(f"\ncProfile of the driver during a {GPUS}-wide map of {n:,}; saved in {path}")
    stats = pstats.Stats(str(path))
    stats.strip_dirs()
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(30)


async def placement_phase(rounds: int) -> None:
    """Figure 2's rounds with every placement decision of the driver logged: which node
    each request went to, and what the driver knew (its own requests waiting there, the
    waiters and free GPUs the node last reported). Wraps the module's ``choose_node``
    (the benchmark's process only)."""
    import gpupool.integrations.ray.cluster as cluster_module
    from gpupool.integrations.ray.placement import free_for

    original = cluster_module.choose_node
    log: list[dict[str, Any]] = []

    def logged(request: Resources, nodes: Any, waiting: Any) -> str:
        seen = {
            node[:6]: (waiting.get(node, 0), stats.waiters, free_for(request, stats))
            for node, stats in sorted(nodes.items())
        }
        chosen = original(request, nodes, waiting)
        log.append({"t": time.perf_counter(), "node": chosen[:6], "seen": seen})
        return chosen

    cluster_module.choose_node = logged  # type: ignore[assignment]
    try:
        async with (
            RayCluster(provider=fake_gpus) as cluster,
            ParallelRunner(cluster, max_parallel=GPUS) as wide,
        ):
            await gpupool_round(wide, trivial, list(range(8 * GPUS)))
            for k in range(rounds):
                log.clear()
                spans: list[Span] = []
                start = time.perf_counter()
                wall = await gpupool_round(wide, sleeps, [SLEEP] * SLEEP_TASKS, values=spans)
                shape = layout(spans)
                print(f"\nround {k}: {wall:.3f} s; {_layout_text(shape)}")
                print("  t (ms)  -> node   what the driver saw, per node: "
                      "(own requests waiting, waiters reported, free GPUs reported)")  # fmt: skip
                for entry in log:
                    seen = "  ".join(f"{n}:{v}" for n, v in entry["seen"].items())
                    print(f"  {(entry['t'] - start) * 1e3:7.1f} -> {entry['node']}   {seen}")
    finally:
        cluster_module.choose_node = original


def profile(what: str, quick: bool) -> None:
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    own = OwnProcesses()
    cluster, _ = start_cluster()
    try:
        own.note()
        if what == "placement":
            anyio.run(placement_phase, 3 if quick else 8, backend="asyncio")
        else:
            anyio.run(profile_phase, 300 if quick else 2_000, out, backend="asyncio")
    finally:
        own.note()
        stop_cluster(cluster)
        left = reap(own.pids)
    print(f"processes left after the shutdown: {len(left)} {left}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--backend", choices=["asyncio", "trio", "both"], default="both")
    parser.add_argument(
        "--json",
        type=Path,
        help="write the figures here (default: benchmarks/results/bench_ray.json)",
    )
    parser.add_argument(
        "--profile",
        choices=["tasks", "placement"],
        help="tasks: time each RPC of a task alone, task paths with fewer RPCs, the driver's "
        "awaits, the CPU per process kind and a cProfile of the driver; placement: figure 2's "
        "rounds with every node choice logged (asyncio; then stop)",
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _on_sigterm)
    if args.profile:
        profile(args.profile, args.quick)
        return
    started = time.perf_counter()
    before = load()
    result = run(args)
    after = load()
    meta = (
        f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {platform.machine()} "
        f"({os.cpu_count()} CPUs), {platform.python_implementation()} "
        f"{platform.python_version()}, Ray {ray.__version__}, anyio {version('anyio')}, "
        f"trio {version('trio')}, {'quick sizes' if args.quick else 'full sizes'}, "
        f"{time.perf_counter() - started:.0f} s; load average before {before}, after {after}."
    )
    path = args.json or ROOT / "benchmarks" / "results" / "bench_ray.json"
    publish(meta, result, table(result["rows"], measured="gpupool"), path)


if __name__ == "__main__":
    main()
