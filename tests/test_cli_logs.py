"""``gpupool logs``: a job's log found by key, name, line or key prefix, printed or followed.

Real ``gpupool run`` processes and real journals; the tmux mode's logs are in
tests/test_cli_tmux.py's runs too (the wrapper writes what direct mode writes).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from gpupool._cli.logs import _start
from tests.gpupool_command import finish, run_gpupool, started_gpupool
from tests.waiting import wait_for


@pytest.fixture
def finished_run(tmp_path: Path) -> Path:
    """A run of three jobs: one named, two not (the same command twice), one failing."""
    (tmp_path / "jobs.txt").write_text(
        "# a comment\n"
        "[name=first gpus=0] echo one; echo two\n"
        "[gpus=0] echo copy\n"
        "[gpus=0] echo copy\n"
        "[name=broken gpus=0 retries=1] echo attempt; exit 4\n"
    )
    run = run_gpupool("run", "jobs.txt", cwd=tmp_path)
    assert run.returncode == 1, run.stderr
    return tmp_path


def test_logs_prints_a_jobs_log_by_name(finished_run: Path) -> None:
    shown = run_gpupool("logs", "first", cwd=finished_run)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == "one\ntwo\n"


def test_logs_finds_a_job_by_its_line_number(finished_run: Path) -> None:
    shown = run_gpupool("logs", "2", "jobs.txt", cwd=finished_run)
    assert (shown.returncode, shown.stdout) == (0, "one\ntwo\n")


def test_logs_finds_a_job_by_a_unique_key_prefix_and_refuses_an_ambiguous_one(
    finished_run: Path,
) -> None:
    keys = sorted(
        p.stem.rpartition("_")[2] for p in (finished_run / "jobs.txt.logs").glob("echo-copy_*.log")
    )
    assert keys[0] + "~2" == keys[1]  # the second copy of the same command
    second = run_gpupool("logs", f"job-{keys[1]}", cwd=finished_run)
    assert (second.returncode, second.stdout) == (0, "copy\n")
    ambiguous = run_gpupool("logs", keys[0][:6], cwd=finished_run)
    assert ambiguous.returncode == 2
    assert "2 jobs have a key starting with" in ambiguous.stderr


def test_logs_shows_every_attempt_and_lines_keeps_the_last(finished_run: Path) -> None:
    shown = run_gpupool("logs", "broken", cwd=finished_run)
    assert (shown.returncode, shown.stdout) == (0, "attempt\nattempt\n")
    tail = run_gpupool("logs", "first", "--lines", "1", cwd=finished_run)
    assert tail.stdout == "two\n"


def test_an_unknown_job_is_one_clear_line_and_exit_2(finished_run: Path) -> None:
    shown = run_gpupool("logs", "nosuch", cwd=finished_run)
    assert shown.returncode == 2
    assert shown.stderr.startswith(
        "gpupool logs: error: no job 'nosuch' in jobs.txt.journal.sqlite"
    )
    assert shown.stdout == ""


def test_no_journal_is_one_clear_line_and_exit_2(tmp_path: Path) -> None:
    shown = run_gpupool("logs", "x", cwd=tmp_path)
    assert shown.returncode == 2
    assert "no journal here: give the jobs file" in shown.stderr
    missing = run_gpupool("logs", "x", "--journal", "nope.sqlite", cwd=tmp_path)
    assert missing.returncode == 2
    assert "no journal at 'nope.sqlite'" in missing.stderr


def test_logs_finds_the_log_from_another_directory(finished_run: Path) -> None:
    elsewhere = finished_run / "elsewhere"
    elsewhere.mkdir()
    shown = run_gpupool("logs", "first", "../jobs.txt", cwd=elsewhere)
    assert (shown.returncode, shown.stdout) == (0, "one\ntwo\n")


def test_follow_prints_a_running_jobs_output_and_ends_with_the_job(tmp_path: Path) -> None:
    (tmp_path / "jobs.txt").write_text(
        "[name=slow gpus=0] echo before; while [ ! -e go ]; do sleep 0.05; done; echo after\n"
    )
    with started_gpupool("run", "jobs.txt", cwd=tmp_path) as run:
        log = tmp_path / "jobs.txt.logs" / "slow.log"
        wait_for(lambda: log.exists() and log.read_text() == "before\n", "the job to start")
        with started_gpupool("logs", "slow", "--follow", cwd=tmp_path) as follow:
            (tmp_path / "go").touch()
            out, err = finish(follow)
        finish(run)
    assert follow.returncode == 0, err
    assert out == "before\nafter\n"


def test_follow_exits_1_when_the_job_fails(finished_run: Path) -> None:
    shown = run_gpupool("logs", "broken", "--follow", cwd=finished_run)
    assert shown.returncode == 1
    assert shown.stdout == "attempt\nattempt\n"
    assert "gpupool logs: job broken failed" in shown.stderr


@pytest.mark.parametrize("chunk", [1, 3, 1 << 16])
def test_lines_starts_at_the_last_n_lines_across_reads(
    monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    monkeypatch.setattr("gpupool._cli.logs._CHUNK", chunk)
    for text in [b"", b"a\n", b"a\nbb\nccc\n", b"a\nbb\nccc", b"\n\n\n"]:
        for lines in range(5):
            log = io.BytesIO(text)
            _start(log, lines)
            expected = b"".join(text.splitlines(keepends=True)[-lines:]) if lines else b""
            assert log.read() == expected, (text, lines)


def test_follow_of_a_job_whose_run_was_killed_stops_and_says_so(tmp_path: Path) -> None:
    (tmp_path / "jobs.txt").write_text("[name=left gpus=0] echo started; echo $$ > pid; sleep 60\n")
    try:
        with started_gpupool("run", "jobs.txt", cwd=tmp_path) as run:
            wait_for(
                lambda: (tmp_path / "pid").exists() and (tmp_path / "pid").read_text(), "the job"
            )
            run.kill()
            run.communicate(timeout=30)
            shown = run_gpupool("logs", "left", "--follow", cwd=tmp_path)
    finally:
        os.kill(int((tmp_path / "pid").read_text()), 9)
    assert shown.returncode == 1
    assert shown.stdout == "started\n"
    assert "job left is running but the run that owns its journal has gone" in shown.stderr
