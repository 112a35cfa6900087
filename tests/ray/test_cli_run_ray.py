"""``gpupool run JOBS_FILE --ray ADDRESS`` in a subprocess, against a real two-node Ray
cluster (tests/ray/conftest.py): GPU jobs spread over the nodes, each one's output
written on its node and brought back into the driver's log directory, a failed job
failed as on one box, a second run that runs nothing, impossible jobs refused before
anything runs, and a worker killed with ``kill -9`` that leaves no job behind."""

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

pytestmark = pytest.mark.timeout(240)

ROOT = Path(__file__).resolve().parents[2]
PROVIDER = "tests.ray.tasks:fake_gpus"

#: Waits (up to 60 s) until all four jobs have started, so that they run at once: with
#: two GPUs per node, four 1-GPU jobs at once must use both nodes.
BARRIER = (
    "touch {dir}/$GPUPOOL_JOB_KEY; i=0; "
    'while [ "$(ls {dir} | wc -l)" -lt 4 ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; '
    "echo job {n} says hello"
)


def gpupool_run(
    jobs: Path, cluster: RayTestCluster, *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpupool", "run", str(jobs), "--ray", cluster.address, *args],
        cwd=ROOT,  # the nodes import tests.ray.tasks (the provider) from here
        capture_output=True,
        text=True,
        timeout=180,
    )


def records(journal: Path) -> dict[int, object]:
    with Journal(journal) as opened:
        return {r.item["line"]: r for r in opened.records()}


def test_jobs_spread_over_the_nodes_their_logs_come_home_and_a_rerun_runs_nothing(
    ray_cluster: RayTestCluster, tmp_path: Path
) -> None:
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    jobs = tmp_path / "jobs.txt"
    lines = [BARRIER.format(dir=barrier, n=n) for n in range(4)]
    lines += ["[gpus=0] echo on the driver", "echo failing output; exit 3"]
    jobs.write_text("\n".join(lines) + "\n")
    logs, journal = tmp_path / "jobs.txt.logs", tmp_path / "jobs.txt.journal.sqlite"

    first = gpupool_run(jobs, ray_cluster, "--provider", PROVIDER)
    assert first.returncode == 1, first.stderr  # the failing job
    assert "5 succeeded, 1 failed" in first.stdout
    found = records(journal)
    assert sorted(found) == [1, 2, 3, 4, 5, 6]
    nodes = set()
    for line in (1, 2, 3, 4):
        record = found[line]
        assert record.status is TaskStatus.SUCCEEDED, record.error  # type: ignore[attr-defined]
        value = record.value  # type: ignore[attr-defined]
        nodes.add(value["node"])
        log = Path(value["log"])
        assert log.parent == logs
        assert log.read_text() == f"job {line - 1} says hello\n"
        # Written on the node elsewhere, brought back, and removed there.
        node_log = Path(value["node_log"])
        assert logs not in node_log.parents
        assert not node_log.exists()
        assert node_log.name == log.name
    assert nodes == {ray_cluster.ids["a"], ray_cluster.ids["b"]}
    cpu = found[5]
    assert cpu.status is TaskStatus.SUCCEEDED  # type: ignore[attr-defined]
    assert "node" not in cpu.value  # type: ignore[attr-defined]  (ran on the driver)
    assert Path(cpu.value["log"]).read_text() == "on the driver\n"  # type: ignore[attr-defined]
    failed = found[6]
    assert failed.status is TaskStatus.FAILED  # type: ignore[attr-defined]
    assert failed.error == (
        "ProcessFailed: command 'echo failing output; exit 3' failed: exit code 3"
    )  # type: ignore[attr-defined]
    failed_log = logs / Path(failed.item["log"]).name  # type: ignore[attr-defined]
    assert failed_log.read_text() == "failing output\n"
    assert f"failed line 6: echo failing output; exit 3 (exit code 3; log: {failed_log})" in (
        first.stderr
    )

    # The same command again: everything is answered by the journal, nothing runs.
    before = {path.name: path.read_text() for path in logs.iterdir()}
    second = gpupool_run(jobs, ray_cluster, "--provider", PROVIDER)
    assert second.returncode == 1, second.stderr
    assert "start line" not in second.stderr
    assert "1 job(s) failed in an earlier run and were not run again" in second.stdout
    assert {path.name: path.read_text() for path in logs.iterdir()} == before


def test_a_failed_job_retried_appends_each_attempts_output(
    ray_cluster: RayTestCluster, tmp_path: Path
) -> None:
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("[retries=1 mem=20G] echo attempt; exit 5\n")  # only node b fits
    done = gpupool_run(jobs, ray_cluster, "--provider", PROVIDER)
    assert done.returncode == 1, done.stderr
    (log,) = (tmp_path / "jobs.txt.logs").iterdir()
    assert log.read_text() == "attempt\nattempt\n"
    with Journal(tmp_path / "jobs.txt.journal.sqlite") as opened:
        (record,) = opened.records()
    assert record.attempts == 2
    assert record.error == "ProcessFailed: command 'echo attempt; exit 5' failed: exit code 5"


def test_jobs_no_node_could_serve_are_refused_before_anything_runs(
    ray_cluster: RayTestCluster, tmp_path: Path
) -> None:
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("echo fine\n[gpus=3] echo three\n[mem=30G] echo big\n")
    done = gpupool_run(jobs, ray_cluster, "--provider", PROVIDER)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"gpupool run: error: {jobs}:2: gpus=3 but no node of the Ray cluster has more than "
        "2 healthy GPUs (2 nodes with GPUs)",
        f"gpupool run: error: {jobs}:3: mem=30G but no node of the Ray cluster has 1 GPU "
        "with that much memory (the largest has 24000M; 2 nodes with GPUs)",
    ]
    assert not (tmp_path / "jobs.txt.journal.sqlite").exists()
    assert not (tmp_path / "jobs.txt.logs").exists()
    # --fake-gpus N under --ray: N fake GPUs on every node (the head too).
    jobs.write_text("[gpus=2] echo two\n")
    done = gpupool_run(jobs, ray_cluster, "--fake-gpus", "1")
    assert done.returncode == 2
    assert "has more than 1 healthy GPU (3 nodes with GPUs)" in done.stderr


def test_an_address_where_nothing_listens_is_a_usage_error(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("echo x\n")
    done = subprocess.run(
        [sys.executable, "-m", "gpupool", "run", str(jobs), "--ray", "127.0.0.1:1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "cannot use the Ray cluster at 127.0.0.1:1: nothing answers" in done.stderr
    assert not (tmp_path / "jobs.txt.journal.sqlite").exists()


def read_pid(path: Path, within: float = 120) -> int:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        text = path.read_text().strip() if path.exists() else ""
        if text.isdigit():
            return int(text)
        time.sleep(0.05)
    raise AssertionError(f"{path} was not written within {within} s")


def gone(pid: int, within: float = 60) -> bool:
    """Whether ``pid`` exits (or is a zombie) within ``within`` seconds (polled)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def test_a_job_does_not_outlive_its_worker_killed_with_kill_9(
    ray_cluster: RayTestCluster, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    jobs = tmp_path / "jobs.txt"
    # The job's shell and a child in its process group; $PPID is the worker that runs it.
    jobs.write_text(
        f"echo $PPID > {marks}/worker; sleep 300 & echo $! > {marks}/child; "
        f"echo $$ > {marks}/shell; wait\n"
    )
    driver = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gpupool",
            "run",
            str(jobs),
            "--ray",
            ray_cluster.address,
            "--provider",
            PROVIDER,
            "--grace",
            "1",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        worker = read_pid(marks / "worker")
        shell, child = read_pid(marks / "shell"), read_pid(marks / "child")
        command = Path(f"/proc/{worker}/cmdline").read_bytes()
        assert command.startswith(b"ray::"), command  # a Ray worker, not anything else
        os.kill(worker, signal.SIGKILL)
        assert gone(shell), "the job's shell outlived its worker"
        assert gone(child), "the job's child outlived its worker"
        out, err = driver.communicate(timeout=120)
    finally:
        driver.kill()
        driver.communicate()
    assert driver.returncode == 1, err
    assert "0 succeeded, 1 failed" in out
    (log,) = (tmp_path / "jobs.txt.logs").iterdir()
    assert "this attempt was stopped on its Ray node before it ended" in log.read_text()
