"""gpupool.integrations.torch.limit_memory against the real PyTorch.

This machine has no GPU, so only the CUDA calls that need one are replaced
(``is_available``, ``device_count``, ``set_per_process_memory_fraction``, and
``get_device_properties`` for matching by UUID); the arguments they receive
are what is checked. Skipped where PyTorch is not installed (it is not in the
``dev`` extra: see docs/dependencies.md), except the test of that very case.
"""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest

from gpupool import GPUAllocation
from gpupool.integrations.torch import limit_memory
from gpupool.providers.fake import fake_uuid


@pytest.fixture
def torch() -> Any:
    return pytest.importorskip("torch")


def _shared(memory_mb: int, indices: tuple[int, ...], totals: tuple[int, ...]) -> GPUAllocation:
    return GPUAllocation(
        3,
        indices,
        tuple(fake_uuid(i) for i in indices),
        memory_mb,
        exclusive=False,
        gpu_memory_total_mb=totals,
    )


@pytest.fixture
def cuda(torch: Any, monkeypatch: pytest.MonkeyPatch) -> list[tuple[float, int]]:
    """Pretend CUDA with 4 devices; returns the (fraction, device) calls made."""
    calls: list[tuple[float, int]] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(
        torch.cuda,
        "set_per_process_memory_fraction",
        lambda fraction, device: calls.append((fraction, device)),
    )
    return calls


def test_in_the_jobs_own_process_device_i_is_the_allocations_gpu_i(
    torch: Any, cuda: list[tuple[float, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    alloc = _shared(8192, (1, 3), (24_576, 16_384))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", alloc.device_env["CUDA_VISIBLE_DEVICES"])
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert limit_memory(alloc) == {0: 0.3333, 1: 0.5}
    # Per GPU, of its own total: torch takes one fraction per device.
    assert cuda == [(0.3333, 0), (0.5, 1)]


def test_elsewhere_the_devices_are_found_by_uuid(
    torch: Any, cuda: list[tuple[float, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    # PyTorch writes a device's UUID without NVML's "GPU-" prefix.
    uuids = {d: fake_uuid(d).removeprefix("GPU-") for d in range(4)}
    monkeypatch.setattr(
        torch.cuda,
        "get_device_properties",
        lambda d: types.SimpleNamespace(uuid=uuids[d], total_memory=24_576 * 2**20),
    )
    alloc = _shared(6144, (2,), ())  # sizes unknown to the pool: PyTorch's are used
    assert limit_memory(alloc) == {2: 0.25}
    assert cuda == [(0.25, 2)]


def test_devices_can_be_named(cuda: list[tuple[float, int]]) -> None:
    alloc = _shared(4096, (0, 1), (8192, 8192))
    assert limit_memory(alloc, devices=[1, 0]) == {1: 0.5, 0: 0.5}
    with pytest.raises(ValueError, match="one PyTorch device per GPU of the allocation"):
        limit_memory(alloc, devices=[0])
    with pytest.raises(TypeError, match="devices must be a sequence"):
        limit_memory(alloc, devices=0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="allocation must be a GPUAllocation"):
        limit_memory("GPU-0")  # type: ignore[arg-type]


def test_gpus_pytorch_cannot_see_are_an_error(
    torch: Any, cuda: list[tuple[float, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(
        torch.cuda, "get_device_properties", lambda d: types.SimpleNamespace(uuid=f"other-{d}")
    )
    with pytest.raises(RuntimeError, match="none of the allocation's GPUs"):
        limit_memory(_shared(1024, (0,), (8192,)))
    assert cuda == []


def test_exclusive_allocations_are_left_alone(cuda: list[tuple[float, int]]) -> None:
    alloc = GPUAllocation(1, (0,), (fake_uuid(0),), 8192, exclusive=True)
    assert limit_memory(alloc) == {}
    assert cuda == []


def test_without_cuda_it_does_nothing(torch: Any) -> None:
    # This machine's real torch (a CPU build): the laptop case.
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert limit_memory(_shared(1024, (0,), (8192,))) == {}


def test_without_torch_the_error_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'gpupool\[torch\]'"):
        limit_memory(_shared(1024, (0,), (8192,)))
