"""What the nodes of the test clusters import: the provider factory every agent calls,
and task functions (a plain module, importable from the repository root, as Ray's
workers need it: Ray ships these functions by reference)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import ray

from gpupool import FakeGPUProvider, GPUAllocation, ProviderError


def fake_gpus() -> FakeGPUProvider:
    """Each node's fake GPUs, from ``GPUPOOL_TEST_NODE_GPUS`` ("count:memory_mb") in the
    node's environment (tests/ray/conftest.py sets it per node); none where unset."""
    spec = os.environ.get("GPUPOOL_TEST_NODE_GPUS")
    if spec is None:
        return FakeGPUProvider(count=0)
    count, memory = (int(part) for part in spec.split(":"))
    return FakeGPUProvider(count=count, memory_mb=memory)


def marks_and_sleeps(item: tuple[str, int, float], allocation: GPUAllocation | None) -> str:
    """Notes in ``directory`` that task ``number`` started (and where), sleeps, notes that
    it ended; returns its node's id."""
    directory, number, seconds = item
    node = ray.get_runtime_context().get_node_id()
    Path(directory, f"{number}-{node}-{os.getpid()}").touch()
    time.sleep(seconds)
    Path(directory, f"{number}-{node}-{os.getpid()}.done").touch()
    return str(node)


def fake_gpus_but_node_a_broken() -> FakeGPUProvider:
    """As :func:`fake_gpus`, but node "a" (2 GPUs of 8,000 MB) has no usable NVML."""
    if os.environ.get("GPUPOOL_TEST_NODE_GPUS") == "2:8000":
        raise ProviderError("NVML: Driver Not Loaded (node a, on purpose)")
    return fake_gpus()


def fake_gpus_but_node_a_stuck() -> FakeGPUProvider:
    """As :func:`fake_gpus`, but node "a"'s provider never answers (a hung driver)."""
    if os.environ.get("GPUPOOL_TEST_NODE_GPUS") == "2:8000":
        time.sleep(600)
    return fake_gpus()
