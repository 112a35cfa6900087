"""Hypothesis strategies for property-based tests of code that uses a pool.

Each strategy builds only what a pool of ``gpu_count`` GPUs of ``memory_mb``
each can serve, so a property can assert that everything is eventually
granted. They need Hypothesis, which gpupool itself does not depend on: it
is imported when a strategy is asked for, not when this module is, and a
missing one says what to install.

>>> from hypothesis import given
>>> @given(request_kwargs(4))
... def test_requests_are_granted(kwargs): ...
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._core.checks import check_finite_seconds, check_int
from .._core.model import GPUStats
from .._core.request import Resources
from ..providers.fake import DEFAULT_MEMORY_MB, fake_uuid
from ..sim import Job

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

__all__ = ["gpu_snapshots", "request_kwargs", "resources", "workloads"]


def _strategies() -> Any:
    try:
        from hypothesis import strategies
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "gpupool.testing's strategies need Hypothesis: pip install hypothesis"
        ) from exc
    return strategies


def _check_shape(gpu_count: int, memory_mb: int) -> None:
    check_int("gpu_count", gpu_count, 1)
    check_int("memory_mb", memory_mb, 1)


def request_kwargs(
    gpu_count: int, *, memory_mb: int = DEFAULT_MEMORY_MB, max_priority: int = 2
) -> SearchStrategy[dict[str, Any]]:
    """Keyword arguments for ``pool.acquire`` that a pool of ``gpu_count`` GPUs can serve.

    Exclusive requests (whole GPUs, with a quarter or half of ``memory_mb``
    free, or no memory asked) and shared ones (``exclusive=False`` with
    between 1 MB and all of ``memory_mb``), at priorities 0 to ``max_priority``.
    """
    _check_shape(gpu_count, memory_mb)
    check_int("max_priority", max_priority, 0)
    st = _strategies()
    exclusive = st.fixed_dictionaries(
        {
            "required_gpus": st.integers(1, gpu_count),
            "min_memory_mb": st.sampled_from([0, memory_mb // 4, memory_mb // 2]),
            "priority": st.integers(0, max_priority),
        }
    )
    shared = st.fixed_dictionaries(
        {
            "required_gpus": st.integers(1, gpu_count),
            "min_memory_mb": st.integers(1, memory_mb),
            "priority": st.integers(0, max_priority),
            "exclusive": st.just(False),
        }
    )
    result: SearchStrategy[dict[str, Any]] = st.one_of(exclusive, shared)
    return result


def resources(
    gpu_count: int, *, memory_mb: int = DEFAULT_MEMORY_MB, max_priority: int = 2
) -> SearchStrategy[Resources]:
    """The requests of :func:`request_kwargs` as :class:`~gpupool.Resources` values
    (``pool.acquire(resources)``, ``runner.map(..., resources=...)``-style code)."""
    result: SearchStrategy[Resources] = request_kwargs(
        gpu_count, memory_mb=memory_mb, max_priority=max_priority
    ).map(lambda kwargs: Resources(**kwargs))
    return result


def gpu_snapshots(
    gpu_count: int, *, memory_mb: int = DEFAULT_MEMORY_MB
) -> SearchStrategy[list[GPUStats]]:
    """Snapshots of ``gpu_count`` GPUs with random foreign memory, utilization and health.

    GPU ``i`` has :func:`~gpupool.testing.fake_uuid` ``(i)`` as its UUID, as
    :class:`~gpupool.testing.FakeGPUProvider` gives it, so a snapshot can be
    compared with a fake provider's GPUs or fed to a pool's core.
    """
    _check_shape(gpu_count, memory_mb)
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


def workloads(
    gpu_count: int,
    *,
    memory_mb: int = DEFAULT_MEMORY_MB,
    max_jobs: int = 12,
    max_duration: float = 3600.0,
    max_priority: int = 2,
) -> SearchStrategy[list[Job]]:
    """Traces of GPU jobs, as :class:`gpupool.sim.Job` values in arrival order.

    Between 1 and ``max_jobs`` jobs, each arriving within ``max_duration``
    seconds of the first and running up to ``max_duration`` seconds; whole
    GPUs or shared ones (``exclusive=False`` with some of ``memory_mb``),
    sometimes with an ``expected_duration`` hint that may be wrong (``hint``),
    at priorities 0 to ``max_priority``. Every job fits the GPUs, so each
    must eventually run: replay a trace through :func:`gpupool.sim.simulate`,
    or through a real pool on a fake provider (virtual time makes its hours
    milliseconds).
    """
    _check_shape(gpu_count, memory_mb)
    check_int("max_jobs", max_jobs, 1)
    check_int("max_priority", max_priority, 0)
    longest = check_finite_seconds("max_duration", max_duration, allow_zero=False)
    st = _strategies()
    seconds = st.floats(0, longest, allow_nan=False)

    @st.composite  # type: ignore[untyped-decorator]
    def job(draw: Any) -> Job:
        exclusive = draw(st.booleans())
        memory = draw(st.integers(0 if exclusive else 1, memory_mb))
        duration = draw(seconds)
        hint = draw(st.one_of(st.none(), st.just(duration), seconds.filter(lambda s: s > 0)))
        return Job(
            arrival=draw(seconds),
            duration=duration,
            gpus=draw(st.integers(1, gpu_count)),
            memory_mb=memory,
            exclusive=exclusive,
            hint=hint if hint else None,
            priority=draw(st.integers(0, max_priority)),
        )

    result: SearchStrategy[list[Job]] = st.lists(job(), min_size=1, max_size=max_jobs).map(
        lambda jobs: sorted(jobs, key=lambda j: j.arrival)
    )
    return result
