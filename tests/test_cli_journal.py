"""``gpupool journal show/export/unlock`` on real journal files."""

from __future__ import annotations

import collections
import contextlib
import csv
import io
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from gpupool import Journal, TaskResult, TaskStatus
from gpupool._cli import main as cli
from gpupool._cli.journal import main

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
    assert ["t2", "failed", "2", '{"lr":0.2}', "ValueError:", "diverged"] in lines
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


def _big_journal(path: Path, tasks: int = 300) -> Path:
    """A closed journal of ``tasks`` finished tasks, several pages long."""
    with Journal(path) as journal:
        for i in range(tasks):
            key = f"task-{i:04d}"
            item = {"line": i, "command": "x" * 40}
            assert journal.claim(key, fn="sweep.train", item=item) is None
            journal.record(key, TaskStatus.RUNNING, attempt=1, gpu_indices=(i % 4,))
            status = TaskStatus.FAILED if i % 5 == 0 else TaskStatus.SUCCEEDED
            journal.finish(
                TaskResult(key, status, value={"loss": i}, error="E" if i % 5 == 0 else None)
            )
    return path


def _damage(path: Path, rng: random.Random, kind: int) -> str:
    """Damage the journal at ``path`` in one of several ways; say how."""
    size = path.stat().st_size
    key = f"task-{rng.randrange(300):04d}"
    if kind == 0:  # a row whose JSON does not parse
        column = rng.choice(["item", "value", "gpu_indices"])
        text = rng.choice(["{", "nope", "[1,", '{"a":}', "\x00"])
        with _sql(path) as conn:
            conn.execute(f"UPDATE tasks SET {column} = ? WHERE key = ?", (text, key))
        return f"{column} of {key} = {text!r}"
    if kind == 1:  # values of the wrong type, as a damaged page can give
        column, value = rng.choice(
            [
                ("status", "bogus"),
                ("key", b"\x01\x02"),
                ("attempts", "many"),
                ("gpu_indices", "3"),
                ("gpu_indices", '["a"]'),
                ("error", 5),
                ("created_at", "yesterday"),
                ("value", b"\xff"),
            ]
        )
        with _sql(path) as conn:
            conn.execute("PRAGMA ignore_check_constraints = 1")
            conn.execute(f"UPDATE tasks SET {column} = ? WHERE key = ?", (value, key))
        return f"{column} of {key} = {value!r}"
    if kind == 2:  # random bytes over part of a page
        page = rng.randrange(1, size // 4096)
        offset = page * 4096 + rng.randrange(4096 - 64)
        with path.open("r+b") as handle:
            handle.seek(offset)
            handle.write(rng.randbytes(rng.randrange(8, 64)))
        return f"random bytes at {offset}"
    if kind == 3:  # a page of zeros or of noise
        page = rng.randrange(0, size // 4096)
        with path.open("r+b") as handle:
            handle.seek(page * 4096)
            handle.write(rng.choice([bytes(4096), rng.randbytes(4096)]))
        return f"page {page} overwritten"
    length = rng.randrange(0, size)  # cut short
    with path.open("r+b") as handle:
        handle.truncate(length)
    return f"truncated to {length} bytes"


def test_a_damaged_journal_gives_one_error_line_and_exit_2_never_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Regression: invalid JSON in a row gave json.decoder.JSONDecodeError, a
    # damaged page sqlite3.DatabaseError, each as a traceback with exit 1.
    base = _big_journal(tmp_path / "base.sqlite")
    rng = random.Random(20261201)
    outcomes: collections.Counter[str] = collections.Counter()
    for n in range(35):
        path = tmp_path / f"damaged-{n}.sqlite"
        shutil.copyfile(base, path)
        how = _damage(path, rng, n % 5)
        for command in ("show", "export"):
            code = cli.main(["journal", command, str(path)])
            err = capsys.readouterr().err
            if code == 0:
                assert err == "", (how, command, err)
            else:
                assert code == 2, (how, command, code, err)
                assert err.count("\n") == 1, (how, command, err)
                assert err.startswith("gpupool: error: "), (how, command, err)
            outcomes[f"{command} exit {code}"] += 1
    # The damages were real: most of them are found.
    assert outcomes["show exit 2"] >= 15, outcomes
    assert outcomes["export exit 2"] >= 15, outcomes


@pytest.mark.parametrize("damage", ["invalid JSON in a row", "a damaged page"])
def test_a_damaged_journal_in_a_real_process(tmp_path: Path, damage: str) -> None:
    path = _big_journal(tmp_path / "j.sqlite")
    if damage == "invalid JSON in a row":
        with _sql(path) as conn:
            conn.execute("UPDATE tasks SET value = '{' WHERE key = 'task-0007'")
        expected = "gpupool: error: the journal's row for task 'task-0007' is damaged"
    else:
        with _sql(path) as conn:
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'tasks'")
            (page,) = root.fetchone()
        with path.open("r+b") as handle:
            handle.seek((page - 1) * page_size)  # the root page of the tasks table
            handle.write(b"\xa5" * page_size)
        expected = "gpupool: error: cannot read journal"
    for command in ("show", "export"):
        result = _cli("journal", command, str(path))
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1, result.stderr
        assert result.stderr.startswith(expected), result.stderr


def test_export_into_a_pipe_closed_early_is_a_normal_end(tmp_path: Path) -> None:
    # Regression: `gpupool journal export ... | head -1` printed
    # "gpupool: error: Broken pipe" and exited 2.
    path = _big_journal(tmp_path / "j.sqlite", tasks=1500)  # far more than a pipe holds
    for command in ("export", "show"):
        export = subprocess.Popen(
            [sys.executable, "-m", "gpupool", "journal", command, str(path)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert export.stdout is not None
        assert export.stdout.readline()  # `head -1`
        export.stdout.close()
        _, err = export.communicate(timeout=60)
        assert export.returncode == 0, err
        assert err == b""


def test_a_cli_run_journal_tells_each_jobs_line_command_and_log(tmp_path: Path) -> None:
    # Regression: the journal held no command (`"item": null` in the export) and
    # `journal show` listed keys only, so a failure could not be traced to its line.
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("# a sweep\necho fine\n\n[gpus=0] echo '[b]broken' >&2; exit 3\n")
    run = _cli("run", str(jobs), "--gpus", "0")
    assert run.returncode == 1, run.stderr
    journal = str(tmp_path / "jobs.txt.journal.sqlite")
    export = _cli("journal", "export", journal)
    assert export.returncode == 0, export.stderr
    items = [json.loads(line)["item"] for line in export.stdout.splitlines()]
    logs = tmp_path / "jobs.txt.logs"
    assert [(i["line"], i["command"], i["file"]) for i in items] == [
        (2, "echo fine", str(jobs)),
        (4, "echo '[b]broken' >&2; exit 3", str(jobs)),
    ]
    assert Path(items[1]["log"]).parent == logs
    assert Path(items[1]["log"]).name.startswith("echo-b-broken-2-exit-3_")
    assert Path(items[1]["log"]).read_text() == "[b]broken\n"
    # The failure's progress line names its log (and shows the command as written).
    assert (
        f"failed line 4: echo '[b]broken' >&2; exit 3 (exit code 3; log: {items[1]['log']})"
        in run.stderr
    )
    show = _cli("journal", "show", journal)
    assert "line 4: echo '[b]broken' >&2; exit 3" in show.stdout
    # The summary names the log (folded, maybe, on a narrow terminal).
    assert Path(items[1]["log"]).name in "".join(run.stdout.split())
