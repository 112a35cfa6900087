"""``gpupool run JOBS_FILE --ray ADDRESS``: the driver's side of a jobs file on a Ray cluster.

The run is the one-box run (:mod:`gpupool._cli.run`: the journal, resuming,
retries, timeouts, the summary, the exit codes, all on the driver) with a
:class:`~gpupool.integrations.ray.RayCluster` in place of the pool: each GPU
job runs on a node, in the worker actor that holds its GPUs, through
:class:`~gpupool.integrations.ray.jobs.NodeJobs`, and its output comes back
into the driver's log directory (:class:`~gpupool.integrations.ray.jobs.JobLogs`).
CPU-only jobs (``gpus=0``) run on the driver, as the runner keeps CPU-only
tasks local. Ray is imported only here, and only for ``--ray``.

Before anything runs, every GPU job is checked against each node's GPUs (as
the nodes' agents report them): a job that no node could ever serve is a line
problem, as a job too big for one box is.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .._core.model import PoolStatistics
from .._ledger.location import DEFAULT
from .._runner.remote import RemoteGPUs
from .args import size_text
from .jobs_file import JobSpec

__all__ = ["cluster_capacity_problem", "node_jobs", "open_cluster"]


def open_cluster(
    stack: contextlib.AsyncExitStack,
    address: str,
    *,
    provider: Callable[[], Any] | None,
    ledger: Path | None,
) -> Any:
    """The ``RayCluster`` to enter (connected already, in this thread), wrapped for logs.

    Returns an async context manager giving the :class:`RemoteGPUs` the runner uses.
    """
    from ..integrations.ray import RayCluster
    from ..integrations.ray.connect import connected
    from ..integrations.ray.jobs import JobLogs

    stack.enter_context(connected(address))
    cluster = RayCluster(
        address,
        provider=provider,
        ledger=DEFAULT if ledger is None else ledger,
        # Fake GPUs (a provider given) change only when told: refresh them often.
        refresh_interval=1.0 if provider is None else 0.25,
    )

    @contextlib.asynccontextmanager
    async def opened() -> Any:
        async with cluster:
            yield JobLogs(cluster)

    return opened()


def node_statistics(remote: RemoteGPUs) -> tuple[PoolStatistics, ...]:
    """Each node's pool as it last reported (the capacity check's input)."""
    from ..integrations.ray.jobs import JobLogs

    assert isinstance(remote, JobLogs)
    return tuple(remote.cluster.node_statistics().values())


def node_jobs(env: Mapping[str, str], cwd: Path | None, grace_period: float) -> Any:
    """The task function of every GPU job: runs in the driver's directory (``cwd``, else
    the current one), which must exist on the nodes."""
    from ..integrations.ray.jobs import NodeJobs

    return NodeJobs(
        env=tuple(sorted(env.items())),
        cwd=str(cwd if cwd is not None else os.getcwd()),
        grace_period=grace_period,
    )


def cluster_capacity_problem(job: JobSpec, nodes: Sequence[PoolStatistics]) -> str | None:
    """Why no node of the cluster could ever start ``job``, in the jobs file's words, or None."""
    from ..integrations.ray.placement import could_ever_serve

    if job.gpus == 0 or any(could_ever_serve(job.resources, node) for node in nodes):
        return None
    if not nodes:
        return f"gpus={job.gpus} but no node of the Ray cluster has GPUs gpupool can use"
    most = max(sum(1 for gpu in node.gpus if gpu.healthy) for node in nodes)
    count = f"{len(nodes)} node{'' if len(nodes) == 1 else 's'} with GPUs"
    if job.gpus > most:
        return (
            f"gpus={job.gpus} but no node of the Ray cluster has more than {most} healthy "
            f"GPU{'' if most == 1 else 's'} ({count})"
        )
    largest = max(gpu.memory_total_mb for node in nodes for gpu in node.gpus if gpu.healthy)
    return (
        f"mem={size_text(job.memory_mb)} but no node of the Ray cluster has {job.gpus} "
        f"GPU{'' if job.gpus == 1 else 's'} with that much memory (the largest has "
        f"{size_text(largest)}; {count})"
    )
