"""The memory caps a shared allocation puts in a child's environment (docs/memory.md).

Checked where they matter: in a real child process started by ``run_process``
on an allocation a real pool granted on fake GPUs.
"""

from __future__ import annotations

import json
import sys

import pytest

from gpupool import FakeGPUProvider, GPUAllocation, GPUResourcePool, Resources, run_process
from gpupool._core.model import memory_fraction
from gpupool.providers.fake import fake_uuid

CAP_VARIABLES = (
    "GPUPOOL_RESERVED_MB",
    "XLA_PYTHON_CLIENT_MEM_FRACTION",
    "XLA_PYTHON_CLIENT_PREALLOCATE",
    "TF_FORCE_GPU_ALLOW_GROWTH",
    "CUDA_VISIBLE_DEVICES",
    "CUDA_DEVICE_ORDER",
)
PRINT_ENV = (
    f"import json, os, sys; print(json.dumps({{k: os.environ.get(k) for k in {CAP_VARIABLES!r}}}))"
)


async def _child_env(allocation: GPUAllocation, **kwargs: object) -> dict[str, str | None]:
    result = await run_process([sys.executable, "-c", PRINT_ENV], allocation=allocation, **kwargs)  # type: ignore[arg-type]
    assert result.output is not None
    env: dict[str, str | None] = json.loads(result.output)
    return env


@pytest.mark.anyio
async def test_a_shared_allocation_caps_each_framework_in_the_child(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The parent's own settings are not the job's: the cap replaces them.
    monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.9")
    provider = FakeGPUProvider(count=2, memory_mb=24_576)
    request = Resources(1, min_memory_mb=8192, exclusive=False)
    async with GPUResourcePool(provider) as pool, pool.allocation(request) as alloc:
        env = await _child_env(alloc)
    assert env == {
        "GPUPOOL_RESERVED_MB": "8192",
        "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.3333",  # 8192 / 24576, rounded down
        "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
        "TF_FORCE_GPU_ALLOW_GROWTH": "true",
        "CUDA_VISIBLE_DEVICES": fake_uuid(alloc.gpu_indices[0]),
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
    }


@pytest.mark.anyio
async def test_gpus_of_different_sizes_get_the_fraction_of_the_largest() -> None:
    # JAX takes one fraction of each GPU's own total: the largest GPU binds.
    provider = FakeGPUProvider(count=2, memory_mb=[16_384, 81_920])
    async with GPUResourcePool(provider) as pool:
        request = Resources(2, min_memory_mb=10_000, exclusive=False)
        async with pool.allocation(request) as alloc:
            assert alloc.gpu_memory_total_mb == (16_384, 81_920)
            env = await _child_env(alloc)
    assert env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.1220"  # 10000 / 81920 = 0.12207
    assert float("0.1220") * 81_920 <= 10_000


@pytest.mark.anyio
async def test_an_exclusive_allocation_leaves_the_frameworks_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("XLA_PYTHON_CLIENT_MEM_FRACTION", raising=False)
    monkeypatch.delenv("XLA_PYTHON_CLIENT_PREALLOCATE", raising=False)
    monkeypatch.delenv("TF_FORCE_GPU_ALLOW_GROWTH", raising=False)
    monkeypatch.delenv("GPUPOOL_RESERVED_MB", raising=False)
    pool = GPUResourcePool(FakeGPUProvider(count=1))
    async with pool, pool.allocation(Resources(1, min_memory_mb=8192)) as alloc:
        assert alloc.memory_env == {}
        env = await _child_env(alloc)
    assert env["CUDA_VISIBLE_DEVICES"] == fake_uuid(0)
    assert [env[k] for k in CAP_VARIABLES[:4]] == [None] * 4


@pytest.mark.anyio
async def test_env_overrides_a_cap_but_never_the_devices() -> None:
    pool = GPUResourcePool(FakeGPUProvider(count=2))
    request = Resources(1, min_memory_mb=4096, exclusive=False)
    async with pool, pool.allocation(request) as alloc:
        env = await _child_env(
            alloc, env={"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.5", "CUDA_VISIBLE_DEVICES": "all"}
        )
    assert env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.5"  # the caller's deliberate choice
    assert env["CUDA_VISIBLE_DEVICES"] == fake_uuid(alloc.gpu_indices[0])
    assert env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"


def test_the_env_without_known_gpu_sizes_has_no_fraction() -> None:
    alloc = GPUAllocation(1, (0,), (fake_uuid(0),), 512, exclusive=False)
    assert alloc.env == {
        "GPUPOOL_RESERVED_MB": "512",
        "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
        "TF_FORCE_GPU_ALLOW_GROWTH": "true",
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "CUDA_VISIBLE_DEVICES": fake_uuid(0),
    }
    assert alloc.env == {**alloc.memory_env, **alloc.device_env}


@pytest.mark.parametrize(
    ("reserved", "total", "fraction"),
    [
        (8192, 24_576, 0.3333),
        (24_576, 24_576, 1.0),
        (1, 81_920, 0.0001),  # never 0: a fraction of nothing would fail every allocation
        (30_000, 24_576, 1.0),
        (12_288, 24_576, 0.5),
    ],
)
def test_memory_fraction_rounds_down(reserved: int, total: int, fraction: float) -> None:
    assert memory_fraction(reserved, total) == fraction
    assert memory_fraction(reserved, total) * total <= max(reserved, total * 1e-4)


def test_memory_fraction_refuses_an_unknown_total() -> None:
    with pytest.raises(ValueError, match="total_mb must be > 0, got 0"):
        memory_fraction(10, 0)
