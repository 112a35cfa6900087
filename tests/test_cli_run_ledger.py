"""``gpupool run --ledger``: two runs of different jobs files share the machine's GPUs."""

from __future__ import annotations

import collections
import itertools
import subprocess
import sys
from pathlib import Path

from gpupool import FakeGPUProvider, machine_status
from gpupool.providers.fake import fake_uuid

from .ledger_helpers import REPO, env

#: A job: records its GPUs and when it ran (monotonic: one clock for every process).
JOB = """\
import os, sys, time
start = time.monotonic()
time.sleep(float(sys.argv[2]))
end = time.monotonic()
with open(sys.argv[1], "a") as file:
    file.write(f"{os.environ['CUDA_VISIBLE_DEVICES']} {start!r} {end!r} {sys.argv[3]}\\n")
"""


def _run(jobs: Path, ledger: Path, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "gpupool", "run", str(jobs), "--fake-gpus", "2",
         "--ledger", str(ledger)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        env=env(), cwd=cwd,
    )  # fmt: skip


def test_two_runs_sharing_a_ledger_never_put_two_jobs_on_one_gpu(tmp_path: Path) -> None:
    job = tmp_path / "job.py"
    job.write_text(JOB)
    record = tmp_path / "intervals"
    runs = []
    for name in ("a", "b"):
        jobs = tmp_path / f"{name}.txt"
        jobs.write_text(
            "".join(f"{sys.executable} {job} {record} 0.2 {name}{i}\n" for i in range(6))
        )
        runs.append(jobs)
    ledger = tmp_path / "ledger"
    processes = [_run(jobs, ledger, tmp_path) for jobs in runs]
    for process in processes:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, out + err
    by_gpu: dict[str, list[tuple[float, float, str]]] = collections.defaultdict(list)
    for line in record.read_text().splitlines():
        gpus, start, end, name = line.split()
        assert "," not in gpus  # one GPU per job
        by_gpu[gpus].append((float(start), float(end), name))
    assert sum(map(len, by_gpu.values())) == 12
    assert set(by_gpu) <= {fake_uuid(0), fake_uuid(1)}
    for gpu, intervals in by_gpu.items():
        intervals.sort()
        for before, after in itertools.pairwise(intervals):
            assert after[0] >= before[1], f"{before[2]} and {after[2]} overlapped on {gpu}"
    assert {name[0] for intervals in by_gpu.values() for *_, name in intervals} == {"a", "b"}
    status = machine_status(ledger, provider=FakeGPUProvider(2))
    assert status.holders == ()
    assert status.waiters == ()


def test_fake_gpus_without_ledger_join_none(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("true\n")
    done = subprocess.run(
        [sys.executable, "-m", "gpupool", "run", str(jobs), "--fake-gpus", "1"],
        capture_output=True, text=True, timeout=120, env={**env(), "GPUPOOL_LEDGER": str(
            tmp_path / "would-be-ledger")}, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "would-be-ledger").exists()


def test_a_ledger_that_cannot_be_used_is_exit_2_and_nothing_runs(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("touch ran\n")
    (tmp_path / "file").write_text("not a directory")
    done = subprocess.run(
        [sys.executable, "-m", "gpupool", "run", str(jobs), "--fake-gpus", "1",
         "--ledger", str(tmp_path / "file")],
        capture_output=True, text=True, timeout=120, env=env(), cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2
    assert "cannot use the machine-wide ledger: the ledger path" in done.stderr
    assert not (tmp_path / "ran").exists()
