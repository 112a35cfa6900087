"""A real Ray cluster on this machine for the tests in this directory: a head and two
worker nodes, each its own raylet, all on 127.0.0.1, one per test module.

Each worker node tells the agent on it what fake GPUs it has through the node's
environment (``fake_gpus`` below is the provider factory every agent calls), so
the two nodes differ: node "a" has 2 GPUs of 8,000 MB, node "b" 2 of 24,000 MB.
The head has none (like a CPU-only head node): no agent takes work there.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from gpupool import FakeGPUProvider

ray = pytest.importorskip("ray")  # the extra `ray` (installed by .ci/run)
from ray.cluster_utils import Cluster  # noqa: E402

#: What each worker node has: (count, memory of each GPU in MB).
NODES = {"a": (2, 8_000), "b": (2, 24_000)}


def fake_gpus() -> FakeGPUProvider:
    """The provider factory every agent calls on its node (picklable: a module function)."""
    spec = os.environ.get("GPUPOOL_TEST_NODE_GPUS")
    if spec is None:
        return FakeGPUProvider(count=0)
    count, memory = (int(part) for part in spec.split(":"))
    return FakeGPUProvider(count=count, memory_mb=memory)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[dict[str, str]]:
    """The cluster, connected; yields the node id of each worker node by name."""
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 2,
            "node_ip_address": "127.0.0.1",
            "include_dashboard": False,
            # A node killed outright is noticed in about a second, not fifteen.
            "_system_config": {
                "health_check_initial_delay_ms": 1000,
                "health_check_period_ms": 500,
                "health_check_timeout_ms": 500,
                "health_check_failure_threshold": 3,
            },
        },
    )
    try:
        nodes = {}
        for name, (count, memory) in NODES.items():
            node = cluster.add_node(
                num_cpus=2,
                node_ip_address="127.0.0.1",
                env_vars={"GPUPOOL_TEST_NODE_GPUS": f"{count}:{memory}"},
            )
            nodes[name] = node.node_id
        ray.init(address=cluster.address, log_to_driver=False, logging_level="WARNING")
        yield nodes
    finally:
        ray.shutdown()
        cluster.shutdown()  # type: ignore[no-untyped-call]
