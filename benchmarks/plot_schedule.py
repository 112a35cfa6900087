"""Draw the Gantt chart in docs/scheduling.md from the simulator.

    python -m pip install -e '.[docs]'
    python benchmarks/plot_schedule.py       # writes docs/scheduling_gantt.png

One trace on 8 GPUs: a steady stream of 1-GPU jobs (about 85% load) into
which two 8-GPU jobs and one 4-GPU job arrive (triangles), scheduled by
strict FIFO, greedy first-fit and gpupool's policy without and with exact
duration hints. Each bar is one job on one GPU, coloured by the job's size;
the bars are laid out by the same code as ``gpupool journal plot``'s
(``gpupool._journal.timeline.lay_out``: one bar per GPU a job held).
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from gpupool._journal.timeline import Attempt, Bar, Outcome, lay_out  # noqa: E402
from gpupool.sim import (  # noqa: E402
    BackfillPolicy,
    FifoPolicy,
    GreedyPolicy,
    Job,
    SimResult,
    simulate,
)

GPUS = 8
COLOURS = {1: "#9ecae1", 2: "#4292c6", 4: "#fd8d3c", 8: "#d62728"}
OUT = ROOT / "docs" / "scheduling_gantt.png"


def trace(hints: bool, seed: int = 1) -> list[Job]:
    rng = random.Random(seed)
    jobs = []
    now = 0.0
    while now < 1500:
        now += rng.expovariate(0.85 * GPUS / (60 * 1.28))
        jobs.append((now, 1, 60 * rng.lognormvariate(0, 0.7)))
    jobs += [(300.0, 8, 120.0), (650.0, 4, 200.0), (900.0, 8, 120.0)]
    return [
        Job(arrival=a, gpus=g, duration=d, hint=d if hints else None) for a, g, d in sorted(jobs)
    ]


def draw_jobs(ax: Axes, result: SimResult) -> None:
    """One bar per job and GPU, placed by the timeline's layout; jobs are keyed by
    their position in the result, so the colour can be looked up again."""
    attempts = [
        Attempt(
            key=str(number),
            attempt=1,
            ready_at=record.job.arrival,
            start=record.start,
            end=record.end,
            gpu_indices=tuple(record.gpu_indices),
            outcome=Outcome.SUCCEEDED,
        )
        for number, record in enumerate(result.records)
    ]
    lanes, bars = lay_out(attempts)
    # The simulator runs the real core, which never gives one GPU to two jobs.
    assert all(lane.rows == 1 for lane in lanes), "a GPU held by two jobs at once"

    def trace_order(bar: Bar) -> tuple[int, int]:
        record = result.records[int(bar.attempt.key)]
        return int(bar.attempt.key), record.gpu_indices.index(lanes[bar.lane].gpu)

    # In trace order, as the jobs were submitted: where bars touch, the later one's
    # edge is drawn on top.
    for bar in sorted(bars, key=trace_order):
        gpus = result.records[int(bar.attempt.key)].job.gpus
        big = gpus == GPUS
        ax.barh(
            lanes[bar.lane].gpu,
            bar.attempt.end - bar.attempt.start,
            left=bar.attempt.start,
            height=0.8,
            color=COLOURS[gpus],
            edgecolor="black" if big else "white",
            linewidth=0.8 if big else 0.5,
        )


def main() -> None:
    panels = [
        ("strict FIFO", FifoPolicy(), False),
        ("greedy first-fit", GreedyPolicy(), False),
        ("gpupool, no hints", BackfillPolicy(), False),
        ("gpupool, exact hints", BackfillPolicy(), True),
    ]
    results = [
        (title, simulate(trace(hints), gpus=GPUS, policy=policy)) for title, policy, hints in panels
    ]
    horizon = max(r.makespan for _, r in results)
    fig, axes = plt.subplots(len(results), 1, figsize=(10, 9), sharex=True)
    for ax, (title, result) in zip(axes, results, strict=True):
        draw_jobs(ax, result)
        waits = ", ".join(f"{r.wait:,.0f} s" for r in result.records if r.job.gpus > 1)
        ax.set_title(
            f"{title}: all done at {result.makespan:,.0f} s; the 8-, 4- and 8-GPU jobs "
            f"wait {waits}; 1-GPU jobs wait {result.wait(1).median:,.0f} s (median)",
            fontsize=9.5,
            loc="left",
        )
        for record in result.records:
            if record.job.gpus > 1:
                ax.plot(
                    record.job.arrival,
                    -0.55,
                    marker="v",
                    color=COLOURS[record.job.gpus],
                    markeredgecolor="black",
                    markersize=8,
                    clip_on=False,
                )
        ax.set_ylim(-0.6, GPUS - 0.4)
        ax.set_yticks(range(GPUS))
        ax.set_ylabel("GPU", fontsize=9)
        ax.invert_yaxis()
        ax.tick_params(labelsize=8)
    axes[-1].set_xlim(0, horizon * 1.01)
    axes[-1].set_xlabel("seconds (triangles: when the multi-GPU jobs were submitted)")
    fig.legend(
        handles=[Patch(color=c, label=f"{g}-GPU job") for g, c in COLOURS.items()],
        loc="upper center",
        ncol=4,
        fontsize=9,
        frameon=False,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(OUT, dpi=110)
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
