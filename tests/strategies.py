"""Hypothesis strategies and small builders shared by the test modules."""

from __future__ import annotations

from gpupool import GPUStats
from gpupool.testing import fake_uuid, gpu_snapshots, request_kwargs

__all__ = ["gpu", "gpu_snapshots", "gpus", "request_kwargs"]

MB = 24_576


def gpu(
    index: int,
    *,
    total: int = MB,
    used: int = 0,
    utilization: float | None = 0.0,
    healthy: bool = True,
    processes: tuple[object, ...] = (),
) -> GPUStats:
    """One GPU snapshot with sensible defaults."""
    return GPUStats(
        index=index,
        uuid=fake_uuid(index),
        name=f"Fake GPU {index}",
        memory_total_mb=total,
        memory_used_mb=used,
        utilization_pct=utilization,
        healthy=healthy,
        processes=processes,  # type: ignore[arg-type]
    )


def gpus(count: int, **kwargs: object) -> list[GPUStats]:
    return [gpu(i, **kwargs) for i in range(count)]  # type: ignore[arg-type]
