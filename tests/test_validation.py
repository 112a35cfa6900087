"""Bad input gets a clear error at the call: never a hang, never a silent clamp."""

from __future__ import annotations

import math
import re
from collections.abc import AsyncIterator

import pytest

from gpupool import FakeGPUProvider, GPUResourcePool, UnsatisfiableRequest

pytestmark = pytest.mark.anyio


@pytest.fixture
async def pool() -> AsyncIterator[GPUResourcePool]:
    async with GPUResourcePool(FakeGPUProvider(count=2, memory_mb=16_000)) as opened:
        yield opened


BAD_ARGUMENTS = [
    ({"required_gpus": 0}, ValueError, "required_gpus must be an int >= 1, got 0"),
    ({"required_gpus": -1}, ValueError, "required_gpus must be an int >= 1, got -1"),
    ({"required_gpus": 1.0}, ValueError, "required_gpus must be an int >= 1, got 1.0"),
    ({"required_gpus": True}, ValueError, "required_gpus must be an int >= 1, got True"),
    ({"required_gpus": "2"}, ValueError, "required_gpus must be an int >= 1, got '2'"),
    ({"min_memory_mb": -1}, ValueError, "min_memory_mb must be a finite number >= 0, got -1"),
    ({"min_memory_mb": math.nan}, ValueError, "min_memory_mb must be a number, got nan"),
    ({"min_memory_mb": math.inf}, ValueError, "min_memory_mb must be a finite number"),
    ({"min_memory_mb": "8G"}, ValueError, "min_memory_mb must be a number, got '8G'"),
    ({"timeout": -1}, ValueError, "timeout must be None or a number of seconds >= 0, got -1"),
    ({"timeout": math.nan}, ValueError, "timeout must be a number, got nan"),
    ({"priority": 1.5}, ValueError, "priority must be an int, got 1.5"),
    ({"exclusive": "no"}, ValueError, "exclusive must be True or False, got 'no'"),
    ({"exclusive": False}, ValueError, "exclusive=False needs min_memory_mb > 0"),
    ({"allowed_gpus": "01"}, ValueError, "allowed_gpus must be None or a collection"),
    ({"allowed_gpus": [0, "1"]}, ValueError, "allowed_gpus entry must be an int >= 0, got '1'"),
    ({"allowed_gpus": [-1]}, ValueError, "allowed_gpus entry must be an int >= 0, got -1"),
    ({"allowed_gpus": []}, UnsatisfiableRequest, "allowed_gpus is empty"),
    ({"allowed_gpus": [5]}, UnsatisfiableRequest, "allowed_gpus names GPU(s) [5]"),
    ({"required_gpus": 2, "allowed_gpus": [0]}, UnsatisfiableRequest, "names only 1 GPU(s)"),
    ({"required_gpus": 3}, UnsatisfiableRequest, "required_gpus=3 but the pool has 2 GPU(s)"),
    ({"min_memory_mb": 16_001}, UnsatisfiableRequest, "the largest has 16000 MB"),
    ({"experiment_id": 7}, ValueError, "experiment_id must be a str or None, got 7"),
    ({"expected_duration": 0}, ValueError, "expected_duration must be None or a number"),
]


@pytest.mark.parametrize(("kwargs", "error", "message"), BAD_ARGUMENTS)
async def test_acquire_rejects_bad_input_at_once(
    pool: GPUResourcePool, kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    before = pool.statistics()
    with pytest.raises(error, match=re.escape(message)):
        await pool.acquire(**kwargs)  # type: ignore[arg-type]
    assert pool.statistics() == before


@pytest.mark.parametrize(
    ("kwargs", "error", "message"), [case for case in BAD_ARGUMENTS if "timeout" not in case[0]]
)
async def test_acquire_nowait_rejects_the_same_input_the_same_way(
    pool: GPUResourcePool, kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=re.escape(message)):
        pool.acquire_nowait(**kwargs)  # type: ignore[arg-type]


async def test_unsatisfiable_is_also_a_value_error(pool: GPUResourcePool) -> None:
    with pytest.raises(ValueError, match="the pool has 2 GPU"):
        await pool.acquire(9)


async def test_fractional_memory_is_rounded_up_not_down(pool: GPUResourcePool) -> None:
    alloc = await pool.acquire(min_memory_mb=1000.2)
    assert alloc.memory_mb == 1001
    await pool.release(alloc)


async def test_release_takes_an_allocation(pool: GPUResourcePool) -> None:
    with pytest.raises(TypeError, match="release takes a GPUAllocation"):
        await pool.release("GPU-0")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_parallel": 0}, "max_parallel must be an int >= 1, got 0"),
        ({"max_parallel": 2.5}, "max_parallel must be an int >= 1, got 2.5"),
        ({"refresh_interval": 0}, "refresh_interval must be None or a number of seconds > 0"),
        ({"refresh_interval": math.inf}, "refresh_interval must be finite"),
        ({"settle_timeout": -1}, "settle_timeout must be None or a number of seconds >= 0"),
    ],
)
def test_pool_options_are_validated(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        GPUResourcePool(FakeGPUProvider(count=1), **kwargs)  # type: ignore[arg-type]


def test_provider_must_have_a_snapshot_method() -> None:
    with pytest.raises(TypeError, match="snapshot"):
        GPUResourcePool(provider=object())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"count": -1}, "count must be an int >= 0, got -1"),
        ({"count": 2, "memory_mb": [1000]}, "a sequence of 2 ints"),
        ({"count": 1, "memory_mb": 0}, "memory_mb must be > 0 for every GPU, got 0"),
    ],
)
def test_fake_provider_arguments_are_validated(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        FakeGPUProvider(**kwargs)  # type: ignore[arg-type]


def test_requests_that_differ_only_by_experiment_id_keep_their_own_id() -> None:
    """Plain requests are validated once and reused; an experiment id (the
    runner passes every task's key) must still come through, and a bad one
    must still be refused, cached shape or not."""
    from gpupool._request import make_request

    plain = make_request(2, min_memory_mb=100)
    first = make_request(2, min_memory_mb=100, experiment_id="a")
    second = make_request(2, min_memory_mb=100, experiment_id="b")
    assert (first.experiment_id, second.experiment_id, plain.experiment_id) == ("a", "b", None)
    assert first.required_gpus == second.required_gpus == 2
    assert first.min_memory_mb == second.min_memory_mb == 100
    with pytest.raises(ValueError, match="experiment_id must be a str or None, got 7"):
        make_request(2, min_memory_mb=100, experiment_id=7)
    with pytest.raises(ValueError, match="required_gpus must be an int >= 1, got 0"):
        make_request(0, experiment_id="c")
