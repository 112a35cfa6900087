"""The Hydra launcher plugin (docs/hydra.md), run as users run it: a real Hydra app
(tests/hydra_app/train.py) started with ``-m hydra/launcher=gpupool`` in a subprocess,
on fake GPUs.

Each job of the app appends a record (its lr, pid, CUDA_VISIBLE_DEVICES, start and
end times, output directory) to a file: that is what shows which jobs ran, on which
GPUs, and which of them ran at the same time.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.waiting import gone, wait_for

APP = Path(__file__).parent / "hydra_app"


def _run(
    script: str, *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(APP / script), *args],
        cwd=cwd,
        env={**os.environ, "HYDRA_FULL_ERROR": "0", **(env or {})},
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )


def _records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def _overlap(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a["start"] < b["end"] and b["start"] < a["end"]


def _sweep_args(tmp_path: Path, *more: str) -> list[str]:
    return [
        "-m",
        "hydra/launcher=gpupool",
        "hydra.launcher.fake_gpus=4",
        "hydra.launcher.gpus_per_job=2",
        "hydra.launcher.mem=8G",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        f"record={tmp_path / 'records.jsonl'}",
        *more,
    ]


def test_a_multirun_runs_jobs_at_once_on_their_own_gpus_and_resumes(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    records = tmp_path / "records.jsonl"
    args = _sweep_args(tmp_path, "work_s=2", "lr=0.1,0.01,0.001,0.5")

    first = _run("train.py", *args, cwd=tmp_path)

    # The failing job failed, as Hydra reports a failed job; the others all finished.
    assert first.returncode == 1, first.stderr
    assert "Error executing job with overrides" in first.stderr
    assert "DivergedError: loss diverged at lr=0.5" in first.stderr
    assert "Hydra plugins scanner" not in first.stderr  # the plugin imports cleanly
    ran = _records(records)
    assert sorted(r["lr"] for r in ran) == [0.001, 0.01, 0.1, 0.5]
    # Each job in its own process, with 2 GPUs of its own; two jobs at once on 4 GPUs.
    assert len({r["pid"] for r in ran}) == 4
    devices = {r["lr"]: set(r["cuda_visible_devices"].split(",")) for r in ran}
    assert all(len(d) == 2 and all(u.startswith("GPU-") for u in d) for d in devices.values())
    overlapping = [(a, b) for a, b in itertools.combinations(ran, 2) if _overlap(a, b)]
    assert overlapping, "no two jobs ran at the same time"
    for a, b in overlapping:
        assert not devices[a["lr"]] & devices[b["lr"]], (a, b)
    for r in ran:  # never three at once: the GPUs hold two jobs of 2
        assert sum(_overlap(r, other) for other in ran if other is not r) <= 2
        now = [o for o in ran if o is not r and _overlap(r, o)]
        assert not any(_overlap(a, b) for a, b in itertools.combinations(now, 2))

    # Hydra's outputs, where Hydra puts them.
    assert (sweep / "multirun.yaml").is_file()
    by_lr = {r["lr"]: Path(r["output_dir"]) for r in ran}
    assert sorted(p.name for p in by_lr.values()) == ["0", "1", "2", "3"]
    for lr, out in by_lr.items():
        assert out.parent == sweep
        for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
            assert (out / ".hydra" / name).is_file()
        assert f"lr={lr}" in (out / ".hydra" / "overrides.yaml").read_text()
    assert "DivergedError" in (by_lr[0.5] / "job.out").read_text()
    assert (sweep / "gpupool.journal.sqlite").is_file()
    finished_config = by_lr[0.1] / ".hydra" / "config.yaml"
    written = finished_config.stat().st_mtime_ns

    # The same multirun again, now that the failing job can succeed: only it runs.
    second = _run("train.py", *args, cwd=tmp_path, env={"HYDRA_APP_FAIL_AT": "none"})

    assert second.returncode == 0, second.stderr
    again = _records(records)[len(ran) :]
    assert [r["lr"] for r in again] == [0.5]
    assert Path(again[0]["output_dir"]) == by_lr[0.5]
    assert finished_config.stat().st_mtime_ns == written  # not rewritten
    assert second.stdout.count("finished in an earlier run") == 3

    # And once more: everything comes from the journal.
    third = _run("train.py", *args, cwd=tmp_path, env={"HYDRA_APP_FAIL_AT": "none"})

    assert third.returncode == 0, third.stderr
    assert len(_records(records)) == len(ran) + 1
    with sqlite3.connect(sweep / "gpupool.journal.sqlite") as db:
        statuses = sorted(status for (status,) in db.execute("SELECT status FROM tasks"))
    assert statuses == ["succeeded"] * 4


def _returns(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_job_returns_are_the_basic_launchers_also_from_the_journal(tmp_path: Path) -> None:
    sweeps = {name: tmp_path / name for name in ("basic", "gpupool")}
    common = ["work_s=0", f"record={tmp_path / 'records.jsonl'}", "lr=0.1,0.01"]

    basic = _run("sweep_returns.py", str(sweeps["basic"]), *common, cwd=tmp_path)
    ours = _run(
        "sweep_returns.py",
        str(sweeps["gpupool"]),
        "hydra/launcher=gpupool",
        "hydra.launcher.fake_gpus=1",
        *common,
        cwd=tmp_path,
    )
    rerun = _run(
        "sweep_returns.py",
        str(sweeps["gpupool"]),
        "hydra/launcher=gpupool",
        "hydra.launcher.fake_gpus=1",
        *common,
        cwd=tmp_path,
    )

    for done in (basic, ours, rerun):
        assert done.returncode == 0, done.stderr
    assert len(_records(tmp_path / "records.jsonl")) == 4  # the rerun ran nothing

    def relative(returns: list[dict[str, Any]], sweep: Path) -> list[dict[str, Any]]:
        for job_return in returns:
            job_return["output_dir"] = str(Path(job_return["output_dir"]).relative_to(sweep))
        return returns

    expected = relative(_returns(basic.stdout), sweeps["basic"])
    assert [r["return_value"] for r in expected] == [
        {"lr": 0.1, "loss": 0.9},
        {"lr": 0.01, "loss": 0.99},
    ]
    assert relative(_returns(ours.stdout), sweeps["gpupool"]) == expected
    assert relative(_returns(rerun.stdout), sweeps["gpupool"]) == expected


def test_a_job_whose_process_dies_fails_alone_with_the_end_of_its_output(
    tmp_path: Path,
) -> None:
    args = _sweep_args(tmp_path, "work_s=0", "exit_at_lr=0.2", "lr=0.1,0.2")

    done = _run("train.py", *args, cwd=tmp_path)

    assert done.returncode == 1
    assert "Error executing job with overrides" in done.stderr
    assert "exit code 7" in done.stderr
    assert "dying at lr=0.2" in done.stderr  # the end of its output, quoted
    # Both wrote their record (the dying one just before it died); the other completed.
    assert sorted(r["lr"] for r in _records(tmp_path / "records.jsonl")) == [0.1, 0.2]
    assert "lr=0.1: completed" in done.stdout


def test_a_return_value_with_no_json_form_reaches_hydra_but_its_job_runs_again(
    tmp_path: Path,
) -> None:
    args = _sweep_args(tmp_path, "work_s=0", "returns=set", "lr=0.1")

    first = _run("train.py", *args, cwd=tmp_path)
    second = _run("train.py", *args, cwd=tmp_path)

    for done in (first, second):
        assert done.returncode == 0, done.stderr
        assert "has no JSON form, so the journal cannot keep it" in done.stdout
    assert [r["lr"] for r in _records(tmp_path / "records.jsonl")] == [0.1, 0.1]


def test_a_return_value_that_cannot_be_pickled_fails_its_job_saying_why(tmp_path: Path) -> None:
    done = _run(
        "train.py", *_sweep_args(tmp_path, "work_s=0", "returns=lock", "lr=0.1"), cwd=tmp_path
    )

    assert done.returncode == 1
    assert "Error executing job with overrides" in done.stderr
    assert "the job's return value, a dict, cannot be pickled" in done.stderr


def test_sigterm_ends_the_running_jobs_and_a_rerun_runs_them(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    args = _sweep_args(tmp_path, f"pid_dir={pids}", "lr=0.1,0.01")
    launcher = subprocess.Popen(
        [sys.executable, str(APP / "train.py"), *args],
        cwd=tmp_path,
        env={**os.environ, "HYDRA_APP_WORK_S": "60"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(lambda: len(list(pids.iterdir())) >= 2, "the jobs to start", timeout=60)
        jobs = [int(p.read_text()) for p in pids.iterdir()]
        assert len(jobs) == 2, "the jobs did not start"

        launcher.send_signal(signal.SIGTERM)
        out, _ = launcher.communicate(timeout=30)
    finally:
        launcher.kill()

    assert launcher.returncode == 128 + signal.SIGTERM, out
    assert "stopped by SIGTERM" in out
    assert all(gone(pid) for pid in jobs)
    assert _records(tmp_path / "records.jsonl") == []  # neither job got to its end

    rerun = _run("train.py", *args, cwd=tmp_path, env={"HYDRA_APP_WORK_S": "0"})

    assert rerun.returncode == 0, rerun.stderr
    assert sorted(r["lr"] for r in _records(tmp_path / "records.jsonl")) == [0.01, 0.1]


def test_two_sweeps_on_one_ledger_never_share_a_gpu(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    records = tmp_path / "records.jsonl"

    def start(name: str, lrs: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [
                sys.executable,
                str(APP / "train.py"),
                "-m",
                "hydra/launcher=gpupool",
                "hydra.launcher.fake_gpus=2",
                f"hydra.launcher.ledger={ledger}",
                f"hydra.sweep.dir={tmp_path / name}",
                f"record={records}",
                "work_s=1.5",
                f"lr={lrs}",
            ],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    sweeps = [start("a", "0.1,0.2"), start("b", "0.3,0.4")]
    outputs = [sweep.communicate(timeout=100)[0] for sweep in sweeps]

    for sweep, out in zip(sweeps, outputs, strict=True):
        assert sweep.returncode == 0, out
    ran = _records(records)
    assert sorted(r["lr"] for r in ran) == [0.1, 0.2, 0.3, 0.4]
    for a, b in itertools.combinations(ran, 2):
        if _overlap(a, b):  # the two pretend GPUs are one machine's: never both holders
            assert a["cuda_visible_devices"] != b["cuda_visible_devices"], (a, b)
    for r in ran:  # never three jobs at once on two GPUs, across both sweeps
        now = [o for o in ran if o is not r and _overlap(r, o)]
        assert not any(_overlap(a, b) for a, b in itertools.combinations(now, 2))


def test_cpu_jobs_see_no_gpu_and_retries_run_a_failed_job_again(tmp_path: Path) -> None:
    # No fake_gpus and no NVML on the test machine: gpus_per_job=0 opens no GPU driver.
    done = _run(
        "train.py",
        "-m",
        "hydra/launcher=gpupool",
        "hydra.launcher.gpus_per_job=0",
        "hydra.launcher.retries=1",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        f"record={tmp_path / 'records.jsonl'}",
        "work_s=0",
        "lr=0.1,0.5",
        cwd=tmp_path,
    )

    assert done.returncode == 1, done.stderr
    assert "lr=0.5: failed (DivergedError: loss diverged at lr=0.5), retrying" in done.stdout
    ran = _records(tmp_path / "records.jsonl")
    assert sorted(r["lr"] for r in ran) == [0.1, 0.5, 0.5]
    assert {r["cuda_visible_devices"] for r in ran} == {""}


def test_with_retry_failed_false_a_rerun_reports_the_earlier_failure(tmp_path: Path) -> None:
    args = [
        "-m",
        "hydra/launcher=gpupool",
        "hydra.launcher.gpus_per_job=0",
        "hydra.launcher.retry_failed=false",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        f"record={tmp_path / 'records.jsonl'}",
        "work_s=0",
        "lr=0.1,0.5",
    ]

    first = _run("train.py", *args, cwd=tmp_path)
    second = _run("train.py", *args, cwd=tmp_path)

    assert first.returncode == second.returncode == 1
    assert "EarlierJobFailure" in second.stderr
    assert "failed in an earlier run of this sweep: DivergedError: loss diverged" in second.stderr
    assert len(_records(tmp_path / "records.jsonl")) == 2  # the rerun ran nothing


def test_without_gpus_the_error_says_how_to_use_fake_ones(tmp_path: Path) -> None:
    # NVML made unusable on any machine: a pynvml that cannot be imported comes first.
    hidden = tmp_path / "no_nvml"
    hidden.mkdir()
    (hidden / "pynvml.py").write_text('raise ImportError("pynvml hidden by the test")\n')
    args = ["-m", "hydra/launcher=gpupool", f"hydra.sweep.dir={tmp_path / 'sweep'}", "lr=0.1"]

    done = _run(
        "train.py",
        *args,
        f"record={tmp_path / 'records.jsonl'}",
        cwd=tmp_path,
        env={"PYTHONPATH": str(hidden)},
    )

    assert done.returncode == 1
    assert "ProviderError" in done.stderr
    assert "hydra.launcher.fake_gpus=N pretends there are N GPUs" in done.stderr
    assert _records(tmp_path / "records.jsonl") == []
