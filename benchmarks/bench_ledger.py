"""The machine-wide ledger (issue 12): its cost, its hand-over latency and its idle CPU.

Run from the repository root::

    python benchmarks/bench_ledger.py              # both backends, the issue's sizes (~1.5 min)
    python benchmarks/bench_ledger.py --quick      # smaller, for a smoke run
    python benchmarks/bench_ledger.py --profile pairs   # cProfile of the uncontended pair only
    python benchmarks/bench_ledger.py --profile load    # ... of the 8 load processes, summed
    python benchmarks/bench_ledger.py --profile pingpong  # ... of the 2 ping-pong processes
    python benchmarks/bench_ledger.py --profile parts   # the parts of one transaction, timed

Every figure stands beside a baseline measured in the same run, on the same
backend, because these machines are shared and noisy:

1. **Uncontended pair**: ``acquire`` + ``release`` of one of 4 fake GPUs in
   one process, with ``ledger=DIR`` against the same pool with
   ``ledger=None``: the median over interleaved rounds (each round one run of
   each, from a collected heap). Target: at most 300 us per pair with the
   ledger. An info row repeats it with 7 other (idle) processes joined to the
   ledger, since every submit checks that the other members are alive.
2. **Hand-over**, 2 processes ping-ponging 1 GPU: each holds it for
   ``HOLD`` (5 ms), releases it and asks again at once, so the other process
   has been waiting for about ``HOLD`` when the release happens (a pair where
   it had not is left out, and counted). Latency = the waiter's
   ``time.monotonic()`` when its ``acquire`` returns minus the releaser's
   just before it called ``release`` (``CLOCK_MONOTONIC`` is one clock for
   every process on Linux), matched by GPU and order. Baseline: two anyio
   processes ping-ponging a datagram over AF_UNIX sockets with the same
   pause, timed the same way (send to wake-up): the floor of any
   cross-process wake-up through an event loop. Targets: median 5 ms, p99
   50 ms.
3. **Load**: 8 processes x 500 cycles on 4 GPUs (acquire, one checkpoint,
   release), started together at a shared start time: grants per second
   machine-wide (grants over
   the span from the first ``acquire`` call to the last ``release``; target
   at least 1,000/s), the hand-over latency under that load (consecutive
   holders of a GPU in two processes, where the second had called
   ``acquire`` before the first released), and double-bookings found by an
   interval oracle (each holder records [granted, released] per GPU; two
   intervals on one GPU that overlap are a double booking; target 0).
   Baseline and control: the same 8 processes with ``ledger=None``, which
   do not coordinate at all (each sees 4 free GPUs): their grant rate bounds
   the ledger's from above, and their double-bookings show that the oracle
   does find them. An info row gives the CPU per grant, all processes summed.
4. **Idle CPU**: 1 GPU held by one process for ``N`` seconds (10, quick: 2)
   while 3 other processes wait for it; each measures its own CPU time
   (``resource.getrusage``, all threads) over the same window, as % of one
   core. Baseline: a process with an open pool and no ledger, idle in the
   same window. Target: under 1 % per waiter.

Real processes throughout: the workers are this script run by
``sys.executable`` in ``--worker`` mode, on fake GPUs (``FakeGPUProvider``,
whose UUIDs are the same in every process) and a ledger in a fresh
directory under ``/dev/shm`` (where the default ledger lives).

Prints a markdown table and writes JSON to ``benchmarks/results/bench_ledger.json``
(or ``--json FILE``).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import itertools
import json
import os
import platform
import pstats
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

import anyio
import attrs
from anyio.lowlevel import checkpoint

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.report import Row, publish, table  # noqa: E402
from gpupool import FakeGPUProvider, GPUResourcePool  # noqa: E402

#: (GPU uuid, acquire called, acquire returned, release about to be called), monotonic s.
Record = tuple[str, float, float, float]

BACKENDS = ("asyncio", "trio")
#: How long each process holds the GPU in the ping-pong phase.
HOLD = 0.005
PHASES = ("pairs", "pingpong", "load", "idle")
#: Fake GPUs in the uncontended and load phases.
GPUS = 4


# ==================================================================== the workers


def _pool(spec: dict[str, Any], gpus: int) -> GPUResourcePool:
    return GPUResourcePool(
        FakeGPUProvider(count=gpus),
        ledger=spec["ledger"],
        refresh_interval=spec.get("refresh_interval", 1.0),
    )


def _say(*words: object) -> None:
    print(*words, flush=True)


async def _line() -> str:
    """The coordinator's next command (a thread blocked in read(): no CPU)."""
    line: str = await anyio.to_thread.run_sync(sys.stdin.readline)
    return line.strip()


async def _start_at(command: str) -> None:
    """Sleep until the start time in "go T" (monotonic): every worker starts together."""
    await anyio.sleep(max(0.0, float(command.split()[1]) - time.monotonic()))


def _write_json(path: str, value: object) -> None:
    """The worker's results, for the coordinator (written once the timing is over)."""
    Path(path).write_text(json.dumps(value))


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of the process
    return usage.ru_utime + usage.ru_stime


async def _measure_idle(seconds: float) -> dict[str, float]:
    cpu, start = _cpu_seconds(), time.monotonic()
    await anyio.sleep(seconds)
    cpu, elapsed = _cpu_seconds() - cpu, time.monotonic() - start
    return {"cpu_s": cpu, "window_s": elapsed, "core_pct": 100 * cpu / elapsed}


async def worker_load(spec: dict[str, Any]) -> None:
    """``cycles`` acquire/hold/release of one GPU each, from the coordinator's "go"."""
    hold = spec["hold"]
    records: list[Record] = []
    async with _pool(spec, spec["gpus"]) as pool:
        _say("ready")
        await _start_at(await _line())
        cpu = _cpu_seconds()
        # CPU time, not wall: what each process spends, however long it waited for a core.
        profiler = cProfile.Profile(time.process_time) if spec.get("profile") else None
        if profiler is not None:
            profiler.enable()
        for _ in range(spec["cycles"]):
            called = time.monotonic()
            allocation = await pool.acquire(1)
            granted = time.monotonic()
            if hold:
                await anyio.sleep(hold)
            else:
                await checkpoint()
            released = time.monotonic()
            await pool.release(allocation)
            records.append((allocation.gpu_uuids[0], called, granted, released))
        cpu = _cpu_seconds() - cpu
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(spec["profile"])
    _write_json(spec["out"], {"pid": os.getpid(), "records": records, "cpu_s": cpu})
    _say("done")


async def worker_hold(spec: dict[str, Any]) -> None:
    """Hold every GPU; measure own CPU on "measure"; release on "release"."""
    async with _pool(spec, spec["gpus"]) as pool:
        allocation = await pool.acquire(spec["gpus"])
        _say("ready")
        await _line()
        _say("result", json.dumps(await _measure_idle(spec["seconds"])))
        await _line()
        await pool.release(allocation)


async def worker_wait(spec: dict[str, Any]) -> None:
    """Wait for a GPU someone else holds; measure own CPU while waiting."""
    async with _pool(spec, spec["gpus"]) as pool, anyio.create_task_group() as tg:
        granted = anyio.Event()

        async def take() -> None:
            allocation = await pool.acquire(1)
            granted.set()
            await pool.release(allocation)

        tg.start_soon(take)
        while pool.statistics().waiters < 1:  # noqa: ASYNC110 (no hook to wait on)
            await anyio.sleep(0.01)
        _say("ready")
        await _line()
        result = await _measure_idle(spec["seconds"])
        result["still_waiting"] = not granted.is_set()
        _say("result", json.dumps(result))


async def worker_idle(spec: dict[str, Any]) -> None:
    """An open pool doing nothing: a baseline ("measure") or an idle ledger member ("quit")."""
    async with _pool(spec, spec["gpus"]):
        _say("ready")
        while await _line() not in ("quit", ""):
            _say("result", json.dumps(await _measure_idle(spec["seconds"])))


async def worker_dgram(spec: dict[str, Any]) -> None:
    """Ping-pong a datagram with a peer: the floor of a cross-process wake-up."""
    total, hold = spec["messages"], spec["hold"]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.bind(spec["own"])
    sent: list[tuple[int, float]] = []
    received: list[tuple[int, float]] = []
    _say("ready")
    await _start_at(await _line())
    if spec["first"]:
        sent.append((0, time.monotonic()))
        sock.sendto(b"0", spec["peer"])
    if not (spec["first"] and total == 1):
        while True:
            await anyio.wait_readable(sock)
            k = int(sock.recv(64))
            received.append((k, time.monotonic()))
            if k + 1 >= total:
                break
            await anyio.sleep(hold)
            sent.append((k + 1, time.monotonic()))
            sock.sendto(str(k + 1).encode(), spec["peer"])
            if k + 2 >= total:
                break
    sock.close()
    _write_json(spec["out"], {"sent": sent, "received": received})
    _say("done")


WORKERS = {
    "load": worker_load,
    "hold": worker_hold,
    "wait": worker_wait,
    "idle": worker_idle,
    "dgram": worker_dgram,
}


# ==================================================================== the coordinator's side


class Worker:
    """One worker process, driven line by line over its stdin and stdout."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            cwd=ROOT,
        )

    def expect(self, word: str) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith(word):
            self.proc.kill()
            raise RuntimeError(
                f"worker {self.spec['mode']} (pid {self.proc.pid}) said {line!r}, expected {word!r}"
            )
        return line[len(word) :].strip()

    def tell(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def finish(self, timeout: float = 60) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        if self.proc.wait(timeout) != 0:
            raise RuntimeError(f"worker {self.spec['mode']} exited with {self.proc.returncode}")


def start_all(specs: Sequence[dict[str, Any]]) -> list[Worker]:
    workers = [Worker(spec) for spec in specs]
    for worker in workers:
        worker.expect("ready")
    return workers


def go(workers: Sequence[Worker], delay: float = 0.3) -> None:
    """Tell ``workers`` to start together, ``delay`` seconds from now."""
    at = time.monotonic() + delay
    for worker in workers:
        worker.tell(f"go {at!r}")


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil without floats drifting
    return ordered[int(rank) - 1]


def double_bookings(records_by_process: Sequence[Sequence[Record]]) -> int:
    """The interval oracle: holds of one GPU that overlap an earlier one, by any process.

    A record's interval [acquire returned, release called] lies inside the real
    hold, so two that overlap are a real double booking, never an artefact.
    """
    by_gpu: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for records in records_by_process:
        for uuid, _, granted, released in records:
            by_gpu[uuid].append((granted, released))
    found = 0
    for intervals in by_gpu.values():
        intervals.sort()
        reach = -1.0
        for start, end in intervals:
            if start < reach:
                found += 1
            reach = max(reach, end)
    return found


def hand_overs(
    records_by_process: Sequence[Sequence[Record]], *, waited_at_least: float = 0.0
) -> tuple[list[float], int, int]:
    """Latencies of the cross-process hand-overs, matched by GPU and order.

    For consecutive holders of one GPU in two processes, where the second
    called ``acquire`` at least ``waited_at_least`` before the first called
    ``release`` (so it was queued when the release happened): its acquire's
    return minus the release call. Also returns how many cross-process pairs
    were left out for not waiting long enough, and how many pairs were in one
    process (no hand-over between processes).
    """
    by_gpu: dict[str, list[tuple[float, float, float, int]]] = defaultdict(list)
    for process, records in enumerate(records_by_process):
        for uuid, called, granted, released in records:
            by_gpu[uuid].append((granted, called, released, process))
    latencies: list[float] = []
    not_waiting = same_process = 0
    for holds in by_gpu.values():
        holds.sort()
        for before, after in itertools.pairwise(holds):
            if before[3] == after[3]:
                same_process += 1
            elif after[1] <= before[2] - waited_at_least:
                latencies.append(after[0] - before[2])
            else:
                not_waiting += 1
    return latencies, not_waiting, same_process


def run_load(
    backend: str, ledger: str | None, processes: int, cycles: int, gpus: int, hold: float, tmp: Path
) -> tuple[list[list[Record]], float]:
    """``processes`` load workers started together: their records, and the CPU seconds
    they used between the start and their last release, all processes together."""
    specs = [
        {
            "mode": "load", "backend": backend, "ledger": ledger, "gpus": gpus,
            "cycles": cycles, "hold": hold, "out": str(tmp / f"load-{backend}-{i}.json"),
        }
        for i in range(processes)
    ]  # fmt: skip
    workers = start_all(specs)
    go(workers)
    for worker in workers:
        worker.expect("done")
        worker.finish()
    results = [json.loads(Path(str(s["out"])).read_text()) for s in specs]
    return [r["records"] for r in results], sum(r["cpu_s"] for r in results)


def grants_per_second(records_by_process: Sequence[Sequence[Record]]) -> tuple[float, float]:
    flat = [r for records in records_by_process for r in records]
    span = max(r[3] for r in flat) - min(r[1] for r in flat)
    return len(flat) / span, span


# -- 1. uncontended pairs ------------------------------------------------------------


async def _pairs(ledger: str | None, pairs: int) -> float:
    """Seconds per acquire + release pair on a pool of 4 fake GPUs (opening not timed)."""
    async with GPUResourcePool(
        FakeGPUProvider(count=GPUS), ledger=ledger, refresh_interval=3600
    ) as pool:
        for _ in range(20):  # warm-up: the first transactions open the database
            await pool.release(await pool.acquire(1))
        start = time.perf_counter()
        for _ in range(pairs):
            await pool.release(await pool.acquire(1))
        return (time.perf_counter() - start) / pairs


async def uncontended(ledger: str, crowded: str, pairs: int, rounds: int) -> dict[str, list[float]]:
    """Interleaved rounds of: no ledger, ledger, ledger with 7 idle members."""
    runs: dict[str, list[float]] = {"none": [], "ledger": [], "crowded": []}
    for _ in range(rounds):
        for name, where in (("none", None), ("ledger", ledger), ("crowded", crowded)):
            gc.collect()
            runs[name].append(await _pairs(where, pairs))
    return runs


def uncontended_rows(backend: str, runs: dict[str, list[float]]) -> list[Row]:
    base = statistics.median(runs["none"])
    rows = []
    for name, what, target in (
        ("ledger", f"uncontended acquire+release, {GPUS} GPUs", 300.0),
        ("crowded", "... with 7 idle processes joined to the ledger", None),
    ):
        measured = statistics.median(runs[name])
        rows.append(
            {
                "backend": backend,
                "what": what,
                "baseline": f"ledger=None: {base * 1e6:.1f} us/pair",
                "measured": f"{measured * 1e6:.1f} us/pair",
                "ratio": round(measured / base, 2),
                "target": "(info)" if target is None else f"<= {target:g} us/pair",
                "ok": None if target is None else measured * 1e6 <= target,
                "value": measured * 1e6,
                "runs_us": [round(r * 1e6, 1) for r in runs[name]],
                "baseline_runs_us": [round(r * 1e6, 1) for r in runs["none"]],
            }
        )
    return rows


# -- 2. hand-over ping-pong ----------------------------------------------------------


def pingpong(backend: str, ledger: str, cycles: int, tmp: Path) -> dict[str, Any]:
    records, _ = run_load(backend, ledger, 2, cycles, 1, HOLD, tmp)
    latencies, not_waiting, same = hand_overs(records, waited_at_least=HOLD / 2)
    return {
        "latencies": latencies,
        "not_waiting": not_waiting,
        "same_process": same,
        "double_bookings": double_bookings(records),
    }


def dgram_pingpong(backend: str, messages: int, tmp: Path) -> list[float]:
    a, b = str(tmp / f"{backend}-a.sock"), str(tmp / f"{backend}-b.sock")
    specs = [
        {"mode": "dgram", "backend": backend, "own": own, "peer": peer, "first": first,
         "messages": messages, "hold": HOLD, "out": str(tmp / f"dgram-{backend}-{i}.json")}
        for i, (own, peer, first) in enumerate(((a, b, True), (b, a, False)))
    ]  # fmt: skip
    workers = start_all(specs)
    go(workers)
    for worker in workers:
        worker.expect("done")
        worker.finish()
    results = [json.loads(Path(str(s["out"])).read_text()) for s in specs]
    sent = {k: t for r in results for k, t in r["sent"]}
    received = {k: t for r in results for k, t in r["received"]}
    return [received[k] - sent[k] for k in sorted(received)]


def latency_rows(backend: str, base: list[float], ours: dict[str, Any], count: str) -> list[Row]:
    rows = []
    lat = ours["latencies"]
    for label, q, target in (("median", 50, 5.0), ("p99", 99, 50.0)):
        b, m = percentile(base, q) * 1e3, percentile(lat, q) * 1e3
        rows.append(
            {
                "backend": backend,
                "what": f"hand-over A -> B, 2 processes ping-pong 1 GPU ({count}): {label}",
                "baseline": f"datagram ping-pong: {b:.3f} ms",
                "measured": f"{m:.3f} ms",
                "ratio": round(m / b, 1),
                "target": f"<= {target:g} ms",
                "ok": m <= target,
                "value": m,
            }
        )
    return rows


# -- 3. load ---------------------------------------------------------------------------


def load_rows(
    backend: str, ledger: str, processes: int, cycles: int, tmp: Path
) -> tuple[list[Row], dict[str, Any]]:
    control, control_cpu = run_load(backend, None, processes, cycles, GPUS, 0.0, tmp)
    ours, cpu = run_load(backend, ledger, processes, cycles, GPUS, 0.0, tmp)
    base_rate, base_span = grants_per_second(control)
    rate, span = grants_per_second(ours)
    latencies, not_waiting, same = hand_overs(ours)
    booked, control_booked = double_bookings(ours), double_bookings(control)
    shape = f"{processes} processes x {cycles} cycles, {GPUS} GPUs"
    rows: list[Row] = [
        {
            "backend": backend,
            "what": f"{shape}: grants/s machine-wide",
            "baseline": f"ledger=None (uncoordinated): {base_rate:,.0f}/s",
            "measured": f"{rate:,.0f}/s ({span:.2f} s)",
            "ratio": round(rate / base_rate, 3),
            "target": ">= 1,000/s",
            "ok": rate >= 1000,
            "value": rate,
        }
    ]
    grants, control_grants = sum(len(r) for r in ours), sum(len(r) for r in control)
    rows.append(
        {
            "backend": backend,
            "what": f"{shape}: CPU per grant, all processes",
            "baseline": f"ledger=None: {1e6 * control_cpu / control_grants:,.0f} us",
            "measured": f"{1e6 * cpu / grants:,.0f} us",
            "ratio": round((cpu / grants) / (control_cpu / control_grants), 1),
            "target": "(info)",
            "ok": None,
            "value": 1e6 * cpu / grants,
        }
    )
    for label, q, target in (("median", 50, 5.0), ("p99", 99, 50.0)):
        m = percentile(latencies, q) * 1e3
        rows.append(
            {
                "backend": backend,
                "what": f"{shape}: hand-over A -> B under load ({len(latencies):,}): {label}",
                "baseline": "",
                "measured": f"{m:.3f} ms",
                "ratio": None,
                "target": f"(info; alone: <= {target:g} ms)",
                "ok": None,
                "value": m,
            }
        )
    rows.append(
        {
            "backend": backend,
            "what": f"{shape}: double-bookings (interval oracle)",
            "baseline": f"ledger=None: {control_booked:,} (the oracle finds them)",
            "measured": f"{booked}",
            "ratio": None,
            "target": "0",
            # The control's count is no target: it only shows that the oracle can fail.
            "ok": booked == 0,
            "value": booked,
        }
    )
    raw = {
        "grants": sum(len(r) for r in ours),
        "span_s": span,
        "cpu_s": cpu,
        "cpu_us_per_grant": 1e6 * cpu / sum(len(r) for r in ours),
        "control_cpu_us_per_grant": 1e6 * control_cpu / sum(len(r) for r in control),
        "control_span_s": base_span,
        "hand_overs": len(latencies),
        "hand_overs_not_waiting": not_waiting,
        "same_process_successions": same,
        "control_double_bookings": control_booked,
    }
    return rows, raw


# -- 4. idle CPU -----------------------------------------------------------------------


def idle_cpu(backend: str, ledger: str, seconds: float, waiters: int) -> tuple[list[Row], Any]:
    common = {"backend": backend, "gpus": 1, "seconds": seconds}
    holder = start_all([{"mode": "hold", "ledger": ledger, **common}])[0]
    others = start_all(
        [{"mode": "wait", "ledger": ledger, **common} for _ in range(waiters)]
        + [{"mode": "idle", "ledger": None, **common}]
    )
    everyone = [holder, *others]
    for worker in everyone:
        worker.tell("go")
    results = [json.loads(worker.expect("result")) for worker in everyone]
    holder.tell("release")
    others[-1].tell("quit")
    for worker in everyone:
        worker.finish()
    held, waiting, base = results[0], results[1:-1], results[-1]
    pcts = [r["core_pct"] for r in waiting]
    rows: list[Row] = [
        {
            "backend": backend,
            "what": f"CPU of a waiting process, {waiters} waiting {seconds:g} s for 1 held GPU: mean (max)",
            "baseline": f"idle pool, no ledger: {base['core_pct']:.3f} %",
            "measured": f"{statistics.mean(pcts):.3f} % ({max(pcts):.3f} %) of a core",
            "ratio": None,
            "target": "< 1 %",
            "ok": max(pcts) < 1 and all(r["still_waiting"] for r in waiting),
            "value": max(pcts),
        },
        {
            "backend": backend,
            "what": f"CPU of the process holding it, same {seconds:g} s",
            "baseline": f"idle pool, no ledger: {base['core_pct']:.3f} %",
            "measured": f"{held['core_pct']:.3f} % of a core",
            "ratio": None,
            "target": "(info)",
            "ok": None,
            "value": held["core_pct"],
        },
    ]
    return rows, {"holder": held, "waiters": waiting, "baseline": base}


# ==================================================================== the run


def fresh_ledger(tmp: Path, name: str) -> str:
    """A ledger directory not made yet (the pool creates it, as it would the default)."""
    return str(tmp / name)


def run(args: argparse.Namespace) -> dict[str, Any]:
    quick = args.quick
    pairs, rounds = (300, 3) if quick else (2_000, 7)
    pong_cycles = 60 if quick else 500
    processes, cycles = (8, 100) if quick else (8, 500)
    idle_seconds = 2.0 if quick else 10.0
    backends = BACKENDS if args.backend == "both" else (args.backend,)
    phases = set(args.phases.split(","))
    tmp = Path(
        tempfile.mkdtemp(prefix="gpb-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    )
    rows: list[Row] = []
    raw: dict[str, Any] = {}
    members: list[Worker] = []
    try:
        if "pairs" in phases:
            crowded = fresh_ledger(tmp, "crowded")
            members = start_all(
                [
                    {"mode": "idle", "backend": "asyncio", "ledger": crowded, "gpus": GPUS,
                     "seconds": 0}
                    for _ in range(7)
                ]
            )  # fmt: skip
            for backend in backends:
                runs = anyio.run(
                    uncontended, fresh_ledger(tmp, f"pairs-{backend}"), crowded, pairs, rounds,
                    backend=backend,
                )  # fmt: skip
                rows += uncontended_rows(backend, runs)
                raw[f"pairs-{backend}"] = runs
            for member in members:
                member.tell("quit")
                member.finish()
            members = []
        for backend in backends:
            if "pingpong" in phases:
                rows += pingpong_rows(backend, tmp, pong_cycles, raw)
            if "load" in phases:
                load, raw[f"load-{backend}"] = load_rows(
                    backend, fresh_ledger(tmp, f"load-{backend}"), processes, cycles, tmp
                )
                rows += load
            if "idle" in phases:
                idle, raw[f"idle-{backend}"] = idle_cpu(
                    backend, fresh_ledger(tmp, f"idle-{backend}"), idle_seconds, 3
                )
                rows += idle
    finally:
        for member in members:
            member.proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    return {"rows": rows, "raw": raw}


def pingpong_rows(backend: str, tmp: Path, cycles: int, raw: dict[str, Any]) -> list[Row]:
    """The hand-over rows: the datagram baseline, then the ledger, one after the other."""
    base = dgram_pingpong(backend, 2 * cycles, tmp)
    ours = pingpong(backend, fresh_ledger(tmp, f"pong-{backend}"), cycles, tmp)
    rows = latency_rows(backend, base, ours, f"{len(ours['latencies']):,} hand-overs")
    rows.append(
        {
            "backend": backend,
            "what": "ping-pong: double-bookings; pairs left out (waiter not queued yet); "
            "same process twice in a row",
            "baseline": "",
            "measured": f"{ours['double_bookings']}; {ours['not_waiting']}; {ours['same_process']}",
            "ratio": None,
            "target": "0; (info); (info)",
            "ok": ours["double_bookings"] == 0,
            "value": ours["double_bookings"],
        }
    )
    raw[f"pingpong-{backend}"] = {
        "datagram_ms": [round(x * 1e3, 4) for x in base],
        "ledger_ms": [round(x * 1e3, 4) for x in ours["latencies"]],
        "not_waiting": ours["not_waiting"],
        "same_process": ours["same_process"],
    }
    return rows


def parts(quick: bool) -> None:
    """What one ledger transaction is made of, each part timed alone (no profiler).

    Reaches into the pool's private objects (``pool._core``, the MachineCore, and
    its store): a tool for whoever optimizes the ledger, not an API.
    """
    from gpupool._ledger import rows
    from gpupool._ledger.machine import MachineCore
    from gpupool._ledger.replica import Replica
    from gpupool._ledger.store import _read_transaction

    n = 300 if quick else 3_000

    def timed(fn: Any) -> float:
        runs = []
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(n):
                fn()
            runs.append((time.perf_counter() - start) / n * 1e6)
        return statistics.median(runs)

    tmp = Path(tempfile.mkdtemp(prefix="gpb-", dir="/dev/shm"))

    async def main() -> None:
        async with GPUResourcePool(
            FakeGPUProvider(count=GPUS), ledger=str(tmp / "ledger"), refresh_interval=3600
        ) as pool:
            core = pool._core
            assert isinstance(core, MachineCore)
            store = core._store
            for _ in range(50):
                await pool.release(await pool.acquire(1))
            start = time.perf_counter()
            for _ in range(n):
                await pool.release(await pool.acquire(1))
            pair = (time.perf_counter() - start) / n * 1e6
            held = await pool.acquire(1)  # one hold in the state, as a release finds it
            conn = store._connection()
            state = store.read()
            now = time.monotonic()

            # The ledger as the load phase sees it: 8 members, every GPU held, 4 waiting.
            busy = rows.copy(state)
            me = next(iter(busy.members.values()))
            hold = next(iter(busy.holds.values()))
            for i, uuid in enumerate(sorted(busy.gpus)):
                member = f"{i:016x}"
                busy.members[member] = attrs.evolve(me, id=member)
                busy.holds[100 + i] = attrs.evolve(hold, id=100 + i, member=member, gpus=(uuid,))
            busy.holds.pop(hold.id)
            waiter = rows.WaiterRow(
                0, me.id, 1, 0, True, 0, tuple(sorted(busy.gpus)), None, None, now, time.time(),
                None, None, None, "waiting", None, None,
            )  # fmt: skip
            for i in range(4):
                member = f"{i + 4:016x}"
                busy.members[member] = attrs.evolve(me, id=member)
                busy.waiters[200 + i] = attrs.evolve(waiter, ticket=200 + i, member=member)

            def load_busy() -> None:
                conn.execute("BEGIN IMMEDIATE")
                rows.save(conn, busy)
                start = time.perf_counter()
                rows.load(conn)
                loaded.append(time.perf_counter() - start)
                conn.execute("ROLLBACK")

            loaded: list[float] = []

            def lock() -> None:
                store._lock.acquire()
                store._lock.release()

            def empty() -> None:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("COMMIT")

            def load() -> None:
                with _read_transaction(conn):
                    rows.load(conn)

            def save_holds() -> None:
                before = rows.copy(state)
                before.holds = {}
                conn.execute("BEGIN IMMEDIATE")
                rows.save(conn, state, before)
                conn.execute("ROLLBACK")

            def noop_write() -> None:
                store.write(lambda state: None)

            print(f"{'acquire + release pair (2 transactions)':46} {pair:8.1f} us")
            for label, fn in (
                ("store.write(no-op): lock, BEGIN, load, COMMIT", noop_write),
                ("  flock: flock, fstat, stat, unlock", lock),
                ("  BEGIN IMMEDIATE + COMMIT", empty),
                ("  rows.load (the whole ledger into rows)", load),
                ("  rows.copy (the before-image)", lambda: rows.copy(state)),
                (
                    "Replica(state): the core rebuilt over it",
                    lambda: Replica(state, now, settle_timeout=30.0),
                ),
                ("rows.save, holds rewritten (+ BEGIN, ROLLBACK)", save_holds),
                ("MachineCore._reap (nobody dead)", lambda: core._reap(rows.copy(state))),
                ("store.read() (as collect does first)", store.read),
                (
                    "Replica(busy): 8 members, 4 holds, 4 waiting",
                    lambda: Replica(busy, now, settle_timeout=30.0),
                ),
            ):
                print(f"{label:46} {timed(fn):8.1f} us")
            timed(load_busy)
            print(f"{'rows.load(busy)':46} {statistics.median(loaded) * 1e6:8.1f} us")
            await pool.release(held)

    try:
        anyio.run(main)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def profile(what: str, quick: bool) -> None:
    """cProfile (wall time) of the uncontended pairs with the ledger, or of the 8 load
    processes summed; asyncio; printed by own time and by total time."""
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="gpb-", dir="/dev/shm"))
    try:
        if what == "pairs":
            pairs = 1_000 if quick else 5_000
            profiler = cProfile.Profile()

            async def main() -> None:
                async with GPUResourcePool(
                    FakeGPUProvider(count=GPUS), ledger=str(tmp / "ledger"), refresh_interval=3600
                ) as pool:
                    for _ in range(20):
                        await pool.release(await pool.acquire(1))
                    profiler.enable()
                    for _ in range(pairs):
                        await pool.release(await pool.acquire(1))
                    profiler.disable()

            anyio.run(main)
            path = out / "bench_ledger-pairs.prof"
            profiler.dump_stats(path)
            stats = pstats.Stats(str(path))
            title = f"{pairs} uncontended pairs with the ledger"
        else:
            # The load, or the ping-pong: the same workers, profiled each on its own.
            count, gpus, hold = (8, GPUS, 0.0) if what == "load" else (2, 1, HOLD)
            cycles = (100 if quick else 500) if what == "load" else (60 if quick else 500)
            specs = [
                {"mode": "load", "backend": "asyncio", "ledger": str(tmp / "ledger"),
                 "gpus": gpus, "cycles": cycles, "hold": hold, "out": str(tmp / f"load-{i}.json"),
                 "profile": str(out / f"bench_ledger-{what}-{i}.prof")}
                for i in range(count)
            ]  # fmt: skip
            workers = start_all(specs)
            go(workers)
            for worker in workers:
                worker.expect("done")
                worker.finish()
            stats = pstats.Stats(*[str(s["profile"]) for s in specs])
            path = out / f"bench_ledger-{what}-*.prof"
            title = (
                f"{count} processes x {cycles} cycles on {gpus} GPU(s), hold {hold * 1e3:g} ms, "
                f"the {count} profiles summed"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{title}; profile in {path}")
    stats.strip_dirs()
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(40)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--backend", choices=["asyncio", "trio", "both"], default="both")
    parser.add_argument(
        "--json",
        type=Path,
        help="write the figures here (default: benchmarks/results/bench_ledger.json)",
    )
    parser.add_argument(
        "--profile",
        choices=["pairs", "pingpong", "load", "parts"],
        help="profile the uncontended pair with the ledger, or the ping-pong or load "
        "processes (wall time, summed), or time the parts of one transaction; then stop",
    )
    parser.add_argument(
        "--phases",
        default=",".join(PHASES),
        help=f"comma-separated, of {','.join(PHASES)} (default: all)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        spec = json.loads(args.worker)
        anyio.run(WORKERS[spec["mode"]], spec, backend=spec["backend"])
        return
    if not set(args.phases.split(",")) <= set(PHASES):
        parser.error(f"--phases takes some of {','.join(PHASES)}, got {args.phases!r}")
    if args.profile:
        if args.profile == "parts":
            parts(args.quick)
        else:
            profile(args.profile, args.quick)
        return
    started = time.perf_counter()
    result = run(args)
    meta = (
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()} ({os.cpu_count()} CPUs), "
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"anyio {version('anyio')}, trio {version('trio')}, "
        f"{'quick sizes' if args.quick else 'full sizes'}, {time.perf_counter() - started:.0f} s."
    )
    path = args.json or ROOT / "benchmarks" / "results" / "bench_ledger.json"
    publish(meta, result, table(result["rows"], measured="with the ledger"), path)


if __name__ == "__main__":
    main()
