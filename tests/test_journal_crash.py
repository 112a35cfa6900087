"""Crash recovery with real ``kill -9``: nothing finished twice, nothing lost.

A worker process (tests/scripts/journal_crash_worker.py) runs 50 short jobs on
a journal; each job appends its runner's pid to a per-job file halfway
through. The test SIGKILLs the worker at random moments, restarts it, and
afterwards checks the journal against those files.
"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _sql(path: Path) -> contextlib.closing[sqlite3.Connection]:
    """An autocommit connection that is closed (not just committed) on exit."""
    return contextlib.closing(sqlite3.connect(path, isolation_level=None))


WORKER = ROOT / "tests" / "scripts" / "journal_crash_worker.py"


def _start(journal: Path, out: Path, n_jobs: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(journal), str(out), str(n_jobs)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _crash_and_recover(tmp_path: Path, *, n_jobs: int, kills: int, seed: int) -> None:
    rng = random.Random(seed)
    journal, out = tmp_path / "crash.sqlite", tmp_path / "out"
    out.mkdir()
    killed_pids: set[int] = set()
    for _ in range(kills):
        worker = _start(journal, out, n_jobs)
        # Kill before it owns the journal now and then, mostly while jobs run.
        if rng.random() < 0.8:
            assert worker.stdout is not None
            assert worker.stdout.readline() == "ready\n", worker.communicate()[1]
        time.sleep(rng.uniform(0.0, 0.25))
        worker.kill()
        _, err = worker.communicate()
        if worker.returncode == 0:  # finished before the kill landed
            break
        assert worker.returncode == -9, err
        killed_pids.add(worker.pid)
    final = _start(journal, out, n_jobs)
    _, err = final.communicate(timeout=60)
    assert final.returncode == 0, err

    with _sql(journal) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        tasks = {
            key: (status, starts, interrupted)
            for key, status, starts, interrupted in conn.execute(
                "SELECT key, status, starts, interrupted FROM tasks"
            )
        }
        events = conn.execute("SELECT key, status, pid, note FROM events ORDER BY seq").fetchall()
        owner = conn.execute("SELECT count(*) FROM gpupool_owner").fetchone()[0]
    assert owner == 0  # the last run closed cleanly

    keys = [f"job-{i:03d}" for i in range(n_jobs)]
    assert sorted(tasks) == sorted(keys)
    finished = Counter(key for key, status, _, _ in events if status == "succeeded")
    assert finished == dict.fromkeys(keys, 1), "every job finishes exactly once in the journal"
    for key in keys:
        status, starts, interrupted = tasks[key]
        assert status == "succeeded"
        ran = (out / f"{key}.txt").read_text().split()
        mine = [(s, pid, note) for k, s, pid, note in events if k == key]
        running = [pid for s, pid, _ in mine if s == "running"]
        cut_short = [n for s, _, n in mine if n and n.startswith("interrupted")]
        assert len(running) == starts == 1 + interrupted == 1 + len(cut_short), mine
        # The body ran at most once per start, and at least in the start that finished.
        assert 1 <= len(ran) <= starts, (key, ran, mine)
        if len(ran) > 1:
            # ... so it ran twice only because a run was killed while it was RUNNING.
            assert all(int(pid) in killed_pids for pid in ran[:-1]), (key, ran, killed_pids)
            assert interrupted >= len(ran) - 1
        # Every start but the last was cut short by a kill of the process running it.
        assert set(running[:-1]) <= killed_pids, (key, mine)


def test_crash_recovery_with_kill_9(tmp_path: Path) -> None:
    seed = random.randrange(2**32)
    print(f"seed {seed}")  # shown on failure, to replay
    _crash_and_recover(tmp_path, n_jobs=50, kills=20, seed=seed)


@pytest.mark.soak
@pytest.mark.timeout(1200)
def test_crash_recovery_with_kill_9_soak(tmp_path: Path) -> None:
    seed = random.randrange(2**32)
    print(f"seed {seed}")
    _crash_and_recover(tmp_path, n_jobs=300, kills=300, seed=seed)
