"""Helpers for testing code that uses gpupool, with no GPU in sight.

``FakeGPUProvider`` stands in for NVML; the Hypothesis strategies build
requests and GPU snapshots for property-based tests (they need the
``hypothesis`` package, which gpupool itself does not depend on).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._core.model import GPUStats
from .providers.fake import FakeGPUProvider, fake_uuid

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

__all__ = ["FakeGPUProvider", "fake_uuid", "gpu_snapshots", "request_kwargs"]


def _strategies() -> Any:
    try:
        from hypothesis import strategies
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "gpupool.testing's strategies need Hypothesis: pip install hypothesis"
        ) from exc
    return strategies


def request_kwargs(
    gpu_count: int, *, memory_mb: int = 24_576, max_priority: int = 2
) -> SearchStrategy[dict[str, Any]]:
    """Keyword arguments for ``pool.acquire`` that a pool of ``gpu_count`` GPUs can serve."""
    st = _strategies()
    exclusive = st.fixed_dictionaries(
        {
            "required_gpus": st.integers(1, max(1, gpu_count)),
            "min_memory_mb": st.sampled_from([0, memory_mb // 4, memory_mb // 2]),
            "priority": st.integers(0, max_priority),
        }
    )
    shared = st.fixed_dictionaries(
        {
            "required_gpus": st.integers(1, max(1, gpu_count)),
            "min_memory_mb": st.integers(1, memory_mb),
            "priority": st.integers(0, max_priority),
            "exclusive": st.just(False),
        }
    )
    result: SearchStrategy[dict[str, Any]] = st.one_of(exclusive, shared)
    return result


def gpu_snapshots(gpu_count: int, *, memory_mb: int = 24_576) -> SearchStrategy[list[GPUStats]]:
    """Snapshots of ``gpu_count`` GPUs with random foreign memory, utilization and health."""
    st = _strategies()

    def one(index: int) -> Any:
        return st.builds(
            GPUStats,
            index=st.just(index),
            uuid=st.just(fake_uuid(index)),
            name=st.just(f"Fake GPU {index}"),
            memory_total_mb=st.just(memory_mb),
            memory_used_mb=st.integers(0, memory_mb),
            utilization_pct=st.one_of(st.none(), st.floats(0, 100)),
            healthy=st.booleans(),
        )

    result: SearchStrategy[list[GPUStats]] = st.tuples(*(one(i) for i in range(gpu_count))).map(
        list
    )
    return result
