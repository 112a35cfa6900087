"""How NVMLProvider maps each kind of NVML error, with a stand-in ``pynvml`` module.

The fake library tests run the real bindings; these pin down the mapping for
every error class, including the ones a fake library cannot produce (the
bindings' own import and version-mismatch errors).
"""

from __future__ import annotations

import subprocess
import sys
import types
from collections.abc import Callable
from typing import Any

import pytest

from gpupool import GPUProcess, NVMLProvider, ProviderError

from .conftest import PYTHON, REPO_ROOT, subprocess_env

UUID = "GPU-12345678-1111-4222-8333-444455556666"
MIB = 1 << 20


class NVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return f"fake NVML error {self.value}"


class NVMLLibraryMismatchError(Exception):
    pass


def fake_pynvml(**overrides: Callable[..., Any]) -> types.ModuleType:
    """One healthy 1000 MiB GPU; ``overrides`` replace any binding function."""
    module = types.ModuleType("pynvml")

    def memory(handle: object, version: int | None = None) -> object:
        if version is None:
            return types.SimpleNamespace(total=1000 * MIB, free=900 * MIB, used=100 * MIB)
        return types.SimpleNamespace(total=1000 * MIB, free=800 * MIB, used=150 * MIB)

    functions: dict[str, Any] = {
        "NVMLError": NVMLError,
        "NVMLLibraryMismatchError": NVMLLibraryMismatchError,
        "nvmlMemory_v2": 0x02000028,
        "nvmlInit": lambda: None,
        "nvmlShutdown": lambda: None,
        "nvmlSystemGetDriverVersion": lambda: "1.2.3",
        "nvmlDeviceGetCount": lambda: 1,
        "nvmlDeviceGetHandleByIndex": lambda i: ("gpu", i),
        "nvmlDeviceGetUUID": lambda h: UUID,
        "nvmlDeviceGetName": lambda h: "Stand-in GPU",
        "nvmlDeviceGetPciInfo": lambda h: types.SimpleNamespace(busId=b"00000000:01:00.0"),
        "nvmlDeviceGetMigMode": lambda h: [0, 0],
        "nvmlDeviceGetMemoryInfo": memory,
        "nvmlDeviceGetUtilizationRates": lambda h: types.SimpleNamespace(gpu=50, memory=0),
        "nvmlDeviceGetComputeRunningProcesses": lambda h: [
            types.SimpleNamespace(pid=7, usedGpuMemory=10 * MIB)
        ],
    }
    functions.update(overrides)
    for name, value in functions.items():
        setattr(module, name, value)
    return module


def fails(code: int) -> Callable[..., Any]:
    def call(*args: object, **kwargs: object) -> Any:
        raise NVMLError(code)

    return call


def install(monkeypatch: pytest.MonkeyPatch, module: types.ModuleType | None) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", module)  # None makes `import pynvml` fail


def snapshot(monkeypatch: pytest.MonkeyPatch, **overrides: Callable[..., Any]) -> Any:
    install(monkeypatch, fake_pynvml(**overrides))
    with NVMLProvider(environ={}) as nvml:
        return nvml.snapshot()


def test_the_stand_in_reads_as_a_healthy_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    (stats,) = snapshot(monkeypatch)
    assert (stats.uuid, stats.name, stats.pci_bus_id) == (UUID, "Stand-in GPU", "00000000:01:00.0")
    assert (stats.memory_total_mb, stats.memory_used_mb) == (1000, 200)  # v2: total - free
    assert stats.utilization_pct == 50.0
    assert stats.processes == (GPUProcess(7, 10),)


def test_bindings_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, None)
    with pytest.raises(ProviderError, match=r"pip install 'gpupool\[nvml\]'") as info:
        NVMLProvider(environ={}).snapshot()
    assert "FakeGPUProvider" in str(info.value)


@pytest.mark.parametrize(
    ("code", "fragment"),
    [
        (12, "libnvidia-ml.so.1) was not found"),  # NVML_ERROR_LIBRARY_NOT_FOUND
        (9, "kernel driver is not loaded"),  # NVML_ERROR_DRIVER_NOT_LOADED
        (18, "driver was upgraded without a reboot"),  # NVML_ERROR_LIB_RM_VERSION_MISMATCH
        (13, "driver is too old"),  # NVML_ERROR_FUNCTION_NOT_FOUND
        (4, "may not access the GPUs"),  # NVML_ERROR_NO_PERMISSION
        (999, "fake NVML error 999 (NVML error code 999)"),  # NVML_ERROR_UNKNOWN
    ],
)
def test_init_failures(monkeypatch: pytest.MonkeyPatch, code: int, fragment: str) -> None:
    install(monkeypatch, fake_pynvml(nvmlInit=fails(code)))
    with pytest.raises(ProviderError) as info:
        NVMLProvider(environ={}).snapshot()
    message = str(info.value)
    assert message.startswith("cannot use NVML: ")
    assert fragment in message
    assert "--fake-gpus" in message


def test_failed_start_shuts_nvml_down_again(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    install(monkeypatch, fake_pynvml(nvmlShutdown=lambda: calls.append("shutdown")))
    with pytest.raises(ProviderError, match="CUDA_VISIBLE_DEVICES"):
        NVMLProvider(environ={"CUDA_VISIBLE_DEVICES": "3"}).snapshot()
    assert calls == ["shutdown"]


@pytest.mark.parametrize("code", [1, 9, 12, 18])  # uninitialised, no driver, not found, mismatch
def test_library_wide_errors_fail_the_snapshot(monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    with pytest.raises(ProviderError, match=f"NVML stopped working.*code {code}"):
        snapshot(monkeypatch, nvmlDeviceGetUtilizationRates=fails(code))


@pytest.mark.parametrize("code", [15, 16, 999, 10])  # lost, reset required, unknown, timeout
def test_device_errors_make_that_gpu_unhealthy(monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    (stats,) = snapshot(monkeypatch, nvmlDeviceGetMemoryInfo=fails(code))
    assert not stats.healthy
    assert stats.health_detail == f"fake NVML error {code} (NVML error code {code})"


@pytest.mark.parametrize("code", [3, 4, 13, 21])  # not supported, permission, missing, no data
def test_unavailable_fields_are_none(monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    (stats,) = snapshot(
        monkeypatch,
        nvmlDeviceGetUtilizationRates=fails(code),
        nvmlDeviceGetComputeRunningProcesses=fails(code),
        nvmlDeviceGetPciInfo=fails(code),
    )
    assert stats.healthy
    assert stats.utilization_pct is None
    assert stats.processes == ()
    assert stats.pci_bus_id is None


def test_process_list_changing_mid_query_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    answers: list[Any] = [NVMLError(7), [types.SimpleNamespace(pid=3, usedGpuMemory=None)]]

    def processes(handle: object) -> Any:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    (stats,) = snapshot(monkeypatch, nvmlDeviceGetComputeRunningProcesses=processes)
    assert stats.processes == (GPUProcess(3, None),)


def test_process_versions_missing_from_the_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    def mismatch(handle: object) -> Any:
        raise NVMLLibraryMismatchError("use _v2")

    (stats,) = snapshot(
        monkeypatch,
        nvmlDeviceGetComputeRunningProcesses=mismatch,
        nvmlDeviceGetComputeRunningProcesses_v2=lambda h: [
            types.SimpleNamespace(pid=8, usedGpuMemory=2 * MIB)
        ],
    )
    assert stats.processes == (GPUProcess(8, 2),)


def test_old_bindings_without_the_memory_version_argument(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def v1_only(handle: object) -> object:
        return types.SimpleNamespace(total=1000 * MIB, free=900 * MIB, used=100 * MIB)

    (stats,) = snapshot(monkeypatch, nvmlDeviceGetMemoryInfo=v1_only)
    assert (stats.memory_total_mb, stats.memory_used_mb) == (1000, 100)


def test_import_gpupool_does_not_import_pynvml() -> None:
    code = "import sys, gpupool; print('pynvml' in sys.modules)"
    done = subprocess.run(
        [PYTHON, "-c", code],
        cwd=REPO_ROOT,
        env=subprocess_env(None, None),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip() == "False"


def test_exported_from_the_package() -> None:
    import gpupool
    import gpupool.providers

    assert gpupool.NVMLProvider is gpupool.providers.NVMLProvider is NVMLProvider
    assert "NVMLProvider" in gpupool.__all__
    assert "NVMLProvider" in gpupool.providers.__all__
    if sys.version_info >= (3, 11):  # typing.final marks the class from 3.11 on
        assert NVMLProvider.__final__  # type: ignore[attr-defined]
