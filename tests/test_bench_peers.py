"""The correctness logic of benchmarks/bench_peers.py: overlap checks, table, docs markers.

The benchmark's verdicts ("never two concurrent tasks told the same exclusive
GPU", "peak concurrency 8") are only as good as these pure functions, so they
are tested here without Ray or Dask.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def _load() -> ModuleType:
    path = REPO_ROOT / "benchmarks" / "bench_peers.py"
    spec = importlib.util.spec_from_file_location("bench_peers", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_peers"] = module
    spec.loader.exec_module(module)
    return module


bp = _load()


def rec(start: float, end: float, *gpus: int, exclusive: bool = True) -> Any:
    return bp.Record(start, end, tuple(str(g) for g in gpus), exclusive, None, 1)


# --- find_conflicts ---------------------------------------------------------


def test_overlapping_exclusive_tasks_on_one_gpu_conflict() -> None:
    assert bp.find_conflicts([rec(0, 2, 0), rec(1, 3, 0)]) == [bp.Conflict("0", 0, 1)]


def test_back_to_back_tasks_do_not_conflict() -> None:
    # A GPU handed over at the instant its holder finished is not shared.
    assert bp.find_conflicts([rec(0, 1, 0), rec(1, 2, 0), rec(2, 3, 0)]) == []


def test_overlapping_tasks_on_different_gpus_do_not_conflict() -> None:
    assert bp.find_conflicts([rec(0, 2, 0), rec(0, 2, 1), rec(1, 3, 2, 3)]) == []


def test_shared_tasks_may_overlap_but_not_with_an_exclusive_one() -> None:
    shared = [rec(0, 2, 0, exclusive=False), rec(1, 3, 0, exclusive=False)]
    assert bp.find_conflicts(shared) == []
    assert bp.find_conflicts([*shared, rec(2.5, 4, 0)]) == [bp.Conflict("0", 1, 2)]


def test_multi_gpu_task_conflicts_on_the_gpu_it_shares() -> None:
    records = [rec(0, 2, 0, 1, 2, 3), rec(1, 3, 3, 4)]
    assert bp.find_conflicts(records) == [bp.Conflict("3", 0, 1)]


def test_a_long_task_conflicts_with_each_later_one_inside_it() -> None:
    # The short tasks in between must not hide the long one from the checker.
    records = [rec(0, 10, 0), rec(1, 2, 0), rec(5, 6, 0)]
    assert bp.find_conflicts(records) == [bp.Conflict("0", 0, 1), bp.Conflict("0", 0, 2)]


def test_input_order_does_not_matter() -> None:
    records = [rec(5, 6, 0), rec(0, 10, 0), rec(11, 12, 0)]
    assert bp.find_conflicts(records) == [bp.Conflict("0", 1, 0)]


def test_tasks_told_no_gpu_cannot_conflict() -> None:
    assert bp.find_conflicts([rec(0, 2), rec(0, 2)]) == []


def test_a_record_that_ends_before_it_starts_is_rejected() -> None:
    with pytest.raises(ValueError, match="ends before it starts"):
        bp.find_conflicts([rec(2, 1, 0)])


# --- peak_concurrency -------------------------------------------------------


@pytest.mark.parametrize(
    ("intervals", "peak"),
    [
        ([], 0),
        ([(0, 1)], 1),
        ([(0, 1), (1, 2), (2, 3)], 1),  # back to back: never two at once
        ([(0, 3), (1, 2), (1.5, 4)], 3),
        ([(0, 1), (0, 1), (0.5, 2), (1, 2)], 3),
        ([(0, 0), (0, 1)], 1),  # an empty interval never runs
    ],
)
def test_peak_concurrency(intervals: list[tuple[float, float]], peak: int) -> None:
    assert bp.peak_concurrency([rec(a, b, 0) for a, b in intervals]) == peak


def test_summarize_counts_what_tasks_were_told() -> None:
    records = [
        bp.Record(0, 1, ("0",), True, "GPU-a", 10),
        bp.Record(0.5, 1.5, ("0",), True, "GPU-a", 11),
        bp.Record(0, 1, (), False, None, 10),
    ]
    summary = bp.summarize("trivial", 3.0, records)
    assert summary["tasks"] == 3
    assert summary["per_task_us"] == pytest.approx(1e6)
    assert summary["peak"] == 3
    assert summary["exclusive_tasks"] == 2
    assert summary["conflicts"] == 1
    assert summary["told_gpus"] == 2
    assert summary["cuda_visible_devices_set"] == 2
    assert summary["distinct_processes"] == 2


# --- replace_section (docs/benchmarks.md) -----------------------------------

START, END = bp.START_MARKER, bp.END_MARKER


def test_section_is_appended_with_markers_when_absent() -> None:
    doc = "# Benchmarks\n\n## Pool\n\nother figures\n"
    out = bp.replace_section(doc, "NEW TABLE")
    assert out.startswith(doc.rstrip("\n"))
    assert out.endswith(f"{START}\nNEW TABLE\n{END}\n")


def test_empty_document_gets_a_heading() -> None:
    assert bp.replace_section("", "T") == f"# Benchmarks\n\n{START}\nT\n{END}\n"


def test_only_the_text_between_markers_is_replaced() -> None:
    before = "# Benchmarks\n\n## Pool\n| a | b |\n\n"
    after = "\n\n## Runner\n| c | d |\n"
    doc = f"{before}{START}\nOLD\nOLD\n{END}{after}"
    out = bp.replace_section(doc, "NEW")
    assert out == f"{before}{START}\nNEW\n{END}{after}"
    assert bp.replace_section(out, "NEW") == out  # idempotent


@pytest.mark.parametrize(
    "doc",
    [
        f"{START}\nA\n{END}\n{START}\nB\n{END}\n",  # two sections
        f"{START}\nA\n",  # no end
        f"A\n{END}\n",  # no start
        f"{END}\nA\n{START}\n",  # out of order
    ],
)
def test_malformed_markers_raise_instead_of_eating_text(doc: str) -> None:
    with pytest.raises(ValueError, match="bench_peers"):
        bp.replace_section(doc, "NEW")


# --- render_table and check_targets -----------------------------------------


def _workload(name: str, wall_s: float, tasks: int, **extra: Any) -> dict[str, Any]:
    figures = {
        "workload": name,
        "tasks": tasks,
        "wall_s": wall_s,
        "peak": 8,
        "exclusive_tasks": tasks,
        "conflicts": 0,
        "told_gpus": tasks,
        "cuda_visible_devices_set": tasks,
        "distinct_processes": 1,
    }
    figures.update(extra)
    return figures


def _config(key: str, per_task_s: float, startup_s: float, **sleep: Any) -> dict[str, Any]:
    return {
        "key": key,
        "label": key,
        "startup_s": startup_s,
        "shutdown_s": 0.5,
        "told": "ids",
        "workloads": {
            "trivial": _workload("trivial", per_task_s * 2000, 2000),
            "sleep": _workload("sleep", 1.0, 16, **sleep),
        },
    }


def test_table_gives_ratios_to_the_baseline_and_reports_conflicts() -> None:
    ours = _config("gpupool_pool", 50e-6, 0.01)
    ray = _config("ray_reuse", 500e-6, 3.0, conflicts=2)
    dask = _config("dask", 1000e-6, 0.5, told_gpus=0, cuda_visible_devices_set=0)
    del dask["workloads"]["trivial"]
    table = bp.render_table([ours, ray, dask], "gpupool_pool")
    lines = table.splitlines()
    assert lines[0] == "| measure | gpupool_pool | ray_reuse | dask |"
    assert lines[1] == "|---|---|---|---|"
    startup = next(line for line in lines if line.startswith("| start-up"))
    assert startup == "| start-up | 0.01 s | 3.00 s (300x) | 0.5 s (50.0x) |"
    processes = next(line for line in lines if line.startswith("| processes"))
    assert processes == "| processes the trivial tasks ran in | 1 for 2,000 | 1 for 2,000 | — |"
    trivial = next(line for line in lines if line.startswith("| per task: trivial"))
    assert "| 50.0 µs [2,000 tasks] |" in trivial
    assert "| 500 µs (10.0x) [2,000 tasks] |" in trivial
    assert trivial.endswith("| — |")  # Dask did not run it
    conflicts = lines[-1]
    assert conflicts.startswith("| two concurrent tasks told the same exclusive GPU")
    assert "never (0 in 2,016 exclusive tasks checked)" in conflicts
    assert "**yes: 2 overlapping pairs**" in conflicts
    assert "cannot happen: told no GPU" in conflicts
    assert all(line.count("|") == 5 for line in lines)


def test_table_rejects_an_unknown_baseline() -> None:
    with pytest.raises(ValueError, match="baseline must be one of"):
        bp.render_table([_config("gpupool_pool", 1e-4, 0.01)], "gpupool_runner")


def test_targets_need_ten_times_and_exact_peak() -> None:
    ours = _config("gpupool_pool", 100e-6, 0.01, peak=7)
    fast_ray = _config("ray_reuse", 999e-6, 0.05)
    slow_ray = _config("ray_default", 1.0, 0.05)
    dask = _config("dask", 1100e-6, 1.0)
    targets = dict(bp.check_targets([ours, fast_ray, slow_ray, dask]))
    assert targets == {
        "gpupool_pool, trivial: faster Ray config / gpupool = 10.0x (>= 10x)": False,
        "gpupool_pool, trivial: Dask / gpupool = 11.0x (>= 10x)": True,
        "gpupool_pool, start-up: ray.init / gpupool = 5x (>= 10x)": False,
        "gpupool_pool: peak concurrency 7 == 8 GPUs": False,
        "gpupool_pool: 0 pairs of concurrent tasks told the same exclusive GPU (== 0)": True,
    }


def test_the_gpupool_side_measures_the_real_pool() -> None:
    # A few tasks per workload through the real GPUResourcePool (no Ray, no Dask):
    # every exclusive task told its own GPUs, never more tasks at once than GPUs.
    configs = bp.run_gpupool(n_tasks=24, repeats=1)
    pool = next(c for c in configs if c["key"] == "gpupool_pool")
    assert set(pool["workloads"]) == {"trivial", "mixed", "fractional", "sleep"}
    for summary in pool["workloads"].values():
        assert summary["conflicts"] == 0
        assert summary["told_gpus"] == summary["tasks"]
    assert pool["workloads"]["mixed"]["tasks"] == 24
    assert 1 <= pool["workloads"]["sleep"]["peak"] <= bp.GPU_COUNT


def test_rounds_merge_keeps_the_best_figures_and_every_conflict() -> None:
    first = _config("ray_reuse", 500e-6, 3.0)
    first["notes"] = ["a"]
    second = _config("ray_reuse", 400e-6, 4.0, conflicts=1)
    second["workloads"]["sleep"]["wall_s"] = 2.0
    second["notes"] = ["a", "b"]
    merged = bp.merge_configs({}, [first])
    merged = bp.merge_configs(merged, [second, _config("dask", 1e-3, 1.0)])
    assert set(merged) == {"ray_reuse", "dask"}
    ray = merged["ray_reuse"]
    assert ray["startup_s"] == 3.0
    assert ray["workloads"]["trivial"]["wall_s"] == pytest.approx(400e-6 * 2000)
    assert ray["workloads"]["sleep"]["wall_s"] == 1.0  # the faster run is kept...
    assert ray["workloads"]["sleep"]["conflicts"] == 1  # ...but the slower one's conflict counts
    assert ray["workloads"]["sleep"]["exclusive_tasks_checked"] == 32
    assert ray["workloads"]["sleep"]["runs"] == 2
    assert ray["notes"] == ["a", "b"]
    assert first["startup_s"] == 3.0  # inputs untouched
    assert "runs" not in first["workloads"]["sleep"]
