"""``gpupool journal show/export/unlock`` on real journal files."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from gpupool import Journal, TaskResult, TaskStatus
from gpupool._cli_journal import main

ROOT = Path(__file__).resolve().parents[1]


def _sql(path: Path) -> contextlib.closing[sqlite3.Connection]:
    """An autocommit connection that is closed (not just committed) on exit."""
    return contextlib.closing(sqlite3.connect(path, isolation_level=None))


def _fill(journal: Journal) -> None:
    for i in range(4):
        key = f"t{i}"
        assert journal.claim(key, fn="sweep.train", item={"lr": i / 10}) is None
        journal.record(key, TaskStatus.RUNNING, attempt=1, gpu_indices=(i % 2,))
        if i == 2:
            journal.finish(
                TaskResult(
                    key,
                    TaskStatus.FAILED,
                    error="ValueError: diverged\nat step 9",
                    traceback="Traceback (most recent call last):\n",
                    attempts=2,
                )
            )
        elif i < 2:
            journal.finish(
                TaskResult(
                    key,
                    TaskStatus.SUCCEEDED,
                    value={"loss": i / 4},
                    attempts=1,
                    gpu_indices=(i % 2,),
                    duration_s=1.5,
                )
            )
    # t3 stays RUNNING


@pytest.fixture
def path(tmp_path: Path) -> Path:
    path = tmp_path / "sweep.sqlite"
    with Journal(path) as journal:
        _fill(journal)
    return path


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The journal command in a fresh process, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "gpupool", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "120"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_show_counts_and_failures(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["journal", "show", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"journal {path}: 4 tasks, not in use" in out
    lines = [line.split() for line in out.splitlines()]
    assert ["succeeded", "2"] in lines
    assert ["failed", "1"] in lines
    assert ["running", "1"] in lines
    assert ["t2", "failed", "2", "ValueError:", "diverged"] in lines
    assert "at step 9" not in out  # first line of the error only
    assert "cut short" not in out


def test_show_counts_tasks_cut_short_by_crashes(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with _sql(path) as conn:
        conn.execute("UPDATE tasks SET interrupted = 2 WHERE key = 't0'")
        conn.execute("UPDATE tasks SET interrupted = 1 WHERE key = 't1'")
    assert main(["journal", "show", str(path)]) == 0
    out = capsys.readouterr().out
    assert "2 task(s) were cut short by a crash and queued again (3 interruption(s) in all)" in out


def test_show_while_a_runner_owns_the_journal(tmp_path: Path) -> None:
    path = tmp_path / "live.sqlite"
    with Journal(path) as journal:
        _fill(journal)
        result = _cli("journal", "show", str(path))
        assert result.returncode == 0, result.stderr
        assert f"owned by pid {os.getpid()} on " in result.stdout
        assert "(running)" in result.stdout
        # Reading did not disturb the owner.
        assert journal.claim("t9") is None


def test_export_jsonl(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["journal", "export", str(path)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["key"] for r in rows] == ["t0", "t1", "t2", "t3"]
    assert rows[1]["value"] == {"loss": 0.25}
    assert rows[1]["item"] == {"lr": 0.1}
    assert rows[1]["gpu_indices"] == [1]
    assert rows[2]["error"] == "ValueError: diverged\nat step 9"
    assert rows[3]["status"] == "running"
    assert rows[0]["finished_at"].endswith("+00:00")


def test_export_csv_to_file_with_status_filter(path: Path, tmp_path: Path) -> None:
    out = tmp_path / "results.csv"
    args = ["journal", "export", str(path), "--format", "csv", "-o", str(out)]
    assert main([*args, "--status", "succeeded", "--status", "failed"]) == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [(r["key"], r["status"]) for r in rows] == [
        ("t0", "succeeded"),
        ("t1", "succeeded"),
        ("t2", "failed"),
    ]
    assert json.loads(rows[1]["value"]) == {"loss": 0.25}
    assert rows[2]["value"] == ""
    assert rows[2]["error"] == "ValueError: diverged\nat step 9"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv", "sweep.sqlite"]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", "no journal at"),
        ("text", "is not a gpupool journal (not an SQLite database)"),
        ("empty", "is an empty file, not a gpupool journal"),
    ],
)
def test_bad_journal_file_is_one_line_and_exit_2(tmp_path: Path, setup: str, message: str) -> None:
    path = tmp_path / "j.sqlite"
    if setup == "text":
        path.write_text("hello\n")
    elif setup == "empty":
        path.write_bytes(b"")
    for command in ("show", "export"):
        result = _cli("journal", command, str(path))
        assert result.returncode == 2
        assert result.stdout == ""
        assert result.stderr.count("\n") == 1
        assert result.stderr.startswith("gpupool: error: ")
        assert message in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == (
        [] if setup == "missing" else ["j.sqlite"]
    )


def test_export_into_missing_directory_is_exit_2_and_writes_nothing(
    path: Path, tmp_path: Path
) -> None:
    result = _cli("journal", "export", str(path), "-o", str(tmp_path / "no" / "out.jsonl"))
    assert result.returncode == 2
    assert result.stderr == "gpupool: error: No such file or directory\n"
    assert not (tmp_path / "no").exists()


def test_usage_errors_exit_2(path: Path) -> None:
    result = _cli("journal", "export", str(path), "--format", "xml")
    assert result.returncode == 2
    assert "invalid choice: 'xml'" in result.stderr


def test_unlock(path: Path, tmp_path: Path) -> None:
    with _sql(path) as conn:
        conn.execute("INSERT INTO gpupool_owner VALUES (1, 4242, 1, 'b', 'elsewhere', 0)")
    result = _cli("journal", "unlock", str(path))
    assert result.returncode == 0, result.stderr
    assert "owner cleared" in result.stdout
    Journal(path).close()  # opens again

    with Journal(path):
        result = _cli("journal", "unlock", str(path))
        assert result.returncode == 2
        assert "which is alive; stop it instead of unlocking" in result.stderr
