"""Draw the Gantt chart in docs/scheduling.md from the simulator.

    python -m pip install -e '.[docs]'
    python benchmarks/plot_schedule.py       # writes docs/scheduling_gantt.png

One trace on 8 GPUs: a steady stream of 1-GPU jobs (about 85% load) into
which two 8-GPU jobs and one 4-GPU job arrive (triangles), scheduled by
strict FIFO, greedy first-fit and gpupool's policy without and with exact
duration hints. Each bar is one job on one GPU, coloured by the job's size.
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
from matplotlib.patches import Patch  # noqa: E402

from gpupool.sim import BackfillPolicy, FifoPolicy, GreedyPolicy, Job, simulate  # noqa: E402

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
        for record in result.records:
            big = record.job.gpus == GPUS
            for gpu in record.gpu_indices:
                ax.barh(
                    gpu,
                    record.end - record.start,
                    left=record.start,
                    height=0.8,
                    color=COLOURS[record.job.gpus],
                    edgecolor="black" if big else "white",
                    linewidth=0.8 if big else 0.5,
                )
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
