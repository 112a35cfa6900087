"""Which node a request goes to: the driver's half of the two-level decision (pure).

The driver picks a node from the agents' last reported state (each node's
``PoolStatistics``); the node's pool then picks the GPUs, with everything it
does on one box (scoring, memory sharing, foreign memory, the settle gate,
the machine's ledger). A request for k GPUs goes to one node: the GPUs of an
allocation are on one machine.

The rule, "join the shortest queue": among the nodes that could ever serve
the request, one that can serve it now, else the one with the fewest of
this driver's requests waiting there, then the one with the most GPUs free
for it, then by node id, so that the same state always gives the same
node. A node's own pool is fair (priority, then arrival); the driver does
not reorder what it sent.

GPUs free are as the node last reported, less what the driver's requests
sent there since would take. The queue counted is the driver's own count, kept as it sends and hears
back, not the ``waiters`` of the node's last report: the agent's pool is
this driver's alone, so those waiters are the same requests again, counted
as they were at the last report (counting both sent the last request of a
wave to the node with more of them; docs/benchmarks.md). Other processes
using a node's GPUs (through its machine-wide ledger) show as GPUs that are
not free.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..._core.errors import UnsatisfiableRequest
from ..._core.model import GPUStatistics, PoolStatistics
from ..._core.request import Resources

__all__ = ["choose_node", "could_ever_serve", "free_for", "servable_by"]


def could_ever_serve(request: Resources, stats: PoolStatistics) -> bool:
    """Whether the node has enough healthy GPUs big enough for ``request``."""
    big_enough = [g for g in stats.gpus if g.healthy and g.memory_total_mb >= request.min_memory_mb]
    return len(big_enough) >= request.required_gpus


def free_for(request: Resources, stats: PoolStatistics) -> int:
    """How many of the node's GPUs could take ``request`` now, as last reported."""
    return sum(1 for g in stats.gpus if _takes(request, g))


def _takes(request: Resources, gpu: GPUStatistics) -> bool:
    if not gpu.healthy or gpu.settling or gpu.memory_free_mb < request.min_memory_mb:
        return False
    if request.exclusive:
        return not gpu.holder_ids
    return not gpu.exclusive


def choose_node(
    request: Resources, nodes: Mapping[str, PoolStatistics], waiting: Mapping[str, int]
) -> str:
    """The node ``request`` goes to; :class:`UnsatisfiableRequest` when no node ever could.

    ``waiting`` counts, per node, this driver's requests sent there and not
    answered yet.
    """
    candidates = servable_by(request, nodes)

    def rank(node: str) -> tuple[bool, int, int, str]:
        queued = waiting.get(node, 0)
        # The report predates the requests sent there since: count them as taking
        # GPUs (as many as this one), or a wave of requests all goes to the node
        # that last reported the most free.
        free = free_for(request, nodes[node]) - queued * request.required_gpus
        return (free < request.required_gpus, queued, -free, node)

    return min(candidates, key=rank)


def servable_by(request: Resources, nodes: Mapping[str, PoolStatistics]) -> list[str]:
    """The nodes that could ever serve ``request``; :class:`UnsatisfiableRequest` if none."""
    candidates = [node for node, stats in nodes.items() if could_ever_serve(request, stats)]
    if not candidates:
        raise UnsatisfiableRequest(_why_not(request, nodes))
    return candidates


def _why_not(request: Resources, nodes: Mapping[str, PoolStatistics]) -> str:
    if not nodes:
        return "the cluster has no node with a gpupool agent"
    most = max(sum(1 for g in s.gpus if g.healthy) for s in nodes.values())
    biggest = max((g.memory_total_mb for s in nodes.values() for g in s.gpus), default=0)
    return (
        f"no node of the cluster could ever serve required_gpus={request.required_gpus} with "
        f"min_memory_mb={request.min_memory_mb}: the most healthy GPUs on one node is {most}, "
        f"the largest GPU has {biggest} MB ({len(nodes)} node(s))"
    )
