"""The public testing helpers of gpupool.testing: the Hypothesis strategies build only
what a pool of their GPUs can serve, and FakeGPUs checks what a test asks for."""

from __future__ import annotations

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpupool import GPUResourcePool, GPUStats, Resources
from gpupool.sim import Job, simulate
from gpupool.testing import (
    FakeGPUs,
    fake_uuid,
    gpu_snapshots,
    request_kwargs,
    resources,
    virtual_clock,
    workloads,
)


@given(gpu_snapshots(3, memory_mb=8000))
def test_gpu_snapshots_are_of_the_fake_providers_gpus(snapshot: list[GPUStats]) -> None:
    assert [g.uuid for g in snapshot] == [fake_uuid(i) for i in range(3)]
    assert all(0 <= g.memory_used_mb <= g.memory_total_mb == 8000 for g in snapshot)


@given(resources(2, memory_mb=8000))
def test_resources_fit_the_gpus(request: Resources) -> None:
    assert 1 <= request.required_gpus <= 2
    assert request.min_memory_mb <= 8000
    assert request.exclusive or request.min_memory_mb > 0


@given(workloads(4, memory_mb=8000, max_jobs=6, max_duration=600))
def test_every_job_of_a_workload_runs_in_the_simulator(jobs: list[Job]) -> None:
    assert [j.arrival for j in jobs] == sorted(j.arrival for j in jobs)
    result = simulate(jobs, gpus=4, memory_mb=8000)
    assert len(result.records) == len(jobs)


@virtual_clock()
@pytest.mark.anyio
@settings(max_examples=20, deadline=None)
@given(data=st.data())
async def test_every_request_is_granted_by_a_real_pool(
    anyio_backend: object, data: st.DataObject
) -> None:
    requests = data.draw(st.lists(request_kwargs(3, memory_mb=8000), min_size=1, max_size=6))
    granted = []
    async with GPUResourcePool(FakeGPUs.of(3, memory_mb=8000).provider(), ledger=None) as pool:

        async def run(kwargs: dict[str, object]) -> None:
            async with pool.allocation(timeout=60, **kwargs) as allocation:  # type: ignore[arg-type]
                granted.append(allocation)
                await anyio.sleep(1)

        async with anyio.create_task_group() as tg:
            for kwargs in requests:
                tg.start_soon(run, kwargs)
        assert pool.statistics().holder_count == 0
    assert len(granted) == len(requests)


@pytest.mark.parametrize(
    ("strategy", "error", "message"),
    [
        (lambda: request_kwargs(0), ValueError, "gpu_count must be an int >= 1, got 0"),
        (lambda: gpu_snapshots(2, memory_mb="8G"), TypeError, "memory_mb must be an int >= 1"),
        (lambda: workloads(2, max_jobs=0), ValueError, "max_jobs must be an int >= 1, got 0"),
        (lambda: workloads(2, max_duration=float("inf")), ValueError, "max_duration must be"),
    ],
)
def test_a_strategy_refuses_a_wrong_shape(strategy: object, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        strategy()  # type: ignore[operator]


def test_fake_gpus_builds_the_provider_it_describes() -> None:
    fake = FakeGPUs.of(
        3,
        memory_mb=[8000, 8000, 16000],
        memory_used_mb=1000,
        utilization_pct=[None, 10, 20],
        unhealthy=[2],
        snapshot_latency_s=0.01,
    ).provider()
    gpus = fake.snapshot()
    assert [g.memory_total_mb for g in gpus] == [8000, 8000, 16000]
    assert [g.memory_used_mb for g in gpus] == [1000, 1000, 1000]
    assert [g.utilization_pct for g in gpus] == [None, 10, 20]
    assert [g.healthy for g in gpus] == [True, True, False]
    assert fake.snapshot_blocks  # the latency: snapshots go to a thread
    copy = FakeGPUs.of(FakeGPUs.of(2, memory_mb=8000), count=5)
    assert copy.count == 5
    assert copy.memory_mb == (8000,) * 5
    assert FakeGPUs.of().provider().count == 4


@pytest.mark.parametrize(
    ("value", "options", "error", "message"),
    [
        ("four", {}, TypeError, "fake GPUs must be given as a GPU count, a mapping"),
        (2, {"memory_mb": 0}, ValueError, r"memory_mb must be an int >= 1, got 0"),
        (2, {"utilization_pct": [1, 200]}, ValueError, r"utilization_pct\[1\] must be"),
        (2, {"unhealthy": "0"}, TypeError, "unhealthy must be GPU indices or a mapping"),
        (2, {"snapshot_latency_s": -1}, ValueError, "snapshot_latency_s must be"),
        (2, {"colour": "red"}, TypeError, "unknown fake GPU option"),
    ],
)
def test_fake_gpus_names_what_is_wrong(
    value: object, options: dict[str, object], error: type, message: str
) -> None:
    with pytest.raises(error, match=message):
        FakeGPUs.of(value, **options)
