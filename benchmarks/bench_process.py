"""What ``run_process`` costs over a bare ``anyio`` subprocess, and how fast it ends a job.

Each figure is a ratio against a baseline measured in the same run:

* starting and reaping ``true``: ``anyio.run_process`` (captured output) is the
  baseline; ``gpupool.run_process`` adds its own session, the environment
  token, a ``/proc`` scan for leftovers at the end and (with a log) a file;
* starting, then ending after 50 ms, a job that ignores SIGTERM and has a
  grandchild (``grace_period=0``, so the grace period does not count): the
  baseline is ``os.killpg(SIGKILL)`` then ``wait()``, which searches ``/proc``
  for nothing (and would miss a grandchild that left the group).

    python -m benchmarks.bench_process [--runs 60]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

from gpupool import run_process

RESULTS = Path(__file__).resolve().parent / "results"
STUBBORN = ["sh", "-c", "trap '' TERM; sleep 100 & sleep 100"]


async def _mean_ms(run: Callable[[], Awaitable[object]], runs: int) -> float:
    await run()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        await run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


async def _bare_kill() -> None:
    process = await anyio.open_process(
        STUBBORN, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    await anyio.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # the naive way: no grace, no search
    await process.wait()
    await process.aclose()


async def _gpupool_kill() -> None:
    await run_process(STUBBORN, timeout=0.05, grace_period=0, check=False)  # it times out


async def main(runs: int) -> list[dict[str, object]]:
    with tempfile.TemporaryDirectory() as directory:
        log = Path(directory) / "bench.log"
        figures = {
            "baseline: anyio.run_process(['true'])": await _mean_ms(
                lambda: anyio.run_process(["true"]), runs
            ),
            "gpupool.run_process(['true']), captured": await _mean_ms(
                lambda: run_process(["true"]), runs
            ),
            "gpupool.run_process(['true'], log_path=...)": await _mean_ms(
                lambda: run_process(["true"], log_path=log), runs
            ),
        }
        kills = {
            "baseline: killpg(SIGKILL) + wait()": await _mean_ms(_bare_kill, runs // 3),
            "gpupool: timeout, grace 0, group + grandchild ended": await _mean_ms(
                _gpupool_kill, runs // 3
            ),
        }
    rows: list[dict[str, object]] = []
    for table in (figures, kills):
        base = next(iter(table.values()))
        for name, ms in table.items():
            rows.append({"what": name, "ms": round(ms, 2), "ratio": round(ms / base, 2)})
    return rows


def run() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=60)
    args = parser.parse_args()
    rows = anyio.run(main, args.runs)
    print("| what | median ms | ratio to its baseline |")
    print("|---|---:|---:|")
    for row in rows:
        print(f"| {row['what']} | {row['ms']} | {row['ratio']:.2f} |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_process.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    run()
