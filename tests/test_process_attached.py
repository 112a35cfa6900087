"""``run_attached`` (what ``gpupool reserve -- COMMAND`` runs with): the caller's stdio,
the allocation's GPUs, and ``run_process``'s way of ending a job."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from gpupool import FakeGPUProvider, GPUAllocation, GPUResourcePool
from gpupool._process.attached import run_attached

from .waiting import gone, wait_for


@contextlib.asynccontextmanager
async def _gpus(count: int) -> AsyncIterator[GPUAllocation]:
    async with (
        GPUResourcePool(FakeGPUProvider(count), ledger=None) as pool,
        pool.allocation(count) as allocation,
    ):
        yield allocation


@pytest.mark.anyio
async def test_the_command_writes_to_the_callers_stdout_with_its_gpus(
    capfd: pytest.CaptureFixture[str],
) -> None:
    async with _gpus(2) as allocation:
        code = await run_attached(
            ["sh", "-c", 'echo "$CUDA_VISIBLE_DEVICES $EXTRA"; exit 4'],
            allocation=allocation,
            env={"EXTRA": "x"},
        )
    assert code == 4
    assert capfd.readouterr().out == f"{','.join(allocation.gpu_uuids)} x\n"


@pytest.mark.anyio
async def test_the_command_leads_a_session_of_its_own(tmp_path: Path) -> None:
    started: list[int] = []
    async with _gpus(1) as allocation:
        code = await run_attached(
            ["sh", "-c", f"cat /proc/self/stat > {tmp_path / 'stat'}"],
            allocation=allocation,
            on_start=started.append,
        )
    assert code == 0
    (pid,) = started
    fields = (tmp_path / "stat").read_text().rpartition(")")[2].split()
    assert int(fields[2]) == int(fields[3])  # the child's group is the job's session
    assert int(fields[3]) == pid
    assert pid != os.getsid(0)


@pytest.mark.anyio
async def test_cancelling_ends_the_command_with_sigterm_then_sigkill(tmp_path: Path) -> None:
    started: list[int] = []
    ready, got = tmp_path / "ready", tmp_path / "got"
    script = f'trap "echo TERM > {got}" TERM; touch {ready}; while :; do sleep 0.05; done'
    async with _gpus(1) as allocation, anyio.create_task_group() as tg:

        async def stop_when_ready() -> None:
            await anyio.to_thread.run_sync(functools.partial(wait_for, ready.exists, "the trap"))
            tg.cancel_scope.cancel()

        tg.start_soon(stop_when_ready)
        # The grace must outlast the trap (sh runs it once its `sleep` has died): on a
        # loaded 2-core CI machine 0.5 s was once too short, and the SIGKILL cut the echo.
        await run_attached(
            ["sh", "-c", script], allocation=allocation, grace_period=3.0, on_start=started.append
        )
    assert got.read_text() == "TERM\n"
    assert gone(started[0])  # it ignored SIGTERM (the trap): SIGKILL after the grace


@pytest.mark.anyio
async def test_a_missing_command_raises_file_not_found() -> None:
    async with _gpus(1) as allocation:
        with pytest.raises(FileNotFoundError):
            await run_attached(["no-such-command-here"], allocation=allocation)


@pytest.mark.anyio
async def test_bad_arguments_are_refused() -> None:
    with pytest.raises(TypeError, match="allocation"):
        await run_attached(["true"], allocation=None)  # type: ignore[arg-type]
    async with _gpus(1) as allocation:
        with pytest.raises(ValueError, match="non-empty command"):
            await run_attached([], allocation=allocation)
