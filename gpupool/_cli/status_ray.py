"""``gpupool status --ray ADDRESS``: every node of a Ray cluster, one machine view each.

Each node's view is read on the node (:mod:`gpupool.integrations.ray.status`:
one Ray task per alive node, pinned there), then printed here as the one-box
command prints a machine, under a heading that names the node (the first 8
hex digits of its Ray node id, its address, its host name). ``--json`` prints
one object whose ``nodes`` each hold a one-machine object, unchanged
(docs/machine.md, "The cluster form").

A node that cannot be read (its NVML fails, it does not answer within
``--node-timeout``) is one line where its view would be; the others show as
usual. Exit status: 0 every node was read; 1 some node could not be (the
others are shown); 2 the cluster itself cannot be (no extra, nothing at the
address, no connection), with one ``gpupool: error:`` line and nothing on
stdout, as when one machine's status cannot be taken. Ray is imported only
here, and only when ``--ray`` is given.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING, Any

from rich.console import Group, RenderableType
from rich.text import Text

from .args import node_provider
from .console import OutputConsole
from .status_json import _time, status_to_json
from .status_view import machine_view

if TYPE_CHECKING:
    from ..integrations.ray.status import NodeStatus

__all__ = ["CLUSTER_SCHEMA", "cluster_to_json", "run_cluster"]

#: The ``"cluster_schema"`` field of ``--ray --json``: the version of the cluster form.
CLUSTER_SCHEMA = 1


def run_cluster(args: argparse.Namespace) -> int:
    """The ``--ray`` branch of ``gpupool status``: the exit code."""
    if args.watch:
        # Each refresh would be a Ray task on every node (a second or more on a large
        # cluster), and a node that hangs would stall the display: not offered.
        return _usage(
            f"--watch cannot be used with --ray (got --ray {args.ray}): run "
            "`watch -n 5 gpupool status --ray ADDRESS` instead"
        )
    try:
        provider = node_provider(args)
    except ValueError as error:
        return _usage(str(error))
    try:
        from ..integrations.ray.status import cluster_status
    except ImportError as error:
        return _error(str(error))
    try:
        nodes = cluster_status(
            args.ray,
            ledger=None if args.ledger is None else str(args.ledger),
            provider=provider,
            timeout=args.node_timeout,
        )
    except ConnectionError as error:
        return _error(str(error))
    if not nodes:
        return _error(f"the Ray cluster at {args.ray!r} has no alive node")
    if args.json:
        print(json.dumps(cluster_to_json(args.ray, nodes, time.time()), indent=2), flush=True)
    else:
        console = OutputConsole(highlight=False)
        console.print(cluster_view(nodes, console.width, _notes(args)))
    return 0 if all(node.status is not None for node in nodes) else 1


def cluster_to_json(address: str, nodes: list[NodeStatus], taken_at: float) -> dict[str, Any]:
    """The cluster form of ``--json``: each node, and its one-machine object or its error."""
    return {
        "cluster_schema": CLUSTER_SCHEMA,
        "address": address,
        **_time("taken_at", taken_at),
        "nodes": [
            {
                "node_id": node.node_id,
                "ip": node.ip,
                "hostname": node.hostname,
                "head": node.is_head,
                "error": node.error,
                "machine": None if node.status is None else status_to_json(node.status),
            }
            for node in nodes
        ],
    }


def cluster_view(nodes: list[NodeStatus], width: int, notes: list[str]) -> RenderableType:
    """Each node's heading, then its machine view or the one line saying why there is none."""
    parts: list[RenderableType] = []
    for number, node in enumerate(nodes):
        if number:
            parts.append(Text(""))
        parts.append(Text(node_heading(node), style="bold reverse"))
        if node.status is None:
            parts.append(Text(f"cannot read this node: {node.error}", style="bold red"))
        else:
            parts.append(machine_view(node.status, width, [*notes, *node.status.notes]))
    return Group(*parts)


def node_heading(node: NodeStatus) -> str:
    """``node 3f2a91c0 (head) 10.0.0.5 gpu-box-1``."""
    head = " (head)" if node.is_head else ""
    return f"node {node.short_id}{head} {node.ip} {node.hostname}"


def _notes(args: argparse.Namespace) -> list[str]:
    if args.provider is not None:
        name = getattr(args.provider, "__qualname__", repr(args.provider))
        return [f"GPUs from --provider {args.provider.__module__}:{name}"]
    if args.fake_gpus is not None:
        return [f"{args.fake_gpus} fake GPU(s) on each node (--fake-gpus)"]
    return ["every GPU of the node"]


def _usage(message: str) -> int:
    print(f"gpupool status: error: {message}", file=sys.stderr)
    return 2


def _error(message: str) -> int:
    print(f"gpupool: error: {' '.join(message.split())}", file=sys.stderr)
    return 2
