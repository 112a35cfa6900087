"""``gpupool run --tmux`` and ``gpupool attach`` end to end: a real tmux server (private),
real ``gpupool`` processes, real jobs, real signals.

The ``tmux_server`` fixture points this process's environment at the private
server, and the ``gpupool`` processes the tests start inherit it."""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpupool._system.procfs import read_stat
from tests.gpupool_command import command_env, finish, run_gpupool, started_gpupool
from tests.tmux_server import TmuxServer, tmux_server
from tests.waiting import gone, wait_for

__all__ = ["tmux_server"]  # the fixture, used by name

#: A job that says hello, writes its pid and its grandchild's, and waits for a file `go`.
WAITING_JOB = (
    "[name=talk gpus=0] echo hello-from-talk; (sleep 60) & echo $! > marks/grandchild; "
    "echo $$ > marks/pid; while [ ! -e go ]; do sleep 0.05; done; echo bye-from-talk"
)


@contextlib.contextmanager
def _in_a_terminal(command: str, cwd: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """``command`` run by ``script``, which gives it a pty of its own; killed on the way out."""
    process = subprocess.Popen(
        ["script", "-qfec", command, "/dev/null"],
        cwd=cwd,
        env=command_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        assert process.stdin is not None
        process.stdin.close()


def _jobs(tmp_path: Path, *lines: str) -> None:
    (tmp_path / "marks").mkdir(exist_ok=True)
    (tmp_path / "jobs.txt").write_text("\n".join(lines) + "\n")


def _pid(tmp_path: Path, name: str) -> int:
    path = tmp_path / "marks" / name
    wait_for(lambda: path.exists() and path.read_text().strip() != "", f"marks/{name}")
    return int(path.read_text())


def _journal(tmp_path: Path, query: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(tmp_path / "jobs.txt.journal.sqlite") as conn:
        return conn.execute(query).fetchall()


def test_a_job_runs_in_a_window_named_after_it_with_its_output_in_the_log_and_journal(
    tmp_path: Path, tmux_server: TmuxServer
) -> None:
    _jobs(tmp_path, WAITING_JOB)
    with started_gpupool("run", "jobs.txt", "--tmux", cwd=tmp_path) as run:
        pid = _pid(tmp_path, "pid")
        wait_for(lambda: ("jobs_txt", "talk") in tmux_server.windows(), "the window")
        wait_for(lambda: "hello-from-talk" in tmux_server.pane_text("=jobs_txt:talk"), "the output")
        log = tmp_path / "jobs.txt.logs" / "talk.log"
        assert log.read_text() == "hello-from-talk\n"
        # The journal records the job's own process group, as in direct mode.
        wait_for(lambda: _journal(tmp_path, "SELECT key, pgid FROM process_groups"), "the group")
        assert _journal(tmp_path, "SELECT key, pgid FROM process_groups") == [("talk", pid)]
        info = read_stat(pid)
        assert info is not None
        assert info.pgid == info.session == pid
        state = json.loads((tmp_path / "jobs.txt.logs" / "talk.log.tmux").read_text())
        assert (state["session"], state["window_name"], state["job_pid"]) == (
            "jobs_txt",
            "talk",
            pid,
        )
        (tmp_path / "go").touch()
        out, err = finish(run)
    assert run.returncode == 0, err
    assert "1 succeeded, 0 failed" in out
    assert log.read_text() == "hello-from-talk\nbye-from-talk\n"
    assert not (tmp_path / "jobs.txt.logs" / "talk.log.tmux").exists()
    wait_for(lambda: tmux_server.windows() == [], "a succeeded job's window to close", timeout=10)
    assert _journal(tmp_path, "SELECT COUNT(*) FROM process_groups") == [(0,)]


def test_attach_puts_a_terminal_on_the_jobs_window(tmp_path: Path, tmux_server: TmuxServer) -> None:
    _jobs(tmp_path, WAITING_JOB)
    with started_gpupool("run", "jobs.txt", "--tmux", cwd=tmp_path) as run:
        _pid(tmp_path, "pid")
        # `attach` needs a terminal.
        command = f"{sys.executable} -m gpupool attach talk"
        with _in_a_terminal(command, cwd=tmp_path) as attach:
            wait_for(
                lambda: "jobs_txt:talk" in tmux_server.clients(), "a client on the job's window"
            )
            assert tmux_server.run("detach-client", "-s", "=jobs_txt").returncode == 0
            assert attach.wait(timeout=30) == 0
        (tmp_path / "go").touch()
        finish(run)
    assert run.returncode == 0
    finished = run_gpupool("attach", "talk", cwd=tmp_path)
    assert finished.returncode == 1
    assert "job talk is not running (it succeeded); `gpupool logs talk` shows its output" in (
        finished.stderr
    )


def test_attach_to_a_job_run_without_tmux_says_so(tmp_path: Path, tmux_server: TmuxServer) -> None:
    _jobs(tmp_path, WAITING_JOB)
    with started_gpupool("run", "jobs.txt", cwd=tmp_path) as run:
        _pid(tmp_path, "pid")
        attach = run_gpupool("attach", "1", "jobs.txt", cwd=tmp_path)
        (tmp_path / "go").touch()
        finish(run)
    assert attach.returncode == 1
    assert "job talk is not running in a tmux window" in attach.stderr
    assert "gpupool logs talk --follow" in attach.stderr


def test_ctrl_c_ends_the_jobs_whole_group_and_journals_it_as_in_direct_mode(
    tmp_path: Path, tmux_server: TmuxServer
) -> None:
    _jobs(tmp_path, WAITING_JOB)
    with started_gpupool("run", "jobs.txt", "--tmux", "--grace", "0.5", cwd=tmp_path) as run:
        pid, grandchild = _pid(tmp_path, "pid"), _pid(tmp_path, "grandchild")
        wait_for(lambda: _journal(tmp_path, "SELECT pgid FROM process_groups"), "the group")
        run.send_signal(signal.SIGINT)
        out, err = finish(run)
    assert run.returncode == 130, err
    assert "1 interrupted" in out
    assert gone(pid)
    assert gone(grandchild)
    assert _journal(tmp_path, "SELECT status FROM tasks") == [("cancelled",)]
    assert _journal(tmp_path, "SELECT COUNT(*) FROM process_groups") == [(0,)]


def test_a_timeout_ends_the_jobs_whole_group(tmp_path: Path, tmux_server: TmuxServer) -> None:
    _jobs(tmp_path, WAITING_JOB.replace("[name=talk gpus=0]", "[name=talk gpus=0 timeout=1]"))
    result = run_gpupool("run", "jobs.txt", "--tmux", "--grace", "0.5", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert gone(int((tmp_path / "marks" / "pid").read_text()))
    assert gone(int((tmp_path / "marks" / "grandchild").read_text()))
    assert _journal(tmp_path, "SELECT status FROM tasks") == [("timed_out",)]


def test_a_killed_window_fails_the_job_with_a_clear_message(
    tmp_path: Path, tmux_server: TmuxServer
) -> None:
    _jobs(tmp_path, WAITING_JOB)
    with started_gpupool("run", "jobs.txt", "--tmux", "--grace", "0.5", cwd=tmp_path) as run:
        pid, grandchild = _pid(tmp_path, "pid"), _pid(tmp_path, "grandchild")
        assert tmux_server.run("kill-window", "-t", "=jobs_txt:talk").returncode == 0
        out, err = finish(run)
    assert run.returncode == 1, err
    assert "0 succeeded, 1 failed" in out
    assert gone(pid)
    assert gone(grandchild)
    [(error,)] = _journal(tmp_path, "SELECT error FROM tasks")
    assert "the job was ended: its tmux window 'talk' was closed" in str(error)


def test_a_run_killed_with_kill_9_leaves_a_job_the_next_run_kills(
    tmp_path: Path, tmux_server: TmuxServer
) -> None:
    # Long the first time only; the re-run after the restart is quick.
    _jobs(
        tmp_path,
        "[name=once gpus=0] if [ -e marks/once ]; then exit 0; fi; touch marks/once; "
        "echo $$ > marks/pid; sleep 60",
    )
    with started_gpupool("run", "jobs.txt", "--tmux", cwd=tmp_path) as run:
        orphan = _pid(tmp_path, "pid")
        wait_for(lambda: _journal(tmp_path, "SELECT pgid FROM process_groups"), "the group")
        run.send_signal(signal.SIGKILL)
        finish(run)
    assert not gone(orphan)  # as in direct mode: kill -9 gave gpupool no chance to end it
    assert ("jobs_txt", "once") in tmux_server.windows()
    again = run_gpupool("run", "jobs.txt", "--tmux", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "killed 1 leftover process group(s) of an earlier run that died" in again.stderr
    wait_for(lambda: gone(orphan), "the orphan to be gone", timeout=5)
    # Its window says how it ended, and stays for --tmux-keep-failed as any failed job's.
    wait_for(
        lambda: "the job ended (killed by signal 9)" in tmux_server.pane_text("=jobs_txt:once"),
        "the old window's last words",
    )


def test_a_failed_jobs_window_stays_for_tmux_keep_failed_seconds(
    tmp_path: Path, tmux_server: TmuxServer
) -> None:
    _jobs(tmp_path, "[name=bad gpus=0] echo oops; exit 3")
    result = run_gpupool("run", "jobs.txt", "--tmux", "--tmux-keep-failed", "30", cwd=tmp_path)
    assert result.returncode == 1
    assert ("jobs_txt", "bad") in tmux_server.windows()
    wait_for(lambda: "closes in 30s" in tmux_server.pane_text("=jobs_txt:bad"), "the note")
    assert "oops" in tmux_server.pane_text("=jobs_txt:bad")
    [wrapper] = [
        int(line)
        for line in tmux_server.run("list-panes", "-a", "-F", "#{pane_pid}").stdout.split()
    ]
    # Closing the window (or ending the server) ends the wait at once.
    assert tmux_server.run("kill-server").returncode == 0
    wait_for(lambda: gone(wrapper), "the lingering wrapper to go", timeout=5)


def test_a_session_of_the_same_name_that_is_not_the_runs_is_left_alone(
    tmp_path: Path, tmux_server: TmuxServer
) -> None:
    assert tmux_server.run("new-session", "-d", "-s", "jobs_txt", "sleep 60").returncode == 0
    _jobs(tmp_path, "[name=ok gpus=0] echo fine; sleep 1")
    with started_gpupool("run", "jobs.txt", "--tmux", cwd=tmp_path) as run:
        wait_for(lambda: ("jobs_txt-2", "ok") in tmux_server.windows(), "the run's own session")
        finish(run)
    assert run.returncode == 0
    assert [name for name, _ in tmux_server.windows()].count("jobs_txt") == 1


def test_tmux_missing_is_one_line_and_exit_2_before_anything_runs(
    tmp_path: Path, tmux_server: TmuxServer
) -> None:
    _jobs(tmp_path, "[gpus=0] touch marks/ran")
    bare = tmp_path / "bin"
    bare.mkdir()
    (bare / "sh").symlink_to("/bin/sh")
    env = {**command_env(), "PATH": str(bare)}
    result = run_gpupool("run", "jobs.txt", "--tmux", cwd=tmp_path, env=env, timeout=60)
    assert result.returncode == 2
    assert "--tmux needs tmux, which is not installed or not on PATH" in result.stderr
    assert not (tmp_path / "marks" / "ran").exists()
    assert not (tmp_path / "jobs.txt.journal.sqlite").exists()


@pytest.mark.parametrize("selector", ["talk", "1", "tal"])
def test_attach_finds_a_job_by_key_line_or_prefix(
    tmp_path: Path, tmux_server: TmuxServer, selector: str
) -> None:
    # Without a terminal attach stops just before tmux: far enough to show it found the window.
    _jobs(tmp_path, WAITING_JOB)
    with started_gpupool("run", "jobs.txt", "--tmux", cwd=tmp_path) as run:
        _pid(tmp_path, "pid")
        wait_for(lambda: (tmp_path / "jobs.txt.logs" / "talk.log.tmux").exists(), "the state")
        attach = run_gpupool("attach", selector, cwd=tmp_path)
        (tmp_path / "go").touch()
        finish(run)
    assert attach.returncode == 1
    assert "attaching needs a terminal" in attach.stderr


def test_logs_follows_a_job_in_a_window_to_its_end(tmp_path: Path, tmux_server: TmuxServer) -> None:
    _jobs(tmp_path, WAITING_JOB)
    with started_gpupool("run", "jobs.txt", "--tmux", cwd=tmp_path) as run:
        _pid(tmp_path, "pid")
        with started_gpupool("logs", "talk", "--follow", cwd=tmp_path) as follow:
            (tmp_path / "go").touch()
            out, err = finish(follow)
        finish(run)
    assert follow.returncode == 0, err
    assert out == "hello-from-talk\nbye-from-talk\n"


def test_ctrl_c_typed_in_the_window_interrupts_the_job(
    tmp_path: Path, tmux_server: TmuxServer
) -> None:
    _jobs(tmp_path, WAITING_JOB)
    with started_gpupool("run", "jobs.txt", "--tmux", cwd=tmp_path) as run:
        pid = _pid(tmp_path, "pid")
        assert tmux_server.run("send-keys", "-t", "=jobs_txt:talk", "C-c").returncode == 0
        _, err = finish(run)
    assert run.returncode == 1, err
    assert gone(pid)
    [(status, error)] = _journal(tmp_path, "SELECT status, error FROM tasks")
    assert status == "failed"
    assert "tmux window" not in str(error)  # the job was interrupted, its window is fine


def test_jobs_started_together_each_get_a_window_of_the_one_session(
    tmp_path: Path, tmux_server: TmuxServer
) -> None:
    wait = "while [ ! -e go ]; do sleep 0.05; done"
    _jobs(tmp_path, *(f"[name=j{i} gpus=0] touch marks/j{i}; {wait}" for i in range(4)))
    with started_gpupool("run", "jobs.txt", "--tmux", "--max-parallel", "4", cwd=tmp_path) as run:
        wait_for(lambda: len(tmux_server.windows()) == 4, "four windows")
        assert sorted(tmux_server.windows()) == [("jobs_txt", f"j{i}") for i in range(4)]
        (tmp_path / "go").touch()
        out, err = finish(run)
    assert run.returncode == 0, err
    assert "4 succeeded, 0 failed" in out


def test_a_window_stopped_with_ctrl_s_never_stops_the_job_or_its_log(
    tmp_path: Path, tmux_server: TmuxServer
) -> None:
    """Regression: the wrapper wrote to the window blocking, so a person's Ctrl-S (XOFF)
    in the window stopped the wrapper, then the log, then the job on a full pipe."""
    _jobs(tmp_path, "[name=chatty gpus=0] while [ ! -e go ]; do sleep 0.05; done; seq 1 100000")
    with started_gpupool("run", "jobs.txt", "--tmux", cwd=tmp_path) as run:
        wait_for(lambda: ("jobs_txt", "chatty") in tmux_server.windows(), "the window")
        assert tmux_server.run("send-keys", "-t", "=jobs_txt:chatty", "C-s").returncode == 0
        (tmp_path / "go").touch()
        out, err = finish(run)
    assert run.returncode == 0, err
    assert "1 succeeded, 0 failed" in out
    lines = (tmp_path / "jobs.txt.logs" / "chatty.log").read_text().split()
    assert lines == [str(n) for n in range(1, 100001)]


def test_attach_inside_tmux_switches_the_client_to_the_jobs_window(
    tmp_path: Path, tmux_server: TmuxServer
) -> None:
    _jobs(tmp_path, WAITING_JOB)
    with started_gpupool("run", "jobs.txt", "--tmux", cwd=tmp_path) as run:
        _pid(tmp_path, "pid")
        assert (
            tmux_server.run("new-session", "-d", "-s", "mine", "-c", str(tmp_path)).returncode == 0
        )
        with _in_a_terminal("tmux attach -t =mine"):
            wait_for(
                lambda: any(c.startswith("mine:") for c in tmux_server.clients()), "the client"
            )
            # Typed in the person's own session, where $TMUX names this server.
            typed = f"{sys.executable} -m gpupool attach talk"
            assert tmux_server.run("send-keys", "-t", "=mine:", typed, "Enter").returncode == 0
            wait_for(lambda: "jobs_txt:talk" in tmux_server.clients(), "the switch to the job")
            # The person's client itself moved (switch-client), not a nested one started.
            assert tmux_server.clients() == ["jobs_txt:talk"]
            (tmp_path / "go").touch()
            finish(run)
    assert run.returncode == 0
