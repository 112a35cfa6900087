"""estimate_memory_mb: the arithmetic its docstring promises."""

from __future__ import annotations

import doctest

import pytest

import gpupool._core.memory
from gpupool import estimate_memory_mb

MIB = 2**20


def test_the_docstring_examples_hold() -> None:
    failures, tried = doctest.testmod(gpupool._core.memory, raise_on_error=False)
    assert (failures, tried > 0) == (0, True)


def test_inference_is_weights_plus_overhead_plus_context() -> None:
    # 1 GiB of fp32 weights = 256 Mi parameters.
    assert estimate_memory_mb(256 * MIB, dtype="float32", overhead=0, context_mb=0) == 1024
    assert estimate_memory_mb(256 * MIB, dtype="fp32", overhead=0.5, context_mb=100) == 1636


def test_weights_are_sharded_evenly() -> None:
    one = estimate_memory_mb(1024 * MIB, dtype="bf16", overhead=0, context_mb=0)
    four = estimate_memory_mb(1024 * MIB, dtype="bf16", overhead=0, context_mb=0, gpus=4)
    assert (one, four) == (2048, 512)


@pytest.mark.parametrize(
    ("dtype", "bytes_per_parameter"), [("fp16", 16), ("float32", 16), ("int8", 14)]
)
def test_training_adds_gradients_adam_states_and_a_master_copy(
    dtype: str, bytes_per_parameter: int
) -> None:
    got = estimate_memory_mb(MIB, dtype=dtype, training=True, overhead=0, context_mb=0)
    assert got == bytes_per_parameter


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"parameters": -1}, "parameters must be a finite number >= 0"),
        ({"parameters": float("inf")}, "parameters must be a finite number >= 0"),
        ({"parameters": 1, "dtype": "float17"}, "dtype must be one of bfloat16, float16"),
        ({"parameters": 1, "gpus": 0}, "gpus must be an int >= 1, got 0"),
        ({"parameters": 1, "overhead": -0.1}, "overhead must be a finite number >= 0"),
        ({"parameters": 1, "context_mb": -5}, "context_mb must be an int >= 0"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        estimate_memory_mb(**kwargs)  # type: ignore[arg-type]
