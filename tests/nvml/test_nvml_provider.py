"""NVMLProvider through the real nvidia-ml-py bindings, talking to the fake libnvidia-ml."""

from __future__ import annotations

import ctypes
import logging
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from gpupool import GPUProcess, NVMLProvider, ProviderError

from ..fake_nvml import (
    ARGUMENT_VERSION_MISMATCH,
    DRIVER_NOT_LOADED,
    GPU_IS_LOST,
    LIB_RM_VERSION_MISMATCH,
    NO_PERMISSION,
    NOT_FOUND,
    NOT_SUPPORTED,
    UNKNOWN,
    FakeDevice,
    FakeMachine,
    gpu_uuid,
    mig_uuid,
)
from .conftest import PYTHON, REPO_ROOT, subprocess_env


def provider(**environ: str) -> NVMLProvider:
    return NVMLProvider(environ=environ)


def test_reads_every_field(machine: FakeMachine) -> None:
    machine.add_gpu(
        name="NVIDIA H100 80GB HBM3",
        total_mb=81_559,
        used_mb=10_000,
        reserved_mb=500,
        utilization=37,
        bus_id="00000000:17:00.0",
        processes={4242: 6_000, 4343: None},
    )
    machine.add_gpu(total_mb=40_960)
    with provider() as nvml:
        first, second = nvml.snapshot()
        assert nvml.driver_version == "550.54.15"
    assert first.index == 0
    assert first.uuid == gpu_uuid(0)
    assert first.name == "NVIDIA H100 80GB HBM3"
    assert first.pci_bus_id == "00000000:17:00.0"
    assert first.memory_total_mb == 81_559
    # Driver-reserved memory is not free, so it counts as used.
    assert first.memory_used_mb == 10_500
    assert first.utilization_pct == 37.0
    assert first.healthy
    assert first.health_detail is None
    assert first.processes == (GPUProcess(4242, 6_000), GPUProcess(4343, None))
    assert (second.index, second.uuid, second.memory_used_mb) == (1, gpu_uuid(1), 0)
    assert second.processes == ()


def test_each_snapshot_sees_the_current_state(machine: FakeMachine) -> None:
    gpu = machine.add_gpu()
    with provider() as nvml:
        assert nvml.snapshot()[0].memory_used_mb == 0
        gpu.used_mb, gpu.processes = 2_048, {77: 2_048}
        machine.write()
        (stats,) = nvml.snapshot()
        assert (stats.memory_used_mb, stats.processes) == (2_048, (GPUProcess(77, 2_048),))


def test_memory_v1_fallback_when_v2_is_rejected(machine: FakeMachine) -> None:
    # Old drivers reject the v2 struct version; v1 (used includes reserved) answers.
    machine.add_gpu(
        total_mb=1_000, used_mb=100, reserved_mb=50,
        errors={"memory_v2_error": ARGUMENT_VERSION_MISMATCH},
    )  # fmt: skip
    with provider() as nvml:
        for _ in range(2):
            (stats,) = nvml.snapshot()
            assert (stats.memory_total_mb, stats.memory_used_mb) == (1_000, 150)


def test_lost_gpu_is_unhealthy_and_the_others_keep_working(
    machine: FakeMachine, caplog: pytest.LogCaptureFixture
) -> None:
    machine.add_gpu(used_mb=1_000)
    lost = machine.add_gpu(used_mb=3_000)
    with provider() as nvml:
        assert [s.healthy for s in nvml.snapshot()] == [True, True]
        lost.errors["error"] = GPU_IS_LOST
        machine.write()
        with caplog.at_level(logging.WARNING, logger="gpupool"):
            good, bad = nvml.snapshot()
        assert good.healthy
        assert good.memory_used_mb == 1_000
        assert not bad.healthy
        assert bad.health_detail is not None
        assert "lost" in bad.health_detail.lower()
        # The last known identity and memory stay, so the GPU is still recognisable.
        assert (bad.uuid, bad.memory_used_mb, bad.utilization_pct) == (gpu_uuid(1), 3_000, None)
        assert "unhealthy" in caplog.text
        del lost.errors["error"]
        machine.write()
        assert [s.healthy for s in nvml.snapshot()] == [True, True]


@pytest.mark.parametrize("code", [UNKNOWN, 16])  # unknown error, reset required
def test_other_device_errors_make_the_gpu_unhealthy(machine: FakeMachine, code: int) -> None:
    machine.add_gpu(errors={"util_error": code})
    with provider() as nvml:
        (stats,) = nvml.snapshot()
    assert not stats.healthy
    assert f"NVML error code {code}" in (stats.health_detail or "")


@pytest.mark.parametrize("code", [NOT_SUPPORTED, NO_PERMISSION])
def test_unavailable_fields_become_none(machine: FakeMachine, code: int) -> None:
    machine.add_gpu(used_mb=10, processes={5: 10}, errors={"util_error": code})
    machine.add_gpu(processes={6: 10}, errors={"procs_error": code})
    with provider() as nvml:
        first, second = nvml.snapshot()
    assert first.healthy
    assert first.utilization_pct is None
    assert first.processes == (GPUProcess(5, 10),)
    assert second.healthy
    assert second.processes == ()


def test_memory_not_supported_reads_as_zero(machine: FakeMachine) -> None:
    machine.add_gpu(errors={"memory_error": NOT_SUPPORTED})
    with provider() as nvml:
        (stats,) = nvml.snapshot()
    assert stats.healthy
    assert (stats.memory_total_mb, stats.memory_used_mb) == (0, 0)


def test_process_vanishing_mid_query_is_not_an_error(machine: FakeMachine) -> None:
    machine.add_gpu(processes={9: 100}, errors={"procs_error": NOT_FOUND})
    with provider() as nvml:
        (stats,) = nvml.snapshot()
    assert stats.healthy
    assert stats.processes == ()


@pytest.mark.parametrize(
    ("code", "fragment"),
    [
        (DRIVER_NOT_LOADED, "kernel driver is not loaded"),
        (LIB_RM_VERSION_MISMATCH, "Reboot"),
        (NO_PERMISSION, "/dev/nvidia"),
        (UNKNOWN, "NVML error code 999"),
    ],
)
def test_init_failures_explain_the_fix(machine: FakeMachine, code: int, fragment: str) -> None:
    machine.init_error = code
    machine.write()
    nvml = provider()
    with pytest.raises(ProviderError) as info:
        nvml.snapshot()
    message = str(info.value)
    assert fragment in message
    assert "FakeGPUProvider" in message
    assert "--fake-gpus" in message


def test_driver_lost_after_start_fails_the_snapshot_not_the_provider(
    machine: FakeMachine,
) -> None:
    gpu = machine.add_gpu()
    with provider() as nvml:
        nvml.snapshot()
        gpu.errors["error"] = DRIVER_NOT_LOADED
        machine.write()
        with pytest.raises(ProviderError, match="NVML stopped working"):
            nvml.snapshot()
        del gpu.errors["error"]
        machine.write()
        assert nvml.snapshot()[0].healthy


def test_restarts_after_another_user_shut_nvml_down(
    machine: FakeMachine, fake_nvml_lib: ctypes.CDLL
) -> None:
    machine.add_gpu()
    with provider() as nvml:
        nvml.snapshot()
        fake_nvml_lib.nvmlShutdown()  # say, another library's unbalanced shutdown
        with pytest.raises(ProviderError, match="Uninitialized"):
            nvml.snapshot()
        assert nvml.snapshot()[0].healthy
        assert fake_nvml_lib.fakeNvmlInitCount() == 1


def test_close_shuts_nvml_down_and_later_snapshots_fail(machine: FakeMachine) -> None:
    machine.add_gpu()
    nvml = provider()
    nvml.snapshot()
    nvml.close()
    nvml.close()  # idempotent
    with pytest.raises(ProviderError, match="closed"):
        nvml.snapshot()


def test_close_before_start_does_not_touch_nvml(machine: FakeMachine) -> None:
    provider().close()


def test_environ_must_be_a_mapping() -> None:
    with pytest.raises(TypeError, match="environ must be a mapping"):
        NVMLProvider(environ=["CUDA_VISIBLE_DEVICES=0"])  # type: ignore[arg-type]


# ---- device identity ---------------------------------------------------------


def test_visible_devices_by_uuid_and_index(machine: FakeMachine) -> None:
    for bus in ("3B", "5E", "1A"):
        machine.add_gpu(bus_id=f"00000000:{bus}:00.0")
    with provider(CUDA_VISIBLE_DEVICES=f"{gpu_uuid(2)[:12]},{gpu_uuid(0)}") as nvml:
        assert [s.uuid for s in nvml.snapshot()] == [gpu_uuid(0), gpu_uuid(2)]
    # CUDA index 0 (PCI order) is the GPU on bus 1A, which NVML numbers 2.
    with provider(CUDA_VISIBLE_DEVICES="0", CUDA_DEVICE_ORDER="PCI_BUS_ID") as nvml:
        assert [(s.index, s.uuid) for s in nvml.snapshot()] == [(2, gpu_uuid(2))]
    with provider(CUDA_VISIBLE_DEVICES="") as nvml:
        assert nvml.snapshot() == []


@pytest.mark.parametrize(
    ("value", "fragment"),
    [("0,x", "entry 'x'"), ("GPU-ffff", "matches no device"), ("5", "sees 2")],
)
def test_bad_visible_devices_is_a_provider_error(
    machine: FakeMachine, value: str, fragment: str
) -> None:
    machine.add_gpu()
    machine.add_gpu()
    with pytest.raises(ProviderError, match="CUDA_VISIBLE_DEVICES") as info:
        provider(CUDA_VISIBLE_DEVICES=value).snapshot()
    assert fragment in str(info.value)


def mig_gpu(gpu: int, slots: dict[int, int]) -> FakeDevice:
    return FakeDevice(
        uuid=gpu_uuid(gpu),
        mig=True,
        instances={
            slot: FakeDevice(mig_uuid(gpu, slot), name="NVIDIA A100 MIG 3g.20gb", total_mb=mb)
            for slot, mb in slots.items()
        },
    )


def test_mig_instances_are_devices_with_their_own_memory(machine: FakeMachine) -> None:
    machine.add_gpu(mig=False)
    machine.gpus.append(mig_gpu(1, {0: 19_968, 4: 9_728}))  # slots 1-3 empty
    machine.gpus[1].instances[4].processes = {31: 1_000}
    machine.gpus[1].instances[4].used_mb = 1_000
    machine.add_gpu()
    with provider() as nvml:
        stats = nvml.snapshot()
    assert [(s.index, s.uuid) for s in stats] == [
        (0, gpu_uuid(0)),
        (1, mig_uuid(1, 0)),
        (2, mig_uuid(1, 4)),
        (3, gpu_uuid(2)),
    ]
    mig = stats[2]
    assert (mig.memory_total_mb, mig.memory_used_mb) == (9_728, 1_000)
    assert mig.utilization_pct is None  # NVML cannot report it for MIG
    assert mig.healthy
    assert mig.processes == (GPUProcess(31, 1_000),)
    assert mig.pci_bus_id == "00000000:11:00.0"  # the parent GPU's
    with provider(CUDA_VISIBLE_DEVICES=mig_uuid(1, 4)) as nvml:
        assert [s.uuid for s in nvml.snapshot()] == [mig_uuid(1, 4)]
    with provider(CUDA_VISIBLE_DEVICES=gpu_uuid(1)) as nvml:
        assert [s.uuid for s in nvml.snapshot()] == [mig_uuid(1, 0), mig_uuid(1, 4)]


def test_lost_mig_gpu_makes_its_instances_unhealthy(machine: FakeMachine) -> None:
    machine.gpus.append(mig_gpu(0, {0: 5_000, 1: 5_000}))
    machine.write()
    with provider() as nvml:
        nvml.snapshot()
        machine.gpus[0].errors["error"] = GPU_IS_LOST
        machine.write()
        assert [s.healthy for s in nvml.snapshot()] == [False, False]


@pytest.mark.parametrize("query", ["handle_error", "uuid_error", "name_error"])
def test_gpu_that_cannot_be_identified_is_listed_unhealthy(
    machine: FakeMachine, query: str
) -> None:
    machine.add_gpu(errors={query: GPU_IS_LOST})
    machine.add_gpu()
    with provider() as nvml:
        broken, good = nvml.snapshot()
    assert not broken.healthy
    assert "lost" in (broken.health_detail or "").lower()
    assert broken.uuid == "unidentified-nvml-0"
    assert good.healthy
    assert good.uuid == gpu_uuid(1)


# ---- old drivers: variants of the library without the newer symbols ------------

FALLBACK_SCRIPT = """
import json
from gpupool import NVMLProvider, ProviderError
try:
    with NVMLProvider() as nvml:
        print(json.dumps([[s.memory_total_mb, s.memory_used_mb] for s in nvml.snapshot()]))
except ProviderError as error:
    print("ProviderError:", error)
"""


def run_script(library_dir: Path | None, machine: FakeMachine | None) -> str:
    done = subprocess.run(
        [PYTHON, "-c", FALLBACK_SCRIPT],
        cwd=REPO_ROOT,
        env=subprocess_env(library_dir, machine),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


def test_driver_without_memory_v2_symbol_falls_back_to_v1(
    fake_nvml_build: Callable[..., Path], tmp_path: Path
) -> None:
    state = FakeMachine(tmp_path / "state")
    state.add_gpu(total_mb=1_000, used_mb=100, reserved_mb=50)
    assert run_script(fake_nvml_build("FAKE_NVML_NO_MEMORY_V2"), state) == "[[1000, 150]]"


def test_driver_too_old_for_the_bindings(
    fake_nvml_build: Callable[..., Path], tmp_path: Path
) -> None:
    state = FakeMachine(tmp_path / "state")
    state.add_gpu()
    out = run_script(fake_nvml_build("FAKE_NVML_NO_INIT_WITH_FLAGS"), state)
    assert out.startswith("ProviderError: cannot use NVML: the installed NVIDIA driver is too old")


def test_library_not_found(fake_nvml_build: Callable[..., Path], tmp_path: Path) -> None:
    import ctypes.util

    if ctypes.util.find_library("nvidia-ml"):
        pytest.skip("this machine has a real libnvidia-ml, so it cannot be 'not found'")
    out = run_script(tmp_path, None)  # an empty directory: no library anywhere
    assert out.startswith("ProviderError: cannot use NVML: the NVIDIA driver's NVML library")
    assert "libnvidia-ml.so.1" in out
    assert "--fake-gpus" in out
