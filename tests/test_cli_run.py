"""``gpupool run`` and ``gpupool demo`` end to end: real CLI processes, real jobs, real files."""

from __future__ import annotations

import collections
import io
import json
import os
import pty
import random
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import attrs
import pytest
from rich.console import Console

from gpupool._cli.jobs_file import parse_jobs
from gpupool._cli.progress import JobsProgress
from gpupool._cli.run import RunOptions, run_jobs
from gpupool._core.results import TaskResult, TaskStatus
from gpupool._journal.store import Journal
from gpupool._system.procfs import read_stat
from gpupool.providers.fake import fake_uuid
from tests.gpupool_command import command_env, run_gpupool, start_gpupool, started_gpupool
from tests.waiting import wait_for

# Each job appends "start" and "end" to a file named after its key, so a test
# can tell how often each job ran and whether it finished.
MARK = 'echo start >> "marks/$GPUPOOL_JOB_KEY"; {body}; echo end >> "marks/$GPUPOOL_JOB_KEY"'


def _marks(tmp_path: Path) -> dict[str, list[str]]:
    marks = tmp_path / "marks"
    if not marks.is_dir():
        return {}
    return {p.name: p.read_text().split() for p in marks.iterdir()}


def _recorded_groups(journal: Path) -> int:
    conn = sqlite3.connect(journal)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM process_groups").fetchone()[0])
    except sqlite3.OperationalError:  # created but no schema yet
        return 0
    finally:
        conn.close()


def _statuses(journal: Path) -> dict[str, str]:
    if not journal.exists():
        return {}
    conn = sqlite3.connect(journal)
    try:
        return dict(conn.execute("SELECT key, status FROM tasks").fetchall())
    except sqlite3.OperationalError:  # created but no schema yet
        return {}
    finally:
        conn.close()


def _jobs_file(tmp_path: Path, text: str) -> Path:
    (tmp_path / "marks").mkdir(exist_ok=True)
    path = tmp_path / "jobs.txt"
    path.write_text(text)
    return path


def test_a_failing_job_fails_the_run_and_the_others_still_run(tmp_path: Path) -> None:
    _jobs_file(
        tmp_path,
        "# two GPUs each see their own device\n"
        'echo "$CUDA_VISIBLE_DEVICES"\n'
        '[gpus=2] echo "$CUDA_VISIBLE_DEVICES $CUDA_DEVICE_ORDER"\n'
        "[gpus=0 name=broken] echo oops [$CUDA_VISIBLE_DEVICES] >&2; exit 3\n",
    )
    run = run_gpupool("run", "jobs.txt", "--fake-gpus", "3", cwd=tmp_path)
    assert run.returncode == 1, run.stderr
    assert "2 succeeded, 1 failed" in run.stdout
    assert "exit code 3" in run.stdout
    logs = tmp_path / "jobs.txt.logs"
    contents = sorted(p.read_text() for p in logs.iterdir())
    assert "oops []\n" in contents  # a CPU-only job sees no GPU
    one_gpu = [c for c in contents if c.count("GPU-") == 1]
    two_gpus = [c for c in contents if c.count("GPU-") == 2]
    assert len(one_gpu) == len(two_gpus) == 1
    assert one_gpu[0].strip() in {fake_uuid(i) for i in range(3)}
    assert two_gpus[0].strip().endswith(" PCI_BUS_ID")
    statuses = _statuses(tmp_path / "jobs.txt.journal.sqlite")
    assert sorted(statuses.values()) == ["failed", "succeeded", "succeeded"]
    assert statuses["broken"] == "failed"


def test_a_successful_run_exits_0_and_a_second_run_runs_nothing(tmp_path: Path) -> None:
    _jobs_file(
        tmp_path,
        "\n".join(MARK.format(body=f"echo job {i}") for i in range(3)) + "\n",
    )
    first = run_gpupool("run", "jobs.txt", "--fake-gpus", "2", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "3 succeeded, 0 failed" in first.stdout
    again = run_gpupool("run", "jobs.txt", "--fake-gpus", "2", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "exit code 0 (earlier run)" in again.stdout
    assert all(marks == ["start", "end"] for marks in _marks(tmp_path).values())
    assert len(_marks(tmp_path)) == 3


def test_failed_jobs_run_again_only_with_retry_failed(tmp_path: Path) -> None:
    _jobs_file(tmp_path, MARK.format(body="exit 1") + "\n" + MARK.format(body="true") + "\n")
    assert run_gpupool("run", "jobs.txt", "--gpus", "0", cwd=tmp_path).returncode == 1
    second = run_gpupool("run", "jobs.txt", "--gpus", "0", cwd=tmp_path)
    assert second.returncode == 1
    assert "add --retry-failed" in second.stdout
    assert sorted(len(m) for m in _marks(tmp_path).values()) == [1, 2]  # failed: start only
    third = run_gpupool("run", "jobs.txt", "--gpus", "0", "--retry-failed", cwd=tmp_path)
    assert third.returncode == 1
    assert sorted(len(m) for m in _marks(tmp_path).values()) == [2, 2]  # failed one ran again


def test_resume_after_kill_9_runs_no_finished_job_again(tmp_path: Path) -> None:
    count = 8
    _jobs_file(
        tmp_path,
        "\n".join(MARK.format(body=f"sleep 0.4; echo {i}") for i in range(count)) + "\n",
    )
    journal = tmp_path / "jobs.txt.journal.sqlite"
    runner = start_gpupool("run", "jobs.txt", "--fake-gpus", "2", "--grace", "1", cwd=tmp_path)
    try:
        wait_for(
            lambda: list(_statuses(journal).values()).count("succeeded") >= 2,
            "two jobs to finish",
        )
        runner.send_signal(signal.SIGKILL)
    finally:
        runner.wait(timeout=30)
        assert runner.stdout is not None
        assert runner.stderr is not None
        runner.stdout.close()
        runner.stderr.close()
    finished_at_kill = {k for k, s in _statuses(journal).items() if s == "succeeded"}
    running_at_kill = {k for k, s in _statuses(journal).items() if s == "running"}
    assert finished_at_kill

    resumed = run_gpupool("run", "jobs.txt", "--fake-gpus", "2", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{count} succeeded, 0 failed" in resumed.stdout
    marks = _marks(tmp_path)
    assert len(marks) == count
    for key, lines in marks.items():
        starts = lines.count("start")
        if key in finished_at_kill:
            assert starts == 1, f"{key} finished before the kill but ran again"
        elif key not in running_at_kill:
            assert starts == 1, f"{key} was only queued at the kill but ran {starts} times"
        assert "end" in lines
    with sqlite3.connect(journal) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("SELECT COUNT(*) FROM process_groups").fetchone() == (0,)


def test_a_restarted_run_kills_the_jobs_a_killed_run_left_behind(tmp_path: Path) -> None:
    # Runs long the first time only; the re-run after the restart is quick.
    _jobs_file(
        tmp_path,
        "[gpus=0] if [ -e marks/once ]; then exit 0; fi; touch marks/once; "
        "echo $$ > marks/pid; sleep 60\n",
    )
    runner = start_gpupool("run", "jobs.txt", cwd=tmp_path)
    try:
        pid_file = tmp_path / "marks" / "pid"
        wait_for(lambda: pid_file.exists() and pid_file.read_text().strip() != "", "the job")
        # The job can write its pid before the runner has committed its group.
        wait_for(lambda: _recorded_groups(tmp_path / "jobs.txt.journal.sqlite") > 0, "the group")
        runner.send_signal(signal.SIGKILL)
    finally:
        runner.communicate(timeout=30)
    orphan = int(pid_file.read_text())
    assert _is_alive(orphan)  # kill -9 gave gpupool no chance to end it
    restarted = run_gpupool("run", "jobs.txt", cwd=tmp_path)
    assert restarted.returncode == 0, restarted.stderr
    assert "killed 1 leftover process group(s) of an earlier run that died" in restarted.stderr
    wait_for(lambda: not _is_alive(orphan), "the orphan to be gone", timeout=5)


def test_watch_picks_up_an_appended_line(tmp_path: Path) -> None:
    jobs = _jobs_file(tmp_path, MARK.format(body="echo first") + "\n")
    with started_gpupool("run", "jobs.txt", "--fake-gpus", "1", "--watch", cwd=tmp_path) as runner:
        wait_for(
            lambda: (
                len(_marks(tmp_path)) == 1 and all("end" in m for m in _marks(tmp_path).values())
            ),
            "the first job",
        )
        with jobs.open("a") as handle:
            handle.write("# appended while running\n" + MARK.format(body="echo second") + "\n")
        journal = tmp_path / "jobs.txt.journal.sqlite"
        wait_for(
            lambda: list(_statuses(journal).values()) == ["succeeded", "succeeded"],
            "the appended job to finish",
        )
        runner.send_signal(signal.SIGINT)
        out, err = runner.communicate(timeout=30)
    assert runner.returncode == 0, err
    assert "2 succeeded, 0 failed" in out
    assert "line 3" in err  # the appended job, reported with its line number


def test_ctrl_c_ends_running_jobs_and_journals_them_as_cancelled(tmp_path: Path) -> None:
    _jobs_file(tmp_path, "[gpus=0] trap '' TERM; echo $$ > marks/pid; sleep 60\n")
    with started_gpupool("run", "jobs.txt", "--grace", "0.5", cwd=tmp_path) as runner:
        pid_file = tmp_path / "marks" / "pid"
        wait_for(lambda: pid_file.exists() and pid_file.read_text().strip() != "", "the job")
        job_pid = int(pid_file.read_text())
        runner.send_signal(signal.SIGINT)
        out, err = runner.communicate(timeout=30)
    assert runner.returncode == 130, err
    assert "stopping" in err
    assert "0 succeeded, 0 failed, 1 interrupted" in out
    info = read_stat(job_pid)
    assert info is None or not info.alive
    assert set(_statuses(tmp_path / "jobs.txt.journal.sqlite").values()) == {"cancelled"}


def test_bad_lines_are_reported_with_their_line_numbers_and_nothing_is_written(
    tmp_path: Path,
) -> None:
    _jobs_file(tmp_path, "echo fine\n\n[gpus=two] echo a\n[gpus=1 mem=lots] echo b\n")
    run = run_gpupool("run", "jobs.txt", "--fake-gpus", "1", cwd=tmp_path)
    assert run.returncode == 2
    assert run.stderr.splitlines() == [
        "gpupool run: error: jobs.txt:3: gpus must be an int >= 0, got 'two'",
        "gpupool run: error: jobs.txt:4: memory must look like 8G, 512M or 8000 (MB), got 'lots'",
    ]
    assert run.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jobs.txt", "marks"]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: None, "gpupool run: error: jobs.txt: no such file"),
        (lambda d: (d / "jobs.txt").mkdir(), "gpupool run: error: jobs.txt: is a directory"),
        (
            lambda d: (d / "jobs.txt").write_bytes(b"echo \xff\n"),
            "gpupool run: error: jobs.txt:1: not UTF-8 text",
        ),
    ],
    ids=["missing", "directory", "not-text"],
)
def test_an_unusable_jobs_file_is_one_line_and_exit_2(
    tmp_path: Path, setup: Callable[[Path], object], message: str
) -> None:
    setup(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    run = run_gpupool("run", "jobs.txt", "--fake-gpus", "1", cwd=tmp_path)
    assert run.returncode == 2
    assert run.stderr.splitlines() == [message] or run.stderr.startswith(message)
    assert len(run.stderr.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_job_needing_more_gpus_than_exist_is_refused_up_front(tmp_path: Path) -> None:
    _jobs_file(tmp_path, "echo small\n[gpus=3] echo big\n")
    run = run_gpupool("run", "jobs.txt", "--fake-gpus", "2", cwd=tmp_path)
    assert run.returncode == 2
    assert run.stderr.splitlines() == [
        "gpupool run: error: jobs.txt:2: gpus=3 but there are only 2 GPUs"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jobs.txt", "marks"]


def test_a_journal_that_is_not_sqlite_is_refused(tmp_path: Path) -> None:
    _jobs_file(tmp_path, "echo hi\n")
    journal = tmp_path / "jobs.txt.journal.sqlite"
    journal.write_bytes(b"this is not a database, it is a shopping list\n" * 20)
    run = run_gpupool("run", "jobs.txt", "--fake-gpus", "1", cwd=tmp_path)
    assert run.returncode == 2
    assert len(run.stderr.splitlines()) == 1
    assert run.stderr.startswith("gpupool run: error: cannot use the journal")
    assert journal.read_bytes().startswith(b"this is not a database")
    assert not (tmp_path / "jobs.txt.logs").exists()


def test_a_read_only_directory_is_one_line_exit_2_and_nothing_half_written(
    tmp_path: Path,
) -> None:
    workdir = tmp_path / "ro"
    workdir.mkdir()
    (workdir / "jobs.txt").write_text("echo hi\n")
    # chmod does not stop root; the immutable attribute does.
    made = subprocess.run(["chattr", "+i", str(workdir)], capture_output=True, check=False)
    if made.returncode != 0:
        workdir.chmod(0o555)
        if os.access(workdir, os.W_OK):
            pytest.skip("cannot make a read-only directory here (root without chattr)")
    try:
        run = run_gpupool("run", "jobs.txt", "--fake-gpus", "1", cwd=workdir)
        assert run.returncode == 2
        assert len(run.stderr.splitlines()) == 1, run.stderr
        assert run.stderr.startswith("gpupool run: error: cannot write the log directory")
        assert sorted(p.name for p in workdir.iterdir()) == ["jobs.txt"]
    finally:
        subprocess.run(["chattr", "-i", str(workdir)], capture_output=True, check=False)
        workdir.chmod(0o755)


def test_bad_options_exit_2(tmp_path: Path) -> None:
    _jobs_file(tmp_path, "echo hi\n")
    run = run_gpupool("run", "jobs.txt", "--gpus", "-1", cwd=tmp_path)
    assert run.returncode == 2
    assert "--gpus: must be an int >= 0, got '-1'" in run.stderr
    run = run_gpupool("run", "jobs.txt", "--timeout", "soon", cwd=tmp_path)
    assert run.returncode == 2
    assert "timeout must be a duration" in run.stderr


def test_demo_runs_the_bundled_jobs_file(tmp_path: Path) -> None:
    run = run_gpupool("demo", "--dir", str(tmp_path / "demo"), cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "8 succeeded, 0 failed" in run.stdout
    logs = tmp_path / "demo" / "demo_jobs.txt.logs"
    text = "".join(p.read_text() for p in logs.iterdir())
    assert fake_uuid(0) in text
    assert "first try fails" in text
    assert "retry succeeds" in text


def test_timeouts_and_cuda_oom_show_in_the_summary(tmp_path: Path) -> None:
    _jobs_file(
        tmp_path,
        "[gpus=0 timeout=1s name=slow] sleep 30\n"
        "[gpus=0 name=oom] echo 'RuntimeError: CUDA out of memory. Tried to allocate' >&2; exit 1\n",
    )
    run = run_gpupool("run", "jobs.txt", "--grace", "0.2", cwd=tmp_path)
    assert run.returncode == 1, run.stderr
    assert "exit code 1 (CUDA out of memory)" in run.stdout
    assert _statuses(tmp_path / "jobs.txt.journal.sqlite") == {
        "slow": "timed_out",
        "oom": "failed",
    }


def test_a_second_ctrl_c_does_not_wait_for_the_grace_period(tmp_path: Path) -> None:
    _jobs_file(tmp_path, "[gpus=0] trap '' TERM; echo $$ > marks/pid; sleep 60\n")
    with started_gpupool("run", "jobs.txt", "--grace", "60", cwd=tmp_path) as runner:
        pid_file = tmp_path / "marks" / "pid"
        wait_for(lambda: pid_file.exists() and pid_file.read_text().strip() != "", "the job")
        job_pid = int(pid_file.read_text())
        runner.send_signal(signal.SIGINT)
        assert runner.stderr is not None
        while "stopping" not in (line := runner.stderr.readline()):
            assert line, "gpupool run ended before it said it was stopping"
        runner.send_signal(signal.SIGINT)
        _, err = runner.communicate(timeout=30)  # far less than the 60 s grace period
    assert runner.returncode == 130
    assert "forced stop" in err
    wait_for(lambda: not _is_alive(job_pid), "the job to be killed", timeout=5)
    # The journal is consistent: the next run takes it over and runs the job again.
    assert list(_statuses(tmp_path / "jobs.txt.journal.sqlite").values()) == ["running"]


def _is_alive(pid: int) -> bool:
    info = read_stat(pid)
    return info is not None and info.alive


def _summary_text(rows: list[tuple[str, TaskResult | None]], width: int) -> str:
    """The summary `gpupool run` prints, rendered for a terminal ``width`` wide."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, highlight=False, soft_wrap=True)
    progress = JobsProgress(console, max_parallel=2)
    jobs = parse_jobs("\n".join(text for text, _ in rows))
    progress.add_jobs({job.key: job for job in jobs})
    for job, (_, result) in zip(jobs, rows, strict=True):
        if result is not None:
            progress.results[job.key] = attrs.evolve(result, key=job.key)
    console.print(progress.summary(Path("jobs.txt.logs"), width), soft_wrap=False)
    return buffer.getvalue()


def test_the_summary_loses_no_field_at_any_width() -> None:
    # Regression: a long outcome squeezed the line, tries, GPUs and time
    # columns to zero width (`││ ││││ UnsatisfiableRequest: ...`).
    rng = random.Random(10)
    long_error = "UnsatisfiableRequest: " + " ".join(["min_memory_mb=102400 on 1 GPU(s)"] * 4)
    for width in [*range(20, 221, 7), 40, 80, 200]:
        rows: list[tuple[str, TaskResult | None]] = []
        for _ in range(rng.randrange(1, 5)):
            words = ["w" * rng.randrange(1, 30) for _ in range(rng.randrange(1, 8))]
            words.insert(rng.randrange(len(words) + 1), "'[b]'")  # text, not markup
            status = rng.choice([TaskStatus.SUCCEEDED, TaskStatus.FAILED, None])
            result = None
            if status is not None:
                result = TaskResult(
                    "k",
                    status,
                    error=rng.choice([long_error, "ProcessFailed: x failed: exit code 3"]),
                    attempts=rng.randrange(1, 12),
                    gpu_indices=tuple(range(rng.randrange(0, 8))),
                    duration_s=rng.choice([0.4, 754.0, 45000.0]),
                    from_journal=rng.random() < 0.5,
                )
            rows.append((f"[gpus=0] echo {' '.join(words)}", result))
        text = _summary_text(rows, width)
        lines = text.splitlines()
        assert max(map(len, lines)) <= width, text
        # Every character of every field is there (folded, maybe, but not cut).
        jobs = parse_jobs("\n".join(t for t, _ in rows))
        fields = "".join(job.command + job.log_name for job in jobs)
        missing = collections.Counter(fields.replace(" ", "")) - collections.Counter(
            text.replace(" ", "").replace("\n", "")
        )
        assert not missing, f"width {width}: lost {missing}\n{text}"
        # The key fields are whole, on one line.
        for job, (_, result) in zip(jobs, rows, strict=True):
            assert any(re.search(rf"\b{job.line}\b", line) for line in lines)
            if result is not None:
                assert any(result.status.value in line for line in lines), text
                assert any(re.search(rf"\b{result.attempts}\b", line) for line in lines), text
                gpus = ",".join(map(str, result.gpu_indices)) or "cpu"
                assert any(gpus in line for line in lines), text


def _on_terminal(*args: str, cwd: Path, columns: int) -> tuple[int, str]:
    """Run the CLI with its stdout on a pseudo-terminal ``columns`` wide; (exit code, stdout)."""
    controller, terminal = pty.openpty()
    env = {**command_env(), "COLUMNS": str(columns), "TERM": "xterm"}
    process = subprocess.Popen(
        [sys.executable, "-m", "gpupool", *args],
        cwd=cwd,
        env=env,
        stdout=terminal,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    os.close(terminal)
    chunks: list[bytes] = []
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the terminal's other side is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(controller)
    code = process.wait(timeout=90)
    text = b"".join(chunks).decode().replace("\r\n", "\n")
    return code, re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


def test_the_summary_keeps_every_column_on_terminals_of_any_width_and_in_a_pipe(
    tmp_path: Path,
) -> None:
    # Regression: the line, tries, GPUs and time columns shrank to nothing.
    _jobs_file(
        tmp_path,
        "[gpus=2] echo fine\n"
        "[name=oom] echo 'RuntimeError: CUDA out of memory. Tried to allocate' >&2; exit 1\n"
        "python3 -c 'import sys; sys.exit(3)' --a-rather-long-argument --and-another-one\n",
    )
    assert run_gpupool("run", "jobs.txt", "--fake-gpus", "2", cwd=tmp_path).returncode == 1
    logs = sorted(p.name for p in (tmp_path / "jobs.txt.logs").iterdir())
    assert "oom.log" in logs
    piped = run_gpupool("run", "jobs.txt", "--fake-gpus", "2", cwd=tmp_path)
    outputs = {"piped": piped.stdout}
    for columns in (40, 80, 200):
        code, outputs[f"{columns} columns"] = _on_terminal(
            "run", "jobs.txt", "--fake-gpus", "2", cwd=tmp_path, columns=columns
        )
        assert code == 1
    for where, text in outputs.items():
        summary = text[: text.index("1 succeeded, 2 failed")]
        for line_number, status, gpus in ((1, "succeeded", "0,1"), (2, "failed", r"\d")):
            fields = rf"{line_number}\s+{status}\s+(tries=)?1\s+(GPUs=)?{gpus}\s+(time=)?\d\.\ds"
            assert re.search(fields, summary), f"{where}: line {line_number} lost a field:\n{text}"
        squeezed = text.replace(" ", "").replace("\n", "")
        for log in logs:
            assert not collections.Counter(log) - collections.Counter(squeezed), (where, text)
        if where != "piped":  # the table fits; the messages after it are not wrapped (grep)
            assert max(map(len, summary.splitlines())) <= int(where.split()[0]), text


def _stop_with_ctrl_c(runner: subprocess.Popen[str]) -> tuple[str, str]:
    """SIGINT to a running `gpupool run` (as Ctrl-C sends it); its stdout and stderr."""
    try:
        runner.send_signal(signal.SIGINT)
        return runner.communicate(timeout=30)
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.communicate()


def test_watch_runs_no_fragment_of_a_line_when_the_file_is_edited_above(tmp_path: Path) -> None:
    # Regression: --watch resumed reading at the old byte offset, so a comment
    # inserted at the top made it run the tail of line 2 as a job.
    tail = "touch marks/FRAGMENT-RAN\n"  # the end of line 2, where the shell ignores it
    original = MARK.format(body="echo first") + "\n" + MARK.format(body="true") + " # " + tail
    jobs = _jobs_file(tmp_path, original)
    journal = tmp_path / "jobs.txt.journal.sqlite"
    with started_gpupool("run", "jobs.txt", "--fake-gpus", "1", "--watch", cwd=tmp_path) as runner:
        wait_for(lambda: list(_statuses(journal).values()) == ["succeeded"] * 2, "the two jobs")
        comment = "#" + "-" * (len(tail) - 2) + "\n"  # exactly as long as the tail
        jobs.write_text(comment + original + MARK.format(body="echo third") + "\n")
        wait_for(lambda: list(_statuses(journal).values()) == ["succeeded"] * 3, "the third")
        out, err = _stop_with_ctrl_c(runner)
    assert runner.returncode == 0, err
    assert not (tmp_path / "marks" / "FRAGMENT-RAN").exists()
    assert "error" not in err
    assert "3 succeeded, 0 failed" in out
    assert sorted(map(len, _marks(tmp_path).values())) == [2, 2, 2]  # each ran once


def test_syntax_and_capacity_errors_are_reported_together_and_nothing_runs(
    tmp_path: Path,
) -> None:
    # Regression: gpus=3 on 2 GPUs was reported only once the syntax errors were
    # fixed, and mem= above every GPU's size was not checked before running.
    _jobs_file(
        tmp_path,
        "touch marks/ran\n"
        "[gpus=3] echo too many\n"
        "[gpus=x] echo bad\n"
        "[mem=100G] echo too big\n"
        "[gpus=2 mem=24G] echo fits\n"
        "[gpus=0 mem=100G] echo cpu only, mem means nothing\n",
    )
    run = run_gpupool("run", "jobs.txt", "--fake-gpus", "2", cwd=tmp_path)
    assert run.returncode == 2
    assert run.stderr.splitlines() == [
        "gpupool run: error: jobs.txt:2: gpus=3 but there are only 2 GPUs",
        "gpupool run: error: jobs.txt:3: gpus must be an int >= 0, got 'x'",
        "gpupool run: error: jobs.txt:4: mem=100G but no GPU has that much memory "
        "(the largest has 24G)",
    ]
    assert run.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jobs.txt", "marks"]
    assert not (tmp_path / "marks" / "ran").exists()


def test_a_fixed_mem_line_runs_instead_of_being_skipped_as_failed_earlier(
    tmp_path: Path,
) -> None:
    # Regression: the job ran, failed with UnsatisfiableRequest, was journaled as
    # failed, and after the fix was skipped as "failed in an earlier run".
    jobs = _jobs_file(tmp_path, "[mem=100G] touch marks/big\n")
    assert run_gpupool("run", "jobs.txt", "--fake-gpus", "2", cwd=tmp_path).returncode == 2
    assert _statuses(tmp_path / "jobs.txt.journal.sqlite") == {}
    jobs.write_text("[mem=20G] touch marks/big\n")
    run = run_gpupool("run", "jobs.txt", "--fake-gpus", "2", cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert (tmp_path / "marks" / "big").exists()


def test_watch_skips_an_appended_job_that_could_never_start_and_ctrl_c_exits_1(
    tmp_path: Path,
) -> None:
    # Ctrl-C is how a --watch run ends: with nothing running it ends the run as
    # the end of the file would, exit 1 after a bad line (130 is for a Ctrl-C
    # that cut jobs short; the docs said 1, the code gave 130).
    jobs = _jobs_file(tmp_path, MARK.format(body="echo first") + "\n")
    journal = tmp_path / "jobs.txt.journal.sqlite"
    runner = start_gpupool("run", "jobs.txt", "--fake-gpus", "2", "--watch", cwd=tmp_path)
    assert runner.stderr is not None
    try:
        wait_for(lambda: list(_statuses(journal).values()) == ["succeeded"], "the first job")
    except AssertionError:
        _stop_with_ctrl_c(runner)
        raise
    with jobs.open("a") as handle:
        handle.write("[mem=1T] touch marks/never\n[gpus=y] echo bad\n")
    reported: list[str] = []
    try:
        while len([line for line in reported if "(line skipped)" in line]) < 2:
            line = runner.stderr.readline()
            assert line, f"gpupool run ended early: {reported}"
            reported.append(line)
    finally:
        out, err = _stop_with_ctrl_c(runner)
    assert runner.returncode == 1, err
    assert [line for line in reported if "(line skipped)" in line] == [
        "gpupool run: error: jobs.txt:2: mem=1T but no GPU has that much memory "
        "(the largest has 24G) (line skipped)\n",
        "gpupool run: error: jobs.txt:3: gpus must be an int >= 0, got 'y' (line skipped)\n",
    ]
    assert "1 succeeded, 0 failed" in out
    assert list(_statuses(journal).values()) == ["succeeded"]  # never journaled as failed
    assert not (tmp_path / "marks" / "never").exists()


def test_the_demo_names_the_command_that_runs_it_again_with_its_journal(tmp_path: Path) -> None:
    # Regression: the demo said "run the same command again: finished jobs are
    # answered from the journal", but each `gpupool demo` made a new directory.
    env = {**command_env(), "TMPDIR": str(tmp_path)}  # where the demo makes its directory
    first = run_gpupool("demo", "--fake-gpus", "2", cwd=tmp_path, env=env, timeout=120)
    assert first.returncode == 0, first.stderr
    match = re.search(r"Run `gpupool (demo [^`]*)`: finished jobs are answered", first.stderr)
    assert match is not None, first.stderr
    again = run_gpupool(*shlex.split(match.group(1)), cwd=tmp_path, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "8 succeeded, 0 failed" in again.stdout
    assert again.stdout.count("(earlier run)") == 8  # none ran again
    assert len(list(tmp_path.glob("gpupool-demo-*"))) == 1


def test_ctrl_c_under_watch_that_stops_a_running_job_exits_130(tmp_path: Path) -> None:
    _jobs_file(tmp_path, "[gpus=0] echo $$ > marks/pid; sleep 60\n")
    runner = start_gpupool(
        "run", "jobs.txt", "--watch", "--fake-gpus", "1", "--grace", "0.5", cwd=tmp_path
    )
    pid_file = tmp_path / "marks" / "pid"
    try:
        wait_for(lambda: pid_file.exists() and pid_file.read_text().strip() != "", "the job")
    finally:
        out, err = _stop_with_ctrl_c(runner)
    assert runner.returncode == 130, err
    assert "0 succeeded, 0 failed, 1 interrupted" in out


def test_gpupool_run_still_reports_a_failed_job_in_one_line(tmp_path: Path) -> None:
    # ``gpupool run`` judges the result itself and points at the job's log, so
    # its outcome stays "exit code 3": no output quoted in the summary or journal
    # (run_process's check=True would quote it). The job prints HELLO, a word its
    # command line does not contain.
    command = "echo hello | tr a-z A-Z; exit 3"
    (tmp_path / "jobs.txt").write_text(command + "\n")
    run = run_gpupool("run", "jobs.txt", "--fake-gpus", "1", cwd=tmp_path)
    assert run.returncode == 1, run.stderr
    assert "exit code 3" in run.stdout
    assert "HELLO" not in run.stdout
    export = run_gpupool("journal", "export", "jobs.txt.journal.sqlite", cwd=tmp_path)
    assert export.returncode == 0, export.stderr
    [row] = [json.loads(line) for line in export.stdout.splitlines()]
    assert row["error"] == f"ProcessFailed: command {command!r} failed: exit code 3"


def test_a_gpupool_run_job_records_its_process_group_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: every job's group was written, and deleted, twice (by
    `gpupool run`'s own start hook and by run_process inside the runner task)."""
    writes: list[tuple[str, str, int]] = []
    record, forget = Journal.record_process_group, Journal.forget_process_group

    def counted_record(journal: Journal, key: str, pgid: int) -> None:
        writes.append(("record", key, pgid))
        record(journal, key, pgid)

    def counted_forget(journal: Journal, key: str, pgid: int) -> None:
        writes.append(("forget", key, pgid))
        forget(journal, key, pgid)

    monkeypatch.setattr(Journal, "record_process_group", counted_record)
    monkeypatch.setattr(Journal, "forget_process_group", counted_forget)
    jobs = _jobs_file(tmp_path, "[gpus=0] true\n[gpus=1] true\n")
    quiet = Console(file=io.StringIO())
    code = run_jobs(RunOptions(jobs_file=jobs, fake_gpus=2, job_cwd=tmp_path), out=quiet, err=quiet)
    assert code == 0
    keys = {key for _, key, _ in writes}
    assert len(keys) == 2
    for key in keys:
        (pgid,) = {pgid for _, k, pgid in writes if k == key}
        assert [(what, pgid) for what, k, _ in writes if k == key] == [
            ("record", pgid),
            ("forget", pgid),
        ]
