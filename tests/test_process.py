"""run_process with real processes, real signals and real files, on asyncio and trio."""

from __future__ import annotations

import os
import pickle
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import attrs
import pytest

import gpupool
from gpupool import (
    FakeGPUProvider,
    GPUAllocation,
    GPUResourcePool,
    ParallelRunner,
    ProcessFailed,
    ProcessResult,
    TaskStatus,
    run_process,
)
from gpupool._core.model import StartedProcess
from gpupool._process.proctree import JobTracker
from gpupool._process.started import observing
from gpupool._system.procfs import ProcInfo, read_stat
from gpupool.providers.fake import fake_uuid

pytestmark = pytest.mark.anyio

# A job that ignores SIGTERM and leaves three helpers that ignore it too: one in
# its process group, one in a session of its own, and one in a session of its
# own whose parent has exited (reparented to init, no parent chain back).
STUBBORN_JOB = """
trap '' TERM
sleep 1000 &
echo $! >> "$PIDS"
setsid sleep 1000 &
echo $! >> "$PIDS"
( setsid sleep 1000 & echo $! >> "$PIDS" )
echo ready >> "$PIDS"
exec sleep 1000
"""


def _allocation(*indices: int) -> GPUAllocation:
    return GPUAllocation(
        id=7,
        gpu_indices=indices,
        gpu_uuids=tuple(fake_uuid(i) for i in indices),
        memory_mb=0,
    )


def _alive(pid: int) -> bool:
    info = read_stat(pid)
    if info is None:
        return False
    if info.alive:
        return True
    # A zombie is dead. It must not be ours to reap, though: we reap our child,
    # init reaps orphans (this machine's PID 1 may not, which is not our leak).
    assert info.ppid != os.getpid(), f"process {pid} is a zombie child of the test"
    return False


def _group_members(pgid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            info = read_stat(int(name))
            if info is not None and info.alive and info.pgid == pgid:
                found.append(info.pid)
    return found


def _recorded_pids(path: Path) -> list[int]:
    lines = path.read_text().split()
    assert "ready" in lines, f"the job did not get going: {lines}"
    return [int(line) for line in lines if line != "ready"]


def _assert_all_gone(result_pid: int, pids: list[int]) -> None:
    assert len(pids) == 3
    assert not _alive(result_pid)
    survivors = [p for p in pids if _alive(p)]
    # On failure, show what the survivors were doing (state, session, parent).
    assert survivors == [], [read_stat(p) for p in survivors]
    assert _group_members(result_pid) == []


async def test_timeout_ends_the_whole_job_within_grace_plus_one_second(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    grace = 0.5
    timeout = 2.0
    started = time.monotonic()
    result = await run_process(
        STUBBORN_JOB, timeout=timeout, grace_period=grace, env={"PIDS": str(pids)}, check=False
    )
    elapsed_after_timeout = time.monotonic() - started - timeout
    assert result.timed_out
    assert not result.ok
    assert result.returncode == -9  # the leader ignored SIGTERM
    assert result.leftovers == 3
    _assert_all_gone(result.pid, _recorded_pids(pids))
    # The bound the issue promises: gone within the grace period plus 1 s.
    assert elapsed_after_timeout < grace + 1.0


class _MissedOnce:
    """A job tracker that misses one process in its first scan after the
    leader is gone, as a scan can when that process is between fork and exec
    or is being reparented; later scans see it."""

    def __init__(self, real: JobTracker, stray: ProcInfo) -> None:
        self.real = real
        self.stray = stray
        self.scans_after_leader = 0

    def members(self) -> list[ProcInfo]:
        found = self.real.members()
        if any(p.pid == self.real.leader for p in found):
            return found
        self.scans_after_leader += 1
        now = read_stat(self.stray.pid)
        if self.scans_after_leader >= 2 and now is not None and now.alive:
            found.append(self.stray)
        return found


async def test_a_process_one_scan_missed_is_still_ended() -> None:
    from gpupool._process.run import _end_job

    stray = await anyio.open_process(["sleep", "1000"], start_new_session=True)
    job = await anyio.open_process(["sleep", "1000"], start_new_session=True)
    try:
        stray_info = read_stat(stray.pid)
        assert stray_info is not None
        tracker = _MissedOnce(JobTracker(job.pid), stray_info)
        with anyio.fail_after(10):
            leftovers = await _end_job(job, tracker, 0.5)  # type: ignore[arg-type]
            await stray.wait()
        assert job.returncode == -15  # the leader took its SIGTERM
        assert stray.returncode == -9  # the late one got SIGKILL
        assert leftovers == 1
    finally:
        for process in (stray, job):
            if process.returncode is None:
                process.kill()
            await process.aclose()


async def test_cancel_ends_the_whole_job_then_propagates(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    grace = 0.5
    started_pid: list[int] = []
    cancelled_at = 0.0
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                lambda: run_process(
                    STUBBORN_JOB,
                    grace_period=grace,
                    env={"PIDS": str(pids)},
                    on_start=started_pid.append,
                )
            )
            # The job is another process: a file is all there is to wait on.
            while "ready" not in (pids.read_text() if pids.exists() else ""):  # noqa: ASYNC110
                await anyio.sleep(0.02)
            cancelled_at = time.monotonic()
            scope.cancel()
    elapsed = time.monotonic() - cancelled_at
    assert scope.cancelled_caught
    _assert_all_gone(started_pid[0], _recorded_pids(pids))
    assert elapsed < grace + 1.0


async def test_leftovers_of_a_finished_job_are_ended(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    result = await run_process(
        ["sh", "-c", 'sleep 1000 & echo $! > "$1"; exit 0', "sh", str(pidfile)],
        grace_period=0.2,
    )
    assert result.ok
    assert result.leftovers == 1
    assert not _alive(int(pidfile.read_text()))


async def test_exit_codes_and_check() -> None:
    ok = await run_process(["sh", "-c", "exit 0"])
    assert ok.ok
    assert ok.returncode == ok.exit_code == 0
    assert ok.check() is ok
    assert ok.leftovers == 0
    failed = await run_process("exit 3", check=False)
    assert failed.returncode == 3
    assert not failed.ok
    assert not failed.timed_out
    with pytest.raises(ProcessFailed, match="exit code 3") as info:
        failed.check()
    assert info.value.result is failed


# Issue 10, item 3: a command that exited 1 inside a runner task made the task
# SUCCEEDED with value=1, and retries= never applied. run_process now checks by
# default, as anyio.run_process(check=True) does.

TRAIN_SCRIPT = """
import sys
print("epoch 1: loss 0.9")
print("RuntimeError: loss is NaN", file=sys.stderr)
sys.exit(1)
"""


async def test_a_runner_task_whose_command_exits_1_fails_and_is_retried(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(TRAIN_SCRIPT)
    log = tmp_path / "train.log"

    async def trial(item: str, allocation: GPUAllocation | None) -> int:
        result = await run_process(
            [sys.executable, str(script)], allocation=allocation, log_path=log
        )
        return result.returncode

    async with GPUResourcePool(FakeGPUProvider(count=2)) as pool:
        async with ParallelRunner(pool, max_parallel=2) as runner:
            [result] = await runner.map(trial, ["t0"], required_gpus=1, retries=1)
        assert pool.statistics().free_gpus == (0, 1)
    assert result.status is TaskStatus.FAILED
    assert result.attempts == 2
    assert log.read_text().count("epoch 1") == 2  # the command really ran twice
    error = result.exception
    assert isinstance(error, ProcessFailed)
    assert error.result.returncode == error.returncode == 1
    assert error.result.log_path == log
    # The log holds both attempts; the tail is the last attempt's alone.
    assert error.result.output_tail == "epoch 1: loss 0.9\nRuntimeError: loss is NaN"
    # TaskResult.error says why (the command itself is shortened to 80 characters).
    assert result.error is not None
    assert result.error.startswith("ProcessFailed: command ")
    assert result.error.endswith(
        f" failed: exit code 1; the last 2 lines of {log}:\n"
        "    epoch 1: loss 0.9\n    RuntimeError: loss is NaN"
    )


async def test_check_false_hands_a_failed_command_back_to_the_task() -> None:
    async def trial(item: str, allocation: GPUAllocation | None) -> ProcessResult:
        return await run_process("echo nope; exit 1", allocation=allocation, check=False)

    async with (
        GPUResourcePool(FakeGPUProvider(count=1)) as pool,
        ParallelRunner(pool) as runner,
    ):
        [result] = await runner.map(trial, ["t0"], required_gpus=1, retries=1)
    assert result.status is TaskStatus.SUCCEEDED
    assert result.attempts == 1
    assert isinstance(result.value, ProcessResult)
    assert result.value.returncode == 1
    assert result.value.output == "nope\n"


async def test_a_non_zero_exit_raises_with_the_result_and_the_output_tail() -> None:
    with pytest.raises(ProcessFailed) as info:
        await run_process("echo starting; echo 'bad config: lr' >&2; exit 3")
    error = info.value
    assert error.result.returncode == 3
    assert error.result.output == "starting\nbad config: lr\n"
    assert str(error) == (
        "command \"echo starting; echo 'bad config: lr' >&2; exit 3\" failed: exit code 3;"
        " the last 2 lines of its output:\n    starting\n    bad config: lr"
    )
    # Also what anyio.run_process(check=True) and subprocess.run(check=True) raise.
    assert isinstance(error, subprocess.CalledProcessError)
    assert isinstance(error, gpupool.GPUPoolError)
    assert error.returncode == 3
    assert error.cmd == error.result.args
    assert error.output == error.stdout == error.result.output
    assert error.stderr is None


async def test_a_command_killed_by_a_signal_raises() -> None:
    with pytest.raises(ProcessFailed, match=r"killed by signal 9$") as info:
        await run_process("kill -9 $$")
    assert info.value.result.returncode == -9
    assert info.value.result.output_tail == ""


async def test_a_timeout_raises_once_the_job_is_gone(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    with pytest.raises(ProcessFailed, match=r"timed out after \d+\.\ds;") as info:
        await run_process(
            ["sh", "-c", 'echo waiting; sleep 1000 & echo $! > "$1"; wait', "sh", str(pidfile)],
            timeout=0.5,
            grace_period=0.2,
        )
    result = info.value.result
    assert result.timed_out
    assert result.returncode == -15
    assert result.output_tail == "waiting"
    assert not _alive(result.pid)
    assert not _alive(int(pidfile.read_text()))


async def test_success_is_returned_with_check() -> None:
    result = await run_process("echo done")
    assert result.ok
    assert result.output_tail == "done"


async def test_the_tail_keeps_the_last_lines_and_caps_a_huge_line(tmp_path: Path) -> None:
    from gpupool._process.run import TAIL_LINES

    many = await run_process("seq 1 100", check=False)
    assert many.output_tail.splitlines() == [str(i) for i in range(101 - TAIL_LINES, 101)]
    # One endless progress-bar line: only its end is kept, not megabytes.
    code = "import sys; sys.stdout.write('#' * 1_000_000 + 'end'); sys.exit(2)"
    log = tmp_path / "bar.log"
    with pytest.raises(ProcessFailed) as info:
        await run_process([sys.executable, "-c", code], log_path=log)
    tail = info.value.result.output_tail
    assert tail.endswith("#end")
    assert len(tail) <= 8 * 1024


async def test_with_tail_false_keeps_the_message_to_one_line() -> None:
    result = await run_process("echo one; echo two; exit 4", check=False)
    with pytest.raises(ProcessFailed) as info:
        result.check(with_tail=False)
    assert str(info.value) == "command 'echo one; echo two; exit 4' failed: exit code 4"
    assert info.value.result is result
    with pytest.raises(ProcessFailed) as info:
        result.check()
    assert str(info.value).endswith("the last 2 lines of its output:\n    one\n    two")


async def test_a_process_failure_survives_pickling() -> None:
    result = await run_process("echo oops; exit 5", check=False)
    for with_tail in (True, False):
        error = ProcessFailed(result, with_tail=with_tail)
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is ProcessFailed
        assert copy.result == result
        assert str(copy) == str(error)
        assert copy.returncode == 5


def test_process_failed_needs_a_result() -> None:
    with pytest.raises(TypeError, match="result must be a ProcessResult, got 'exit 1'"):
        ProcessFailed("exit 1")  # type: ignore[arg-type]


async def test_timeout_of_a_polite_command_uses_sigterm() -> None:
    result = await run_process(["sleep", "30"], timeout=0.2, grace_period=5, check=False)
    assert result.timed_out
    assert result.returncode == -15
    assert "timed out" in result.describe()


async def test_output_goes_to_the_log_file_and_is_appended(tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    first = await run_process("echo to-stdout; echo to-stderr >&2", log_path=log)
    assert first.log_path == log
    assert first.output is None
    assert log.read_text() == "to-stdout\nto-stderr\n"
    await run_process(["echo", "second attempt"], log_path=str(log))
    assert log.read_text() == "to-stdout\nto-stderr\nsecond attempt\n"


async def test_output_is_captured_without_a_log_file() -> None:
    result = await run_process([sys.executable, "-c", "print('hello'); print('é')"])
    assert result.output == "hello\né\n"
    assert result.log_path is None


async def test_environment_carries_the_allocation_devices(tmp_path: Path) -> None:
    code = (
        "import os; print(os.environ['CUDA_VISIBLE_DEVICES']);"
        "print(os.environ['CUDA_DEVICE_ORDER']); print(os.environ['MINE'])"
    )
    result = await run_process(
        [sys.executable, "-c", code],
        allocation=_allocation(1, 3),
        # The allocation wins over the caller's env: a job cannot escape its GPUs.
        env={"CUDA_VISIBLE_DEVICES": "0", "MINE": "kept"},
    )
    assert result.output is not None
    devices, order, mine = result.output.split()
    assert devices == f"{fake_uuid(1)},{fake_uuid(3)}"
    assert order == "PCI_BUS_ID"
    assert mine == "kept"


async def test_without_allocation_the_parent_environment_is_inherited(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GPUPOOL_TEST_INHERITED", "yes")
    result = await run_process("echo $GPUPOOL_TEST_INHERITED")
    assert result.output == "yes\n"


@pytest.mark.parametrize(
    "message",
    [
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
        "RuntimeError: CUDA error: out of memory",
        "jaxlib.xla_extension.XlaRuntimeError: RESOURCE_EXHAUSTED: Out of memory",
    ],
)
async def test_cuda_oom_is_detected_in_a_log(tmp_path: Path, message: str) -> None:
    log = tmp_path / "oom.log"
    code = f"import sys; print('step 1'); print({message!r}, file=sys.stderr); sys.exit(1)"
    result = await run_process([sys.executable, "-c", code], log_path=log, check=False)
    assert result.cuda_oom
    assert result.returncode == 1
    assert "CUDA out of memory" in result.describe()


async def test_cuda_oom_is_detected_in_captured_output_and_only_there(tmp_path: Path) -> None:
    oom = await run_process("echo 'CUDA out of memory' >&2; exit 1", check=False)
    assert oom.cuda_oom
    clean = await run_process("echo 'MemoryError in host code'; exit 1", check=False)
    assert not clean.cuda_oom
    # An earlier attempt's OOM in the same log does not taint a later attempt.
    log = tmp_path / "retries.log"
    await run_process("echo 'CUDA out of memory'; exit 1", log_path=log, check=False)
    retry = await run_process("echo fine", log_path=log)
    assert not retry.cuda_oom


class _RecordingPool:
    def __init__(self) -> None:
        self.calls: list[tuple[GPUAllocation, int]] = []

    async def register_process(self, allocation: GPUAllocation, pid: int) -> None:
        self.calls.append((allocation, pid))


async def test_hooks_learn_the_process_group() -> None:
    pool = _RecordingPool()
    seen: list[int] = []
    alloc = _allocation(0)
    result = await run_process(
        ["sh", "-c", "exit 0"], allocation=alloc, pool=pool, on_start=seen.append
    )
    assert seen == [result.pid]
    assert pool.calls == [(alloc, result.pid)]
    assert result.pgid == result.pid


async def test_a_failing_hook_ends_the_job_and_propagates(tmp_path: Path) -> None:
    started: list[int] = []

    def hook(pid: int) -> None:
        started.append(pid)
        raise RuntimeError("journal is unavailable")

    with pytest.raises(RuntimeError, match="journal is unavailable"):
        await run_process(["sleep", "1000"], on_start=hook, grace_period=0.5)
    assert not _alive(started[0])


async def test_a_missing_executable_raises() -> None:
    with pytest.raises(FileNotFoundError):
        await run_process(["/nonexistent/gpupool-test-binary"])


async def test_a_missing_log_directory_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        await run_process(["true"], log_path=tmp_path / "no" / "such" / "dir.log")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"cmd": ""}, ValueError, "cmd must be a non-empty str"),
        ({"cmd": []}, ValueError, "cmd must be"),
        ({"cmd": b"ls"}, TypeError, "cmd must be"),
        ({"cmd": ["ls", 3]}, TypeError, "every argument of cmd"),
        ({"cmd": 42}, TypeError, "cmd must be"),
        ({"timeout": -1}, ValueError, "timeout must be None or a number of seconds >= 0"),
        ({"timeout": float("nan")}, ValueError, "timeout must be"),
        ({"timeout": "5"}, TypeError, "timeout must be"),
        (
            {"grace_period": -0.1},
            ValueError,
            "grace_period must be a finite number of seconds >= 0",
        ),
        ({"grace_period": None}, TypeError, "grace_period must be"),
        ({"env": {"A": 1}}, TypeError, "env must map str to str"),
        ({"env": ["A=1"]}, TypeError, "env must be a mapping"),
        ({"env": {"A=B": "1"}}, ValueError, "invalid variable"),
        ({"allocation": "0"}, TypeError, "allocation must be a GPUAllocation"),
        ({"log_path": 3}, TypeError, "log_path must be"),
        ({"pool": object()}, TypeError, "pool must have a register_process"),
        ({"pool": _RecordingPool()}, ValueError, "pool is only used with an allocation"),
        ({"on_start": 3}, TypeError, "on_start must be callable"),
        ({"check": "yes"}, TypeError, "check must be a bool, got 'yes'"),
        ({"check": None}, TypeError, "check must be a bool, got None"),
    ],
)
async def test_bad_arguments_are_rejected_before_anything_starts(
    kwargs: dict[str, object], error: type[Exception], match: str, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    call: dict[str, object] = {"cmd": ["touch", str(marker)], **kwargs}
    cmd = call.pop("cmd")
    with pytest.raises(error, match=match):
        await run_process(cmd, **call)  # type: ignore[arg-type]
    assert not marker.exists()


def test_exported() -> None:
    assert gpupool.run_process is run_process
    assert gpupool.ProcessResult is ProcessResult
    assert gpupool.ProcessFailed is ProcessFailed


async def test_the_journaled_task_records_and_forgets_the_process_group(tmp_path: Path) -> None:
    from gpupool._journal.adapter import RunnerJournal
    from gpupool._journal.store import Journal

    path = tmp_path / "journal.sqlite"
    seen_during_run: list[list[tuple[str, int]]] = []

    def rows() -> list[tuple[str, int]]:
        with sqlite3.connect(path) as conn:
            return conn.execute("SELECT key, pgid FROM process_groups").fetchall()

    with Journal(path) as journal:
        assert journal.claim("trial-1") is None
        # What the runner sets around the function of task "trial-1".
        with observing(RunnerJournal(journal).on_process_started("trial-1")):
            async with anyio.create_task_group() as tg:
                started: list[int] = []

                async def run() -> None:
                    await run_process(["sleep", "0.5"], on_start=lambda pid: started.append(pid))

                tg.start_soon(run)
                while not rows():  # noqa: ASYNC110 -- the journal is a file, not an event
                    await anyio.sleep(0.01)
                seen_during_run.append(rows())
        assert seen_during_run == [[("trial-1", started[0])]]
        assert rows() == []


async def test_a_real_pool_learns_the_process_of_its_allocation() -> None:
    from gpupool import FakeGPUProvider, GPUResourcePool

    async with GPUResourcePool(FakeGPUProvider(count=2), settle_timeout=0) as pool:
        async with pool.allocation(required_gpus=1) as alloc:
            result = await run_process("echo $CUDA_VISIBLE_DEVICES", allocation=alloc, pool=pool)
        assert result.output == f"{alloc.gpu_uuids[0]}\n"
        assert pool.statistics().free_gpus == (0, 1)


async def test_without_pool_the_allocation_tells_the_pool_that_granted_it() -> None:
    pool = _RecordingPool()
    alloc = attrs.evolve(
        _allocation(0),
        on_process_started=lambda started: pool.calls.append((started.allocation, started.pid)),
    )
    result = await run_process(["true"], allocation=alloc)
    assert pool.calls == [(alloc, result.pid)]
    await run_process(["true"], allocation=_allocation(1))  # another pool's: not registered
    assert len(pool.calls) == 1


async def test_an_allocation_alone_lets_its_pool_attribute_the_job() -> None:
    """Without ``pool=``, the pool learns the job through the hook its allocation
    carries (this replaced a module-global map of open pools): the released GPU
    then settles until the provider no longer lists the job."""
    provider = FakeGPUProvider(count=2)
    async with GPUResourcePool(provider, settle_timeout=60) as pool:
        async with pool.allocation(required_gpus=1, allowed_gpus={0}) as alloc:
            await run_process(
                ["true"], allocation=alloc, on_start=lambda pid: provider.add_process(0, pid, 500)
            )
        async with pool.allocation(required_gpus=1, allowed_gpus={1}) as other:
            # A process the pool was not told of: its GPU is free at once.
            provider.add_process(1, os.getpid(), 500)
            assert other.gpu_indices == (1,)
        settling = [gpu.settling for gpu in pool.statistics().gpus]
    assert settling == [True, False]


async def test_a_closed_pools_allocation_starts_its_job_without_telling_it() -> None:
    async with GPUResourcePool(FakeGPUProvider(count=1)) as pool:
        alloc = await pool.acquire(1)
    result = await run_process(["true"], allocation=alloc)  # the pool has closed: nothing to tell
    assert result.ok


def test_an_allocation_pickles_without_its_pools_hook() -> None:
    async def grant() -> GPUAllocation:
        async with GPUResourcePool(FakeGPUProvider(count=1)) as pool:
            return await pool.acquire(1)

    alloc = anyio.run(grant)
    assert alloc.on_process_started is not None
    copy = pickle.loads(pickle.dumps(alloc))
    assert copy == alloc
    assert hash(copy) == hash(alloc)
    assert copy.on_process_started is None


async def test_run_process_needs_no_pool_and_no_journal() -> None:
    assert (await run_process(["true"])).ok
    assert (await run_process(["true"], allocation=_allocation(0))).ok


async def test_context_observers_are_told_first_and_their_end_calls_come_in_reverse() -> None:
    calls: list[tuple[str, int]] = []

    def hook(name: str) -> Callable[[StartedProcess], Callable[[], None]]:
        def started(process: StartedProcess) -> Callable[[], None]:
            calls.append((f"{name} started", process.pgid))
            return lambda: calls.append((f"{name} ended", process.pgid))

        return started

    alloc = attrs.evolve(_allocation(0), on_process_started=hook("pool"))
    with observing(hook("outer")), observing(hook("inner")):
        result = await run_process(["true"], allocation=alloc)
    pid = result.pid
    assert calls == [
        ("outer started", pid),
        ("inner started", pid),
        ("pool started", pid),
        ("pool ended", pid),
        ("inner ended", pid),
        ("outer ended", pid),
    ]
    calls.clear()
    await run_process(["true"], allocation=alloc)  # outside the observers: the pool only
    assert [name for name, _ in calls] == ["pool started", "pool ended"]
