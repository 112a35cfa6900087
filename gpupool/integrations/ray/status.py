"""Every node's machine status, read on the node itself: what ``gpupool status --ray`` shows.

The ledger and NVML are per machine, so a cluster's view is one
:func:`~gpupool.machine_status` per node, each read *on* its node: one Ray
task per alive node, pinned there (``NodeAffinitySchedulingStrategy(soft=False)``)
and asking for no CPU (``num_cpus=0``), so that a cluster busy to its last
core still answers. Nothing is joined or written, as on one box: no agent,
no pool, no lock on a healthy ledger.

One node must not hide the others: a node whose task fails (NVML broken, a
ledger that cannot be read) or that does not answer within ``timeout`` is
a :class:`NodeStatus` with an ``error`` and no ``status``, and the rest are
read as usual. A task that did not answer is cancelled (its worker ended),
so that a stuck provider does not keep a process of the node busy.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, final

import attrs
import ray
import ray.exceptions
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ..._core.checks import check_finite_seconds, shown
from ..._ledger.status import machine_status
from ..._ledger.view import MachineStatus
from ...providers import GPUProvider
from .connect import connected

__all__ = ["NodeStatus", "cluster_status", "read_node"]

#: How long connecting to the cluster may take before it is given up.
CONNECT_TIMEOUT_S = 60.0


@final
@attrs.frozen
class NodeStatus:
    """One node of the cluster, and its machine status or why it could not be read."""

    node_id: str
    #: The address Ray knows the node by (its raylet's IP).
    ip: str
    hostname: str
    is_head: bool
    status: MachineStatus | None
    #: Why ``status`` is missing: the node's own error, or that it did not answer.
    error: str | None = None

    @property
    def short_id(self) -> str:
        """The node id's first 8 hex digits, as ``ray status`` users tell nodes apart."""
        return self.node_id[:8]


def read_node(ledger: str | None, provider: Callable[[], GPUProvider] | None) -> MachineStatus:
    """The Ray task body: this node's :func:`~gpupool.machine_status` (run on the node)."""
    return machine_status(ledger, provider=None if provider is None else provider())


def cluster_status(
    address: str,
    *,
    ledger: str | os.PathLike[str] | None = None,
    provider: Callable[[], GPUProvider] | None = None,
    timeout: float = 30.0,
) -> list[NodeStatus]:
    """Each alive node's status, read on the node: the head first, then by address.

    ``address`` is what ``ray.init`` takes (a process connected to Ray
    already uses its connection); ``ledger`` is the ledger
    directory on every node (``None``: each node's default); ``provider`` a
    picklable zero-argument callable each node calls for its GPUs (``None``:
    NVML). ``timeout`` bounds the wait for the nodes' answers. Raises
    ``ConnectionError`` when nothing answers at ``address`` or the connection
    takes more than :data:`CONNECT_TIMEOUT_S`.
    """
    if not isinstance(address, str) or not address:
        raise TypeError(
            f"address must be a non-empty str (as ray.init takes it), got {shown(address)}"
        )
    if ledger is not None and not isinstance(ledger, (str, os.PathLike)):
        raise TypeError(f"ledger must be a str, an os.PathLike or None, got {shown(ledger)}")
    timeout = check_finite_seconds("timeout", timeout, allow_zero=False)
    with connected(address, timeout=CONNECT_TIMEOUT_S):
        return _read_all(None if ledger is None else os.fspath(ledger), provider, timeout)


def _read_all(
    ledger: str | None, provider: Callable[[], GPUProvider] | None, timeout: float
) -> list[NodeStatus]:
    nodes: list[dict[str, Any]] = [
        n
        for n in ray.nodes()  # type: ignore[no-untyped-call]
        if n.get("Alive")
    ]
    task = ray.remote(num_cpus=0, max_retries=0)(read_node)
    refs = []
    for node in nodes:
        strategy = NodeAffinitySchedulingStrategy(str(node["NodeID"]), soft=False)
        refs.append(task.options(scheduling_strategy=strategy).remote(ledger, provider))
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
    done = set(ready)
    found = []
    for node, ref in zip(nodes, refs, strict=True):
        status: MachineStatus | None = None
        error: str | None = None
        if ref not in done:
            ray.cancel(ref, force=True)
            error = f"did not answer within {timeout:g} s"
        else:
            try:
                status = ray.get(ref)
            except ray.exceptions.RayTaskError as failed:
                cause = failed.cause
                error = " ".join(str(cause).split()) or type(cause).__name__
            except ray.exceptions.RayError as failed:
                error = " ".join(str(failed).split()).split(". ")[0] or type(failed).__name__
        resources = node.get("Resources") or {}
        found.append(
            NodeStatus(
                node_id=str(node["NodeID"]),
                ip=str(node.get("NodeManagerAddress", "?")),
                hostname=str(node.get("NodeManagerHostname", "?")),
                is_head="node:__internal_head__" in resources,
                status=status,
                error=error,
            )
        )
    # The head first, then by address: the same cluster always prints in the same order.
    return sorted(found, key=lambda n: (not n.is_head, n.ip, n.hostname, n.node_id))
