"""``gpupool.machine_status()``: the machine-wide view, read from a ledger that real
processes hold GPUs in (fake GPUs shared through the ledger)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import pytest

import gpupool
from gpupool import (
    FakeGPUProvider,
    LedgerHolder,
    LedgerWaiter,
    MachineGPU,
    MachineStatus,
    OtherProcess,
    ProviderError,
    machine_status,
)
from gpupool._core.errors import LedgerError
from gpupool.providers.fake import fake_uuid

from .ledger_helpers import MEMBER_SCRIPT, Member, env, members, session_members
from .waiting import gone, wait_for


@pytest.fixture
def start() -> Iterator[Callable[..., Member]]:
    with members() as start:
        yield start


def _status(ledger: Path, provider: FakeGPUProvider | None = None) -> MachineStatus:
    return machine_status(ledger, provider=FakeGPUProvider(2) if provider is None else provider)


def _gpu(status: MachineStatus, uuid: str) -> MachineGPU:
    (gpu,) = [g for g in status.gpus if g.uuid == uuid]
    return gpu


# -- where the ledger is, and when there is none ------------------------------------


def test_a_directory_without_a_ledger_is_an_idle_machine_and_stays_untouched(
    tmp_path: Path,
) -> None:
    status = _status(tmp_path)
    assert status.ledger == str(tmp_path)
    assert [g.uuid for g in status.gpus] == [fake_uuid(0), fake_uuid(1)]
    assert status.holders == ()
    assert status.waiters == ()
    assert all(g.holders == () and g.memory_reserved_mb == 0 for g in status.gpus)
    assert os.listdir(tmp_path) == []  # nothing created


def test_a_directory_that_does_not_exist_is_a_ledger_error_and_is_not_created(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(LedgerError, match=r"no ledger at .*nowhere.*does not exist"):
        _status(missing)
    assert not missing.exists()


def test_the_default_ledger_is_gpupool_ledger_and_a_missing_one_is_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GPUPOOL_LEDGER", str(tmp_path / "default"))
    status = machine_status(provider=FakeGPUProvider(1))
    assert status.ledger == str(tmp_path / "default")
    assert status.holders == ()
    assert len(status.gpus) == 1
    assert not (tmp_path / "default").exists()


@pytest.mark.parametrize("value", ["off", "None", " OFF "])
def test_a_ledger_turned_off_is_an_error_that_names_the_variable(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GPUPOOL_LEDGER", value)
    with pytest.raises(LedgerError, match=r"turned off.*\$GPUPOOL_LEDGER"):
        machine_status(provider=FakeGPUProvider(1))


@pytest.mark.parametrize("ledger", [42, b"/tmp", ["/tmp"]])
def test_a_ledger_of_the_wrong_type_is_a_type_error_naming_it(ledger: object) -> None:
    with pytest.raises(TypeError, match=r"^ledger must be .* got "):
        machine_status(ledger, provider=FakeGPUProvider(1))  # type: ignore[arg-type]


def test_a_provider_without_snapshot_is_a_type_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"^provider must be a GPUProvider .* got "):
        machine_status(tmp_path, provider=object())  # type: ignore[arg-type]


def test_a_file_where_the_directory_should_be_is_a_ledger_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(LedgerError, match="not a directory"):
        _status(tmp_path / "file")


def test_the_values_are_frozen_and_exported() -> None:
    for cls in (MachineStatus, MachineGPU, LedgerHolder, LedgerWaiter, OtherProcess):
        assert attrs.has(cls)
        assert cls.__setattr__ is not object.__setattr__
        assert getattr(gpupool, cls.__name__) is cls
    assert gpupool.machine_status is machine_status


# -- holders and waiters of other processes ----------------------------------------


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_every_holder_of_every_process_is_shown(
    backend: str, tmp_path: Path, start: Callable[..., Member]
) -> None:
    before = time.time()
    whole = start(tmp_path, "--key", "sweep-7", "--backend", backend).ready()
    shared = start(tmp_path, "--mem", "4000", "--shared", "--backend", backend).ready()
    status = _status(tmp_path)
    assert [h.pid for h in status.holders] == [whole["pid"], shared["pid"]]  # oldest first
    first, second = status.holders
    assert first.kind == "allocation"
    assert first.key == "sweep-7"
    assert first.exclusive
    assert first.gpu_uuids == tuple(whole["gpus"])
    assert not second.exclusive
    assert second.memory_mb == 4000
    assert second.key is None
    assert second.gpu_uuids == tuple(shared["gpus"]) != first.gpu_uuids
    for holder in status.holders:
        assert holder.uid == os.getuid()
        assert holder.user
        assert str(MEMBER_SCRIPT) in holder.command
        assert holder.same_pid_namespace
        assert not holder.orphaned
        assert before <= holder.since <= time.time()
        assert holder.until is None
        assert holder.job_pids == ()
    whole_gpu, shared_gpu = _gpu(status, whole["gpus"][0]), _gpu(status, shared["gpus"][0])
    assert whole_gpu.holders == (first,)
    assert shared_gpu.holders == (second,)
    assert whole_gpu.memory_reserved_mb == whole_gpu.memory_total_mb
    assert shared_gpu.memory_reserved_mb == 4000


def test_the_queue_is_listed_in_order_of_service(
    tmp_path: Path, start: Callable[..., Member]
) -> None:
    holder = start(tmp_path, "--gpus", "2")
    holder.ready()
    waiting: list[int] = []
    for priority in ("0", "5", "0"):
        member = start(tmp_path, "--priority", priority, "--key", f"p{priority}")
        waiting.append(member.pid)
        wait_for(lambda: len(_status(tmp_path).waiters) == len(waiting), "the waiter to be queued")
    status = _status(tmp_path)
    # Priority first, then arrival: the priority-5 request, then the two others in order.
    assert [w.pid for w in status.waiters] == [waiting[1], waiting[0], waiting[2]]
    assert [w.priority for w in status.waiters] == [5, 0, 0]
    for waiter in status.waiters:
        assert waiter.required_gpus == 1
        assert waiter.exclusive
        assert waiter.min_memory_mb == 0
        assert set(waiter.gpu_uuids) == {fake_uuid(0), fake_uuid(1)}
        assert waiter.same_pid_namespace
        assert waiter.user
    assert status.waiters[0].key == "p5"
    tickets = [w.ticket for w in status.waiters]
    assert tickets[1] < tickets[2]
    assert tickets[0] > tickets[1]
    holder.close()
    after = wait_for(lambda: _waiters_when_held(tmp_path, 2), "two waiters to be granted")
    assert [w.pid for w in after.waiters] == [waiting[2]]  # the last one still waits


def _waiters_when_held(ledger: Path, holders: int) -> MachineStatus | None:
    status = _status(ledger)
    return status if len(status.holders) == holders else None


# -- the dead ---------------------------------------------------------------------------


def test_a_holder_killed_with_sigkill_is_left_out_at_once(
    tmp_path: Path, start: Callable[..., Member]
) -> None:
    member = start(tmp_path)
    member.ready()
    assert len(_status(tmp_path).holders) == 1
    member.kill()
    assert _status(tmp_path).holders == ()  # its lock died with it: nothing to wait for


def test_a_dead_holder_whose_job_still_runs_is_shown_orphaned_until_the_job_ends(
    tmp_path: Path, start: Callable[..., Member]
) -> None:
    member = start(tmp_path, "--job")
    info = member.ready()
    (holder,) = _status(tmp_path).holders
    assert holder.job_pids == (info["job"],)
    assert not holder.orphaned
    member.kill()  # its job, in a session of its own, lives on
    (holder,) = _status(tmp_path).holders
    assert holder.orphaned
    assert holder.pid == info["pid"]
    assert holder.job_pids == (info["job"],)
    os.killpg(info["job"], signal.SIGKILL)
    wait_for(lambda: gone(info["job"]), "the job to end")
    assert _status(tmp_path).holders == ()


# -- processes NVML lists --------------------------------------------------------------


def test_processes_not_in_the_ledger_are_listed_and_the_vanished_flagged(
    tmp_path: Path, start: Callable[..., Member]
) -> None:
    member = start(tmp_path, "--job")
    info = member.ready()
    index = [fake_uuid(i) for i in range(2)].index(info["gpus"][0])
    helper = wait_for(
        lambda: session_members(info["job"], exclude=[info["job"]]), "the job's child"
    )[0]
    foreign = subprocess.Popen(["sleep", "600"], start_new_session=True)
    vanished = subprocess.Popen(["true"])
    vanished.wait()
    try:
        fake = FakeGPUProvider(2)
        fake.add_process(index, info["pid"], 100)  # the member itself
        fake.add_process(index, info["job"], 200)  # its registered job
        fake.add_process(index, helper, 300)  # a process in the job's session
        fake.add_process(index, foreign.pid, 400)  # someone else's
        fake.add_process(index, vanished.pid, 500)  # gone, the driver still counts it
        fake.add_process(1 - index, foreign.pid, None)  # no memory figure: shown as None
        status = _status(tmp_path, fake)
        gpu = _gpu(status, info["gpus"][0])
        assert gpu.memory_used_mb == 1500
        assert gpu.other_processes == (
            OtherProcess(pid=foreign.pid, memory_mb=400, name="sleep", alive=True),
            OtherProcess(pid=vanished.pid, memory_mb=500, name=None, alive=False),
        )
        other = _gpu(status, fake_uuid(1 - index))
        assert other.other_processes == (OtherProcess(foreign.pid, None, "sleep", True),)
        assert other.holders == ()
    finally:
        foreign.kill()
        foreign.wait()


def test_without_nvml_the_gpus_are_the_ones_the_ledger_recorded(
    tmp_path: Path, start: Callable[..., Member], monkeypatch: pytest.MonkeyPatch
) -> None:
    from gpupool.providers import nvml

    def no_nvml(self: object) -> list[gpupool.GPUStats]:
        raise ProviderError("cannot use NVML: not on this test machine")

    monkeypatch.setattr(nvml.NVMLProvider, "snapshot", no_nvml)
    info = start(tmp_path, "--count", "3").ready()
    status = machine_status(tmp_path)
    assert [g.uuid for g in status.gpus] == [fake_uuid(i) for i in range(3)]
    assert [g.name for g in status.gpus] == [f"Fake GPU {i}" for i in range(3)]
    assert [h.pid for h in _gpu(status, info["gpus"][0]).holders] == [info["pid"]]
    (note,) = status.notes
    assert "NVML cannot be used here" in note
    assert "not on this test machine" in note
    assert "as a pool last recorded them" in note


def test_without_nvml_or_gpus_in_the_ledger_the_providers_error_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing to show: an empty view would hide why, so NVML's own error is raised."""
    from gpupool.providers import nvml

    def no_nvml(self: object) -> list[gpupool.GPUStats]:
        raise ProviderError("cannot use NVML: not here")

    monkeypatch.setattr(nvml.NVMLProvider, "snapshot", no_nvml)
    with pytest.raises(ProviderError, match="cannot use NVML: not here"):
        machine_status(tmp_path)


def test_a_holder_on_a_gpu_the_provider_does_not_list_is_still_shown(
    tmp_path: Path, start: Callable[..., Member]
) -> None:
    start(tmp_path, "--count", "2", "--gpus", "2").ready()
    status = _status(tmp_path, FakeGPUProvider(1))
    assert [g.uuid for g in status.gpus] == [fake_uuid(0), fake_uuid(1)]
    assert all(len(g.holders) == 1 for g in status.gpus)


# -- other PID namespaces -----------------------------------------------------------------


def _unshare_works() -> bool:
    try:
        done = subprocess.run(
            ["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def test_a_holder_in_another_pid_namespace_is_flagged(tmp_path: Path) -> None:
    if not _unshare_works():
        pytest.skip("cannot make a PID namespace here (unshare --pid needs root or userns)")
    process = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount-proc",
         sys.executable, str(MEMBER_SCRIPT), str(tmp_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env(),
    )  # fmt: skip
    member = Member(process)
    try:
        info = member.ready()
        assert info["pid"] == 1  # its pid in its own namespace
        (holder,) = _status(tmp_path).holders
        assert not holder.same_pid_namespace
        assert holder.pid == 1
        status = _status(tmp_path)
        assert status.gpus[0].other_processes == ()  # nothing NVML lists: nothing else shown
    finally:
        member.close()
        assert process.stdout is not None
        process.stdout.close()
    assert _status(tmp_path).holders == ()
