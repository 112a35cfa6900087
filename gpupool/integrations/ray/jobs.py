"""``gpupool run --ray``: a jobs file's GPU jobs run on the nodes, their logs brought home.

Two halves of one task:

- **On the node**, :class:`NodeJobs` is the task function (picklable: an
  attrs value of this importable module). In the worker actor that holds the
  job's GPUs it runs the command with :func:`~gpupool.run_process` (the
  allocation's GPUs, ``GPUPOOL_JOB_KEY``, the run's environment, working
  directory and grace period), writing its output to a file in the node's
  temporary directory, never to the driver's log directory (which the node
  may not even see). It returns how the command ended and the output (at
  most :data:`LOG_LIMIT` bytes: the tail, with a first line saying what was
  left out and where the whole file stays on the node).
- **On the driver**, :class:`JobLogs` wraps the :class:`RayCluster` the
  runner uses: when a ``NodeJobs`` task returns, it appends the output to
  the job's log in the driver's log directory (the item's ``"log"``, where
  the job writes on one box: retries append, as there), and raises
  :class:`~gpupool.ProcessFailed` for a command that did not succeed, so that
  the journal and the summary show the failure as on one box. The value the
  runner journals is the one-box result dict (plus ``node`` and
  ``node_log``), never the output itself.

A job never outlives its worker: every job's process group is registered
with the worker's :class:`~gpupool._process.watchdog.Watchdog`, which ends
the group if the worker dies (``ray.kill``, a timeout, the driver's death).
An attempt stopped that way brings no output home; the driver's log says so.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, final

import anyio
import anyio.to_thread
import attrs
import ray

from ..._core.model import GPUAllocation, PoolStatistics
from ..._core.request import Resources
from ..._process.run import DEFAULT_GRACE_PERIOD, ProcessResult, run_process
from ..._process.watchdog import Watchdog
from ..._runner.remote import RemoteGPUs
from .cluster import RayCluster

__all__ = ["LOG_LIMIT", "JobLogs", "NodeJobs"]

#: The most of one attempt's output that comes back from the node (its tail): 8 MiB.
LOG_LIMIT = 8 * 1024 * 1024

#: The temporary directories attempts write their output in, on each node.
NODE_LOG_PREFIX = "gpupool-job-"

#: One watchdog per worker process, started by the first job there.
_WATCHDOG = Watchdog()


@final
@attrs.frozen
class NodeJobs:
    """The task function of ``gpupool run --ray``'s GPU jobs (runs on the node).

    ``item`` is the job as ``gpupool run`` journals it (``key``, ``command``,
    ``log``: the driver's log path, whose name the node's file takes).
    ``env`` is added to the node's environment (then ``GPUPOOL_JOB_KEY`` and
    the allocation's); ``cwd`` must exist on the node.
    """

    env: tuple[tuple[str, str], ...] = ()
    cwd: str | None = None
    grace_period: float = DEFAULT_GRACE_PERIOD
    log_limit: int = LOG_LIMIT

    async def __call__(
        self, item: Mapping[str, Any], allocation: GPUAllocation | None
    ) -> dict[str, Any]:
        node = str(ray.get_runtime_context().get_node_id())
        if self.cwd is not None and not await anyio.Path(self.cwd).is_dir():
            raise FileNotFoundError(
                f"the job's working directory {self.cwd!r} does not exist on node {node[:8]} "
                "(gpupool run --ray runs jobs in the driver's directory: it must be on every node)"
            )
        # Up before the job starts, so that on_start only has to tell it the group.
        await anyio.to_thread.run_sync(_WATCHDOG.start)
        directory = Path(tempfile.mkdtemp(prefix=NODE_LOG_PREFIX))
        log = directory / Path(str(item["log"])).name
        started: list[int] = []

        def on_start(pid: int) -> None:
            started.append(pid)
            _WATCHDOG.track(pid, self.grace_period)

        try:
            result = await run_process(
                str(item["command"]),
                allocation=allocation,
                log_path=log,
                env={**dict(self.env), "GPUPOOL_JOB_KEY": str(item["key"])},
                grace_period=self.grace_period,
                cwd=self.cwd,
                on_start=on_start,
                check=False,
            )
        finally:
            for pid in started:
                _WATCHDOG.untrack(pid)
        # This worker's own event loop runs nothing else: reading here blocks no one.
        output, dropped = _tail(log, self.log_limit)
        if not dropped:
            shutil.rmtree(directory, ignore_errors=True)
        return {
            "returncode": result.returncode,
            "timed_out": result.timed_out,
            "cuda_oom": result.cuda_oom,
            "leftovers": result.leftovers,
            "pid": result.pid,
            "duration_s": round(result.duration_s, 3),
            "node": node,
            "node_log": str(log),
            "output": output,
        }


def _tail(path: Path, limit: int) -> tuple[bytes, int]:
    """The last ``limit`` bytes of ``path`` (with a first line saying what was dropped
    and where the whole is), and how many bytes were dropped."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return b"", 0
    dropped = max(0, size - limit)
    with path.open("rb") as file:
        file.seek(dropped)
        data = file.read(limit)
    if not dropped:
        return data, 0
    note = (
        f"[gpupool: the first {dropped} bytes of this attempt's output are left out here "
        f"(only the last {limit} bytes come back from the node); the whole log stays on "
        f"node {ray.get_runtime_context().get_node_id()[:8]} at {path}]\n"
    )
    return note.encode() + data, dropped


@final
class JobLogs(RemoteGPUs):
    """A :class:`RayCluster` whose :class:`NodeJobs` tasks write their output on the driver.

    Everything but :meth:`call` is the cluster's own. ``call`` of a
    ``NodeJobs`` task appends the node's output to the item's ``"log"`` here,
    then returns the one-box result, or raises :class:`~gpupool.ProcessFailed`
    (its message without the output's tail: the summary names the log).
    """

    def __init__(self, cluster: RayCluster) -> None:
        if not isinstance(cluster, RayCluster):
            raise TypeError(f"cluster must be a RayCluster, got {cluster!r}")
        self.cluster = cluster

    async def acquire(
        self, resources: Resources, *, experiment_id: str | None = None
    ) -> GPUAllocation:
        return await self.cluster.acquire(resources, experiment_id=experiment_id)

    async def release(self, allocation: GPUAllocation) -> None:
        await self.cluster.release(allocation)

    def check_task(self, fn: Callable[..., Any]) -> None:
        self.cluster.check_task(fn)

    def statistics(self) -> PoolStatistics:
        return self.cluster.statistics()

    async def call(
        self,
        fn: Callable[..., Any],
        item: object,
        allocation: GPUAllocation,
        *,
        is_async: bool,
    ) -> Any:
        if not isinstance(fn, NodeJobs):
            return await self.cluster.call(fn, item, allocation, is_async=is_async)
        assert isinstance(item, Mapping)
        log = Path(str(item["log"]))
        try:
            value = await self.cluster.call(fn, item, allocation, is_async=is_async)
        except BaseException as error:
            # Stopped on the node before it returned (a timeout, an interrupt, a worker
            # that died): its output did not come back. A short write, done at once.
            _append(log, _stopped_note(error).encode())
            raise
        await anyio.to_thread.run_sync(_append, log, value.pop("output"))
        result = ProcessResult(
            args=str(item["command"]),
            returncode=value["returncode"],
            pid=value["pid"],
            duration_s=value["duration_s"],
            timed_out=value["timed_out"],
            cuda_oom=value["cuda_oom"],
            log_path=log,
            leftovers=value["leftovers"],
        )
        result.check(with_tail=False)  # as on one box: the summary names the log
        return {
            "returncode": result.returncode,
            "pid": result.pid,
            "duration_s": result.duration_s,
            "log": str(log),
            "node": value["node"],
            "node_log": value["node_log"],
        }


def _append(path: Path, data: bytes) -> None:
    with path.open("ab") as file:
        file.write(data)


def _stopped_note(error: BaseException) -> str:
    if isinstance(error, anyio.get_cancelled_exc_class()):
        why = "its time limit, or an interrupt"
    else:
        why = " ".join(f"{type(error).__name__}: {error}".split())[:300]
    return (
        f"\n[gpupool: this attempt was stopped on its Ray node before it ended ({why}); "
        f"its output did not come back: it is on that node, in a {NODE_LOG_PREFIX}* "
        "directory of its temporary directory]\n"
    )
