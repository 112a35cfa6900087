"""A real Ray cluster on this machine for the tests in this directory: a head and two
worker nodes, each its own raylet, all on 127.0.0.1, one per test module.

Each worker node tells the agent on it what fake GPUs it has through the node's
environment (``tasks.fake_gpus`` is the provider factory every agent calls), so
the two nodes differ: node "a" has 2 GPUs of 8,000 MB, node "b" 2 of 24,000 MB.
The head has none (like a CPU-only head node): no agent takes work there.

Each node also has a machine-wide ledger of its own (``GPUPOOL_LEDGER`` in its
environment, as each machine of a real cluster has its own ``/dev/shm``), so
that what one node's ledger holds does not show on another's
(``gpupool status --ray``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

ray = pytest.importorskip("ray")  # the extra `ray` (installed by .ci/run)
from ray.cluster_utils import Cluster  # noqa: E402

from .tasks import fake_gpus as fake_gpus  # noqa: E402  (the tests' provider factory)

#: What each worker node has: (count, memory of each GPU in MB).
NODES = {"a": (2, 8_000), "b": (2, 24_000)}


@attrs.frozen
class RayTestCluster:
    """The running cluster: its address, and each worker node's id, handle and ledger
    directory by name."""

    cluster: Any  # ray.cluster_utils.Cluster
    ids: dict[str, str]
    handles: dict[str, Any]
    ledgers: dict[str, Path] = attrs.field(factory=dict)

    @property
    def address(self) -> str:
        return str(self.cluster.address)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[RayTestCluster]:
    """The cluster (one per test module), this process connected to it."""
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
    ledgers = {name: Path(tempfile.mkdtemp(prefix=f"gpupool-node-{name}-")) for name in NODES}
    try:
        handles = {
            name: cluster.add_node(
                num_cpus=2,
                node_ip_address="127.0.0.1",
                env_vars={
                    "GPUPOOL_TEST_NODE_GPUS": f"{count}:{memory}",
                    "GPUPOOL_LEDGER": str(ledgers[name]),
                },
            )
            for name, (count, memory) in NODES.items()
        }
        ray.init(address=cluster.address, log_to_driver=False, logging_level="WARNING")
        ids = {n: h.node_id for n, h in handles.items()}
        yield RayTestCluster(cluster, ids, handles, ledgers)
    finally:
        ray.shutdown()
        cluster.shutdown()  # type: ignore[no-untyped-call]
