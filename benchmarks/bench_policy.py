"""Scheduling policies compared in the simulator: strict FIFO, greedy, gpupool's backfilling.

    python benchmarks/bench_policy.py                # print the tables, write JSON
    python benchmarks/bench_policy.py --write-docs   # also refresh docs/benchmarks.md

Every run drives the real scheduling core (``gpupool.sim``) in virtual time.
Three traces on 8 GPUs, each with seeds 0-4; job sizes 1/2/4/8 GPUs with
probabilities 0.5/0.25/0.15/0.10 and lognormal durations (median 60 s,
sigma 1) unless said otherwise:

* ``batch``: 1,000 jobs all queued at t=0 (a sweep submitted at once);
* ``poisson``: 1,000 jobs arriving as a Poisson process at 90% offered load;
* ``stream``: 2,000 jobs at 80% offered load, 1-GPU jobs with 2% 8-GPU jobs
  among them (those carry 14% of the work).

A fourth scenario, ``jobs file``, writes each seed's ``batch`` trace as the
jobs file of ``gpupool run`` (``[gpus=4 est=93.2s] sleep 93.2``, and the same
lines without ``est=``), reads it back with the real parser
(``gpupool._cli.jobs_file.parse_jobs``) and simulates the jobs it built: with
the estimates it must get the with-hints makespan, and the table prints its
makespan against the run without them.

A fifth, ``learned``, is the ``batch`` trace run by the real ``ParallelRunner``
on a real pool of 8 fake GPUs and a real journal, in virtual time (trio's
``MockClock``; each job sleeps its duration): a first sweep with no hints,
whose journal records every task's duration; then the same sweep again in a
new journal with ``history=`` the first one, so that each task asks with the
duration it took before as its ``estimated_duration``. Beside it, in the same
run: exact hints, the within-run estimates alone (no history: tasks learn
from finished tasks of their shape), and a second sweep whose jobs run
+-30% (lognormal, sigma 0.3) off what the history says, to show what wrong
estimates cost. Target: learned from history, makespan/LB <= 1.02 (median),
and no starvation (the 8-GPU jobs' longest wait at most that of the first
sweep, without hints).

Figures are ratios against baselines from the same run: makespan over the
lower bound ``max(sum(gpus * duration) / 8, longest job)``, waits against
strict FIFO's, and the policy's CPU cost per decision at (64 GPUs, 100,000
jobs queued at once) against (8 GPUs, 1,000 jobs).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gpupool._cli.jobs_file import JobSpec, parse_jobs  # noqa: E402
from gpupool.sim import (  # noqa: E402  (the checkout, not an installed copy)
    BackfillPolicy,
    FifoPolicy,
    GreedyPolicy,
    Job,
    SimResult,
    lower_bound,
    simulate,
)

GPUS = 8
SEEDS = range(5)
SIZES = (1, 2, 4, 8)
WEIGHTS = (0.5, 0.25, 0.15, 0.10)
MEDIAN_S = 60.0
SIGMA = 1.0
MEAN_S = MEDIAN_S * math.exp(SIGMA**2 / 2)
MARKERS = ("<!-- bench_policy:start -->", "<!-- bench_policy:end -->")


def _duration(rng: random.Random) -> float:
    return MEDIAN_S * rng.lognormvariate(0.0, SIGMA)


def _job(arrival: float, gpus: int, duration: float, hints: bool) -> Job:
    return Job(arrival=arrival, gpus=gpus, duration=duration, hint=duration if hints else None)


def batch_trace(seed: int, hints: bool, count: int = 1000) -> list[Job]:
    rng = random.Random(seed)
    return [_job(0.0, rng.choices(SIZES, WEIGHTS)[0], _duration(rng), hints) for _ in range(count)]


def poisson_trace(seed: int, hints: bool, load: float = 0.9, count: int = 1000) -> list[Job]:
    rng = random.Random(seed)
    mean_gpus = sum(s * w for s, w in zip(SIZES, WEIGHTS, strict=True))
    rate = load * GPUS / (mean_gpus * MEAN_S)
    jobs, now = [], 0.0
    for _ in range(count):
        now += rng.expovariate(rate)
        jobs.append(_job(now, rng.choices(SIZES, WEIGHTS)[0], _duration(rng), hints))
    return jobs


def stream_trace(
    seed: int, hints: bool, load: float = 0.8, big: float = 0.02, count: int = 2000
) -> list[Job]:
    rng = random.Random(seed)
    rate = load * GPUS / (((1 - big) + GPUS * big) * MEAN_S)
    jobs, now = [], 0.0
    for _ in range(count):
        now += rng.expovariate(rate)
        jobs.append(_job(now, GPUS if rng.random() < big else 1, _duration(rng), hints))
    return jobs


TRACES: dict[str, Callable[[int, bool], list[Job]]] = {
    "batch": batch_trace,
    "poisson": poisson_trace,
    "stream": stream_trace,
}
#: name -> (policy factory, whether jobs pass exact hints)
POLICIES: dict[str, tuple[Callable[[], object], bool]] = {
    "strict FIFO": (FifoPolicy, False),
    "greedy first-fit": (GreedyPolicy, False),
    "gpupool, no hints": (BackfillPolicy, False),
    "gpupool, exact hints": (BackfillPolicy, True),
}


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def run_trace(name: str) -> dict[str, dict[str, float]]:
    make = TRACES[name]
    rows: dict[str, dict[str, float]] = {}
    for label, (policy, hints) in POLICIES.items():
        results: list[SimResult] = [
            simulate(make(seed, hints), gpus=GPUS, policy=policy())  # type: ignore[arg-type]
            for seed in SEEDS
        ]
        rows[label] = {
            "ratio": _median([r.ratio for r in results]),
            "ratio_max": max(r.ratio for r in results),
            "makespan": _median([r.makespan for r in results]),
            "utilization": _median([r.utilization for r in results]),
            "wait8_median": _median([r.wait(8).median for r in results]),
            "wait8_p95": _median([r.wait(8).p95 for r in results]),
            "wait8_max": _median([r.wait(8).max for r in results]),
            "wait1_median": _median([r.wait(1).median for r in results]),
            "us_per_decision": _median([1e6 * r.core_seconds / r.decisions for r in results]),
        }
    fifo = rows["strict FIFO"]
    for row in rows.values():
        row["wait8_vs_fifo"] = row["wait8_median"] / fifo["wait8_median"]
        row["makespan_vs_fifo"] = row["makespan"] / fifo["makespan"]
    return rows


#: The ``learned`` scenario's rows: label -> what the sweep is given.
LEARNED_ROWS = (
    "runner, no hints (first sweep)",
    "runner, exact hints",
    "runner, learned from history",
    "runner, within-run estimates only",
    "runner, history, durations +-30%",
)


def replay(
    jobs: list[Job],
    journal: Path,
    *,
    hints: bool = False,
    learn: bool = False,
    history: Path | None = None,
) -> tuple[float, list[float]]:
    """Run ``jobs`` (all queued at t=0) through a real ParallelRunner, pool and journal
    in virtual time; return the makespan and each job's start. Task ``i`` is keyed
    ``job-i`` and sleeps ``jobs[i].duration``."""
    import trio  # the dev extra's; only this scenario needs it
    from trio.testing import MockClock

    from gpupool import FakeGPUProvider, GPUAllocation, GPUResourcePool, ParallelRunner

    starts = [0.0] * len(jobs)

    async def sweep() -> float:
        async def run_job(index: int, allocation: GPUAllocation | None) -> None:
            starts[index] = trio.current_time() - began
            await trio.sleep(jobs[index].duration)

        async with (
            GPUResourcePool(FakeGPUProvider(count=GPUS)) as pool,
            ParallelRunner(
                pool,
                max_parallel=len(jobs),  # every job waits on the pool, as in the simulator
                journal=journal,
                history=history,
                learn_durations=learn,
            ) as runner,
        ):
            began = trio.current_time()
            await runner.map(
                run_job,
                range(len(jobs)),
                key=lambda i: f"job-{i}",
                required_gpus=lambda i: jobs[i].gpus,
                expected_duration=(lambda i: jobs[i].duration) if hints else None,
            )
            return trio.current_time() - began

    makespan = trio.run(sweep, clock=MockClock(autojump_threshold=0))
    return makespan, starts


def run_learned(workdir: Path) -> dict[str, dict[str, float]]:
    """The ``learned`` scenario (see the module docstring), seeds 0-4."""
    per_row: dict[str, list[tuple[float, list[float], list[Job]]]] = {r: [] for r in LEARNED_ROWS}
    for seed in SEEDS:
        jobs = batch_trace(seed, hints=False)
        first = workdir / f"seed{seed}-first.sqlite"
        noisy_rng = random.Random(1000 + seed)
        noisy = [
            Job(
                arrival=j.arrival,
                gpus=j.gpus,
                duration=j.duration * noisy_rng.lognormvariate(0, 0.3),
            )
            for j in jobs
        ]
        runs = {
            LEARNED_ROWS[0]: (jobs, {"journal": first}),
            LEARNED_ROWS[1]: (
                jobs,
                {"journal": workdir / f"seed{seed}-exact.sqlite", "hints": True},
            ),
            LEARNED_ROWS[2]: (
                jobs,
                {"journal": workdir / f"seed{seed}-second.sqlite", "learn": True, "history": first},
            ),
            LEARNED_ROWS[3]: (jobs, {"journal": workdir / f"seed{seed}-own.sqlite", "learn": True}),
            LEARNED_ROWS[4]: (
                noisy,
                {"journal": workdir / f"seed{seed}-noisy.sqlite", "learn": True, "history": first},
            ),
        }
        for label, (trace, options) in runs.items():
            makespan, starts = replay(trace, **options)  # type: ignore[arg-type]
            per_row[label].append((makespan, starts, trace))
    rows: dict[str, dict[str, float]] = {}
    for label, runs_of_row in per_row.items():
        ratios = [m / lower_bound(trace, GPUS) for m, _, trace in runs_of_row]
        wide = [
            sorted(start for start, job in zip(starts, trace, strict=True) if job.gpus == GPUS)
            for _, starts, trace in runs_of_row
        ]
        rows[label] = {
            "ratio": _median(ratios),
            "ratio_max": max(ratios),
            "makespan": _median([m for m, _, _ in runs_of_row]),
            "wait8_median": _median([statistics.median(w) for w in wide]),
            "wait8_max": _median([w[-1] for w in wide]),
            "wait8_max_max": max(w[-1] for w in wide),
        }
    base = rows[LEARNED_ROWS[0]]
    for row in rows.values():
        row["makespan_vs_first"] = row["makespan"] / base["makespan"]
        row["wait8_max_vs_first"] = row["wait8_max"] / base["wait8_max"]
    return rows


def learned_markdown(rows: dict[str, dict[str, float]]) -> str:
    out = [
        "| batch trace, real runner + journal | makespan / LB (median, max) "
        "| makespan x first sweep | 8-GPU wait median | 8-GPU wait max (median; worst seed) "
        "| 8-GPU max wait x first sweep |",
        "|---|---|---|---|---|---|",
    ]
    for label, r in rows.items():
        # The noisy sweep runs other durations: its makespan is comparable only to its LB.
        versus = "(other trace)" if label == LEARNED_ROWS[4] else f"{r['makespan_vs_first']:.3f}"
        out.append(
            f"| {label} | {r['ratio']:.3f}, {r['ratio_max']:.3f} | {versus} "
            f"| {r['wait8_median']:,.0f} s | {r['wait8_max']:,.0f} s; {r['wait8_max_max']:,.0f} s "
            f"| {r['wait8_max_vs_first']:.2f} |"
        )
    return "\n".join(out)


def learned_targets(rows: dict[str, dict[str, float]]) -> list[tuple[str, bool]]:
    learned = rows[LEARNED_ROWS[2]]
    return [
        (
            "learned from history, no hints: makespan/LB <= 1.02",
            learned["ratio"] <= 1.02,
        ),
        (
            "learned from history: no starvation (8-GPU max wait <= the first sweep's)",
            learned["wait8_max"] <= rows[LEARNED_ROWS[0]]["wait8_max"],
        ),
    ]


def jobs_file_text(seed: int, estimates: bool) -> str:
    """Seed ``seed``'s ``batch`` trace as a jobs file: a ``sleep`` as long as each job
    runs, with its ``est=`` (the duration, as the file writes it) or without."""
    lines = []
    for job in batch_trace(seed, hints=False):
        seconds = f"{job.duration:.1f}"
        est = f" est={seconds}s" if estimates else ""
        lines.append(f"[gpus={job.gpus}{est}] sleep {seconds}")
    return "\n".join(lines) + "\n"


def _simulated(spec: JobSpec) -> Job:
    """The simulator's job for a parsed line: its resources as the parser built them,
    and the time its ``sleep`` takes."""
    request = spec.resources
    return Job(
        arrival=0.0,
        duration=float(spec.command.split()[1]),
        gpus=request.required_gpus,
        memory_mb=request.min_memory_mb,
        hint=request.expected_duration,
        priority=request.priority,
    )


def run_jobs_file() -> dict[str, dict[str, float]]:
    """The ``batch`` trace through the jobs-file parser, with and without ``est=``."""
    rows: dict[str, dict[str, float]] = {}
    for label, estimates in (("jobs file, no est=", False), ("jobs file, est=", True)):
        results = [
            simulate(
                [_simulated(spec) for spec in parse_jobs(jobs_file_text(seed, estimates))],
                gpus=GPUS,
                policy=BackfillPolicy(),
            )
            for seed in SEEDS
        ]
        rows[label] = {
            "ratio": _median([r.ratio for r in results]),
            "ratio_max": max(r.ratio for r in results),
            "makespan": _median([r.makespan for r in results]),
        }
    no_est = rows["jobs file, no est="]
    for row in rows.values():
        row["makespan_vs_no_est"] = row["makespan"] / no_est["makespan"]
    return rows


def run_scale() -> dict[str, dict[str, float]]:
    """CPU cost per decision draining a queue submitted at once: small vs large.

    The small case is the median of the five seeds (it is over in a fraction of a
    second, so one run is noisy); the large one is one run of 200,000 decisions.
    """
    rows: dict[str, dict[str, float]] = {}
    for label, (policy, hints) in POLICIES.items():
        if label == "greedy first-fit":
            continue
        costs = {}
        for gpus, count, seeds in ((8, 1_000, SEEDS), (64, 100_000, range(1))):
            per_decision = []
            for seed in seeds:
                jobs = batch_trace(seed, hints, count)
                result = simulate(jobs, gpus=gpus, policy=policy())  # type: ignore[arg-type]
                per_decision.append(1e6 * result.core_seconds / result.decisions)
            costs[f"{gpus}x{count}"] = _median(per_decision)
        small, large = costs["8x1000"], costs["64x100000"]
        rows[label] = {"us_small": small, "us_large": large, "growth": large / small}
    return rows


def markdown(
    traces: dict[str, dict[str, dict[str, float]]],
    scale: dict[str, dict[str, float]],
    jobs_file: dict[str, dict[str, float]],
) -> str:
    out = [
        "| trace | policy | makespan / LB (median, max) | 8-GPU wait median (x FIFO) "
        "| 8-GPU wait p95 | 1-GPU wait median | makespan x FIFO |",
        "|---|---|---|---|---|---|---|",
    ]
    for trace, rows in traces.items():
        for label, r in rows.items():
            out.append(
                f"| {trace} | {label} | {r['ratio']:.3f}, {r['ratio_max']:.3f} "
                f"| {r['wait8_median']:,.0f} s ({r['wait8_vs_fifo']:.2f}) "
                f"| {r['wait8_p95']:,.0f} s | {r['wait1_median']:,.0f} s "
                f"| {r['makespan_vs_fifo']:.3f} |"
            )
    out += [
        "",
        "| policy | us/decision, 8 GPUs x 1,000 jobs | 64 GPUs x 100,000 jobs | growth |",
        "|---|---|---|---|",
    ]
    for label, r in scale.items():
        out.append(f"| {label} | {r['us_small']:.1f} | {r['us_large']:.1f} | {r['growth']:.2f}x |")
    hints = traces["batch"]["gpupool, exact hints"]
    out += [
        "",
        "| batch trace as a jobs file (`gpupool run`'s parser) | makespan / LB (median, max) "
        "| makespan x no `est=` |",
        "|---|---|---|",
    ]
    for label, r in jobs_file.items():
        out.append(
            f"| {label} | {r['ratio']:.3f}, {r['ratio_max']:.3f} | {r['makespan_vs_no_est']:.3f} |"
        )
    out.append(
        f"| (batch, gpupool, exact hints) | {hints['ratio']:.3f}, {hints['ratio_max']:.3f} "
        f"| {hints['makespan'] / jobs_file['jobs file, no est=']['makespan']:.3f} |"
    )
    return "\n".join(out)


def targets(
    traces: dict[str, dict[str, dict[str, float]]],
    scale: dict[str, dict[str, float]],
    jobs_file: dict[str, dict[str, float]],
) -> list[tuple[str, bool]]:
    batch, stream = traces["batch"], traces["stream"]
    checks = [
        ("batch, no hints: makespan/LB <= 1.05", batch["gpupool, no hints"]["ratio"] <= 1.05),
        ("batch, exact hints: makespan/LB <= 1.02", batch["gpupool, exact hints"]["ratio"] <= 1.02),
    ]
    for label in ("gpupool, no hints", "gpupool, exact hints"):
        row = stream[label]
        checks.append(
            (
                f"stream, {label.split(', ')[1]}: 8-GPU median wait <= 1.25x FIFO "
                "and makespan < FIFO",
                row["wait8_vs_fifo"] <= 1.25 and row["makespan_vs_fifo"] < 1.0,
            )
        )
    for label in ("gpupool, no hints", "gpupool, exact hints"):
        checks.append(
            (
                f"scale, {label.split(', ')[1]}: cost/decision growth <= 2x",
                scale[label]["growth"] <= 2.0,
            )
        )
    with_est = jobs_file["jobs file, est="]
    checks.append(
        (
            "jobs file with est=: the with-hints makespan (makespan/LB <= 1.02, "
            "and within 1% of batch with exact hints)",
            with_est["ratio"] <= 1.02
            and abs(with_est["makespan"] / batch["gpupool, exact hints"]["makespan"] - 1) <= 0.01,
        )
    )
    return checks


def _cpu() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} ({os.cpu_count()} CPUs)"


def write_docs(section: str) -> None:
    path = ROOT / "docs" / "benchmarks.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    start, end = MARKERS
    block = f"{start}\n{section}\n{end}"
    if start in text and end in text:
        before = text[: text.index(start)]
        after = text[text.index(end) + len(end) :]
        text = before + block + after
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write-docs", action="store_true", help="refresh docs/benchmarks.md")
    parser.add_argument(
        "--learned-only",
        action="store_true",
        help="run only the learned-durations scenario (not with --write-docs)",
    )
    args = parser.parse_args()
    if args.write_docs and args.learned_only:
        parser.error("--write-docs needs every scenario: leave out --learned-only")
    began = time.perf_counter()
    machine = f"{_cpu()}, Python {platform.python_version()}, {platform.system()}"
    payload: dict[str, object] = {"machine": machine}
    lines: list[str] = []
    checks: list[tuple[str, bool]] = []
    if not args.learned_only:
        traces = {name: run_trace(name) for name in TRACES}
        scale = run_scale()
        jobs_file = run_jobs_file()
        lines += [markdown(traces, scale, jobs_file), ""]
        checks += targets(traces, scale, jobs_file)
        payload.update(traces=traces, scale=scale, jobs_file=jobs_file)
    with tempfile.TemporaryDirectory(prefix="bench-policy-") as workdir:
        learned = run_learned(Path(workdir))
    lines += [learned_markdown(learned), ""]
    checks += learned_targets(learned)
    payload.update(learned=learned, targets=dict(checks))
    lines += [f"- {'PASS' if ok else 'FAIL'}: {what}" for what, ok in checks]
    print("\n".join(lines))
    print(f"\n({time.perf_counter() - began:.0f} s; {machine}; load average {_load()})")
    results = ROOT / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    name = "bench_policy_learned.json" if args.learned_only else "bench_policy.json"
    (results / name).write_text(json.dumps(payload, indent=2))
    if args.write_docs:
        section = "\n".join(
            [
                "## Scheduling policies (`benchmarks/bench_policy.py`)",
                "",
                "Simulated on 8 GPUs with the real core (`gpupool.sim`), medians over seeds 0-4; "
                "the learned-durations table through the real runner, pool and journal in "
                "virtual time; traces and targets in the script's docstring and in "
                "[scheduling.md](scheduling.md). Machine: " + machine + ".",
                "",
                *lines,
            ]
        )
        write_docs(section)


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


if __name__ == "__main__":
    main()
