"""``gpupool run`` with shared jobs: memory caps in the job's environment, and a
job that runs out of memory retried with more (docs/memory.md)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

from tests.gpupool_command import command_env, run_gpupool

# Exits like a PyTorch job out of memory unless it was given 16000 MB or more.
NEEDS_16G = (
    'test "${GPUPOOL_RESERVED_MB:-0}" -ge 16000 || '
    '{ echo "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB" >&2; exit 1; }; '
    'echo "ok $GPUPOOL_RESERVED_MB $XLA_PYTHON_CLIENT_MEM_FRACTION $XLA_PYTHON_CLIENT_PREALLOCATE"'
)


def _gpupool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = command_env()
    env.pop("GPUPOOL_RESERVED_MB", None)
    return run_gpupool(*args, cwd=cwd, env=env, timeout=120)


def test_a_shared_job_out_of_memory_grows_across_retries(tmp_path: Path) -> None:
    (tmp_path / "jobs.txt").write_text(
        f"[mem=2G shared=yes retries=3 name=grow] {NEEDS_16G}\n"
        "[mem=2G shared=yes retries=3 name=never] "
        "echo reserved=${GPUPOOL_RESERVED_MB:-none}; echo 'CUDA out of memory' >&2; exit 1\n"
    )
    run = _gpupool("run", "jobs.txt", "--fake-gpus", "1", cwd=tmp_path)
    assert run.returncode == 1, run.stderr
    log = (tmp_path / "jobs.txt.logs" / "grow.log").read_text()
    # 2G, 8G, then 16G (max(2m, m + 24G/4)): the third attempt fits. 16384 / 24576.
    assert log.count("CUDA out of memory") == 2
    assert "ok 16384 0.6666 false" in log
    summary = " ".join(run.stdout.split())
    assert "exit code 0 (mem=16G after OOM)" in summary
    # Never fits as shared: 2G, 8G, 16G, then a GPU of its own (and still fails).
    assert "(exclusive after OOM)" in summary
    with sqlite3.connect(tmp_path / "jobs.txt.journal.sqlite") as conn:
        learned = dict(conn.execute("SELECT key, learned_resources FROM tasks"))
    assert json.loads(learned["grow"]) == {"exclusive": False, "min_memory_mb": 16384}
    assert json.loads(learned["never"]) == {"exclusive": True, "min_memory_mb": 16384}

    show = _gpupool("journal", "show", "jobs.txt.journal.sqlite", cwd=tmp_path)
    assert show.returncode == 0, show.stderr
    text = " ".join(show.stdout.split())
    assert "memory learned from out-of-memory retries" in text
    assert "16384 MB shared" in text

    never_log = tmp_path / "jobs.txt.logs" / "never.log"
    first = never_log.read_text()
    assert first.split() == [
        "reserved=2048", "CUDA", "out", "of", "memory",
        "reserved=8192", "CUDA", "out", "of", "memory",
        "reserved=16384", "CUDA", "out", "of", "memory",
        "reserved=none", "CUDA", "out", "of", "memory",
    ]  # fmt: skip

    # A second run of the failed job starts where the first left it: a whole GPU.
    again = _gpupool("run", "jobs.txt", "--fake-gpus", "1", "--retry-failed", cwd=tmp_path)
    assert again.returncode == 1
    second = never_log.read_text()[len(first) :]
    assert second.split().count("reserved=none") == 4
    assert "reserved=2048" not in second
    assert "(exclusive after OOM)" in " ".join(again.stdout.split())


def test_a_shared_line_needs_memory(tmp_path: Path) -> None:
    (tmp_path / "jobs.txt").write_text("[shared=yes] echo hi\n[mem=1G shared=maybe] echo hi\n")
    run = _gpupool("run", "jobs.txt", "--fake-gpus", "1", cwd=tmp_path)
    assert run.returncode == 2
    assert "jobs.txt:1: shared=yes needs mem=SIZE" in run.stderr
    assert "jobs.txt:2: shared must be yes or no, got 'maybe'" in run.stderr
