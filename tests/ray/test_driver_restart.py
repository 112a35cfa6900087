"""The driver of a sweep on a Ray cluster killed with ``kill -9`` and started again: the
journal on the driver's machine resumes it, and no task it finished runs again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpupool import Journal, TaskStatus

from .conftest import RayTestCluster

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[2]
DRIVER = ROOT / "tests" / "scripts" / "ray_driver.py"


def start_driver(cluster: RayTestCluster, journal: Path, marks: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(DRIVER), cluster.address, str(journal), str(marks)],
        cwd=ROOT,  # Ray's workers import tests.ray.tasks from the driver's directory
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )


def finished_keys(journal: Path) -> set[str]:
    with Journal(journal) as opened:
        return {r.key for r in opened.records() if r.status is TaskStatus.SUCCEEDED}


def runs_of(marks: Path) -> dict[int, int]:
    """How many times each task started, from the marks it left."""
    counts: dict[int, int] = {}
    for mark in marks.iterdir():
        if not mark.name.endswith(".done"):
            number = int(mark.name.split("-")[0])
            counts[number] = counts.get(number, 0) + 1
    return counts


def test_a_driver_killed_mid_sweep_resumes_without_rerunning_finished_tasks(
    ray_cluster: RayTestCluster, tmp_path: Path
) -> None:
    journal, marks = tmp_path / "sweep.sqlite", tmp_path / "marks"
    marks.mkdir()
    first = start_driver(ray_cluster, journal, marks)
    try:
        deadline = time.monotonic() + 120
        while len(list(marks.glob("*.done"))) < 3:  # some finished, others run
            assert first.poll() is None, "the driver ended before it was killed"
            assert time.monotonic() < deadline, "no task finished within 120 s"
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    finally:
        first.kill()
        first.wait()
        assert first.stdout is not None
        first.stdout.close()
    done_before = finished_keys(journal)
    started_before = runs_of(marks)
    assert done_before  # the journal had recorded some as finished

    second = start_driver(ray_cluster, journal, marks)
    out, _ = second.communicate(timeout=180)
    assert second.returncode == 0, out
    assert out.strip() == "done 8"
    # Everything finished once; what the first run had finished did not run again.
    assert len(finished_keys(journal)) == 8
    runs = runs_of(marks)
    assert sorted(runs) == list(range(8))
    with Journal(journal) as opened:
        by_key = {r.key: r for r in opened.records()}
    for key in done_before:
        number = by_key[key].item[1]
        assert runs[number] == started_before[number] == 1, (key, runs)
