"""run_process in a tmux window: the same results and the same ending of jobs as direct mode.

Real tmux (a private server, see tests/tmux_server.py), real processes, on
asyncio and trio. Each case runs the same job both ways and compares.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from gpupool._process.launch import DIRECT, Launcher
from gpupool._process.run import ProcessResult, run_process
from gpupool._process.tmux import TmuxSession, TmuxWindow
from gpupool._system.procfs import read_stat
from tests.tmux_server import TmuxServer, tmux_server
from tests.waiting import gone, wait_for

pytestmark = pytest.mark.anyio
__all__ = ["tmux_server"]  # the fixture, used by name


def _window(name: str = "job") -> TmuxWindow:
    return TmuxSession("tests", owner="/tests/journal").window(name)


async def _both(tmp_path: Path, command: str, **options: object) -> list[ProcessResult]:
    results = []
    for launcher in (DIRECT, _window()):
        log = tmp_path / f"{type(launcher).__name__}.log"
        results.append(
            await run_process(command, log_path=log, check=False, _launcher=launcher, **options)  # type: ignore[arg-type]
        )
    return results


async def test_a_job_ends_the_same_under_tmux_as_directly(
    tmp_path: Path, tmux_server: TmuxServer
) -> None:
    command = 'echo out; echo err >&2; echo "CUDA out of memory" ; [ -t 1 ] && echo tty; exit 3'
    direct, tmux = await _both(tmp_path, command)
    assert (tmux.returncode, tmux.output_tail, tmux.cuda_oom) == (
        3,
        "out\nerr\nCUDA out of memory",
        True,
    )
    assert (direct.returncode, direct.output_tail, direct.cuda_oom) == (
        tmux.returncode,
        tmux.output_tail,
        tmux.cuda_oom,
    )
    # The log holds exactly the job's bytes in both modes (no terminal, no \r).
    assert (tmp_path / "TmuxWindow.log").read_bytes() == (
        tmp_path / "DirectLauncher.log"
    ).read_bytes()


async def test_the_environment_and_directory_are_the_callers_not_the_tmux_servers(
    tmp_path: Path, tmux_server: TmuxServer
) -> None:
    (tmp_path / "here").mkdir()
    command = 'echo "$MY_VAR $GPUPOOL_JOB_TOKEN" | wc -w; pwd; echo "${TMUX_TMPDIR:-unset}"'
    direct, tmux = await _both(tmp_path, command, env={"MY_VAR": "x"}, cwd=tmp_path / "here")
    assert tmux.output_tail == direct.output_tail
    assert tmux.output_tail.splitlines()[:2] == ["2", str(tmp_path / "here")]


async def test_a_timeout_ends_the_whole_job_a_grandchild_too(
    tmp_path: Path, tmux_server: TmuxServer
) -> None:
    pids = tmp_path / "pids"
    command = (
        f"trap '' TERM; (trap '' TERM; sleep 60) & echo $! > {pids}; "
        f"setsid sleep 60 & echo $! >> {pids}; exec sleep 60"
    )
    result = await run_process(
        command,
        timeout=1,
        grace_period=0.3,
        check=False,
        log_path=tmp_path / "log",
        _launcher=_window(),
    )
    assert result.timed_out
    assert result.returncode == -signal.SIGKILL  # ignored SIGTERM
    assert result.leftovers == 2
    for pid in map(int, pids.read_text().split()):
        assert gone(pid)
    assert gone(result.pid)


async def test_a_cancelled_caller_ends_the_job_before_the_cancellation_propagates(
    tmp_path: Path, tmux_server: TmuxServer
) -> None:
    started: list[int] = []
    with anyio.move_on_after(1.5):
        await run_process(
            "sleep 60", on_start=started.append, log_path=tmp_path / "log", _launcher=_window()
        )
    [pid] = started
    assert gone(pid)
    # The window closes with its wrapper, which exits just after the job is reaped.
    wait_for(lambda: tmux_server.windows() == [], "the window to close", timeout=10)


async def _sleep_in(
    window: TmuxWindow, log: Path, once_started: Callable[[int], object]
) -> ProcessResult:
    """A long job in ``window``; ``once_started(pid)`` is called beside it once it runs."""
    started: list[int] = []
    ready = anyio.Event()

    def on_start(pid: int) -> None:
        started.append(pid)
        ready.set()

    async def meanwhile() -> None:
        await ready.wait()
        once_started(started[0])

    async with anyio.create_task_group() as tg:
        tg.start_soon(meanwhile)
        return await run_process(
            "sleep 60", on_start=on_start, check=False, log_path=log, _launcher=window
        )


async def test_a_killed_window_ends_the_job_and_says_so(
    tmp_path: Path, tmux_server: TmuxServer
) -> None:
    window = _window("doomed")

    def kill_window(pid: int) -> None:
        assert tmux_server.run("kill-window", "-t", "=tests:doomed").returncode == 0

    result = await _sleep_in(window, tmp_path / "log", kill_window)
    assert window.lost is not None
    assert "tmux window 'doomed' was closed" in window.lost
    assert result.returncode == -signal.SIGTERM  # ended by gpupool, as on a cancel
    assert gone(result.pid)


async def test_a_killed_wrapper_ends_the_job_and_says_so(
    tmp_path: Path, tmux_server: TmuxServer
) -> None:
    window = _window("wrapped")

    def kill_wrapper(pid: int) -> None:
        info = read_stat(pid)
        assert info is not None
        os.kill(info.ppid, signal.SIGKILL)  # the wrapper is the job's parent

    result = await _sleep_in(window, tmp_path / "log", kill_wrapper)
    assert window.lost is not None
    assert "wrapper in tmux window 'wrapped' was killed" in window.lost
    assert gone(result.pid)


async def test_a_missing_command_is_the_same_error_as_directly(
    tmp_path: Path, tmux_server: TmuxServer
) -> None:
    launchers: list[Launcher] = [DIRECT, _window()]
    for launcher in launchers:
        with pytest.raises(FileNotFoundError):
            await run_process(["/no/such/program"], log_path=tmp_path / "log", _launcher=launcher)


async def test_the_job_starts_with_the_signal_dispositions_it_gets_directly(
    tmp_path: Path, tmux_server: TmuxServer
) -> None:
    """Regression: the wrapper ignored SIGINT and SIGHUP, and a job inherits ignored
    signals across exec, so a Ctrl-C typed in the window could not interrupt it."""
    direct, tmux = await _both(tmp_path, "grep -E '^Sig(Ign|Blk)' /proc/self/status")
    assert tmux.output_tail == direct.output_tail


async def test_a_session_name_taken_by_someone_else_between_jobs_is_left_to_them(
    tmp_path: Path, tmux_server: TmuxServer
) -> None:
    session = TmuxSession("tests", owner="/tests/journal")
    first = await run_process("true", log_path=tmp_path / "log", _launcher=session.window("one"))
    assert first.ok
    wait_for(lambda: tmux_server.windows() == [], "the run's session to end with its window")
    assert (
        tmux_server.run("new-session", "-d", "-s", "tests", "-n", "theirs", "sleep 60").returncode
        == 0
    )
    seen: list[list[tuple[str, str]]] = []
    await run_process(
        "true",
        log_path=tmp_path / "log",
        on_start=lambda pid: seen.append(tmux_server.windows()),
        _launcher=session.window("two"),
    )
    assert sorted(seen[0]) == [("tests", "theirs"), ("tests-2", "two")]
