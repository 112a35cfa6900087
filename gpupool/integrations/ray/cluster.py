"""RayCluster: a Ray cluster's GPUs, each node's under a gpupool pool, for a ParallelRunner.

What runs where (docs/ray.md):

- **The driver** (this process) runs the :class:`~gpupool.ParallelRunner`:
  its queue, journal, timeouts, retries, events and progress, as on one
  box. :class:`RayCluster` is what the runner acquires from and releases to.
- **One agent per node** (``agent.py``), pinned to its node, owns a
  :class:`~gpupool.GPUResourcePool` over that node's GPUs. The driver picks
  the node (``placement.py``); the node's pool picks the GPUs.
- **Worker actors** on the node (``worker.py``) run the task functions, one
  task at a time each, reused across tasks on the same GPUs.

What a node grants, the driver keeps as a lease for its next request of
the same shape (``leases.py``), so a task usually costs the driver one call
to Ray, the worker's ``call``; the agent's ``acquire`` and ``release`` are
made when a lease is first needed and when it goes back.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import itertools
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, final

import anyio
import attrs
import ray
import ray.cloudpickle
import ray.exceptions
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ..._core.checks import (
    check_callable,
    check_finite_seconds,
    check_int,
    check_seconds,
    shown,
)
from ..._core.errors import AllocationNotHeld, PoolClosed, UnsatisfiableRequest
from ..._core.model import GPUAllocation, PoolStatistics
from ..._core.request import Resources
from ..._ledger.location import DEFAULT
from ..._runner.remote import RemoteGPUs
from ...providers import GPUProvider
from .agent import NodeAgent
from .leases import Lease, LeaseBook, Waiter
from .placement import choose_node, servable_by
from .refs import resolved, waker
from .worker import Call, FunctionUnknown

__all__ = ["RayCluster"]

_log = logging.getLogger("gpupool.ray")

_cluster_ids = itertools.count(1)


#: Task functions the driver keeps pickled (the oldest is dropped beyond).
MAX_FUNCTIONS = 256


@final
@attrs.frozen(eq=False)
class _Shipped:
    """A task function as sent to workers: pickled once, named by a token after."""

    fn: Callable[..., Any]
    token: int
    payload: bytes


@final
@attrs.define(eq=False)
class _Sent:
    """A request sent to a node's agent, not answered yet."""

    node: str
    shape: Resources
    ref: Any
    number: int  # what the agent knows it by (NodeAgent.withdraw)
    #: Cancelled by the driver: no waiter counts on it, a grant goes back.
    cancelled: bool = False


@final
class RayCluster(RemoteGPUs):
    """A Ray cluster with a gpupool agent on every node; give it to a ParallelRunner.

    ``address`` is what ``ray.init`` takes (``"auto"``, ``"ray://host:10001"``,
    ``"127.0.0.1:6379"``); ``None`` starts a local Ray instance for this
    process (``ray.init(address="local")``). If this process is connected to
    Ray already, that connection is used and left open.

    ``provider`` is a picklable zero-argument callable that each agent calls
    on its node to get its GPU provider; ``None`` is NVML on every node.
    ``max_parallel``, ``ledger``, ``refresh_interval`` and ``settle_timeout``
    are each node pool's own (``GPUResourcePool``'s arguments of those names;
    every node's pool joins that node's machine-wide ledger by default).
    ``open_timeout`` bounds the connection to Ray and each node's agent
    coming up: a node whose agent has not answered by then gets no work, and
    if no node has, or Ray cannot be reached, entering raises.

    ``lease_time`` (seconds): how long the driver may hand GPUs a node granted
    straight on to its next task of the same shape before they go back to
    the node's pool (``leases.py``; docs/ray.md). A task that reuses them
    costs one call to Ray instead of three; other processes waiting for
    those GPUs on that node wait at most about ``lease_time`` plus one task.
    ``0`` hands nothing on. ``stop_timeout`` (seconds): how long a task that
    timed out or was cancelled may take to stop on its node (an async
    function is cancelled there, so ``run_process`` ends its job) before
    its worker process is ended. ``init_options`` go to ``ray.init`` as they
    are.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        provider: Callable[[], GPUProvider] | None = None,
        max_parallel: int | None = None,
        ledger: str | os.PathLike[str] | object | None = DEFAULT,
        refresh_interval: float = 1.0,
        settle_timeout: float = 30.0,
        open_timeout: float = 120.0,
        lease_time: float = 1.0,
        stop_timeout: float = 30.0,
        init_options: Mapping[str, Any] | None = None,
    ) -> None:
        if address is not None and not isinstance(address, str):
            raise TypeError(
                f"address must be a str (as ray.init takes it) or None, got {shown(address)}"
            )
        if provider is not None:
            check_callable("provider", provider, allowed="a zero-argument callable or None")
        if max_parallel is not None:
            check_int("max_parallel", max_parallel, minimum=1)
        if init_options is not None and not isinstance(init_options, Mapping):
            raise TypeError(f"init_options must be a mapping or None, got {shown(init_options)}")
        self._address = address
        self._provider = provider
        self._pool_options: dict[str, Any] = {
            "max_parallel": max_parallel,
            "refresh_interval": check_finite_seconds(
                "refresh_interval", refresh_interval, allow_zero=False
            ),
            "settle_timeout": check_seconds("settle_timeout", settle_timeout),
        }
        if ledger is not DEFAULT:
            self._pool_options["ledger"] = ledger
        self._init_options = dict(init_options or {})
        self._open_timeout = check_finite_seconds("open_timeout", open_timeout, allow_zero=False)
        self._lease_time = check_finite_seconds("lease_time", lease_time)
        self._stop_timeout = check_finite_seconds("stop_timeout", stop_timeout)
        self._id = next(_cluster_ids)
        self._agents: dict[str, Any] = {}
        self._stats: dict[str, PoolStatistics] = {}
        self._book = LeaseBook(self._lease_time)
        self._events: dict[Waiter, anyio.Event] = {}
        self._sent: dict[Resources, list[_Sent]] = {}
        self._sent_to: Counter[str] = Counter()  # per node: requests sent, not answered
        self._held: dict[int, Lease] = {}
        self._ids = itertools.count(1)
        self._calls = itertools.count(1)
        self._requests = itertools.count(1)
        self._wake: Callable[[Callable[[], object]], object] = _not_open
        self._functions: dict[int, _Shipped] = {}  # by id(fn), oldest first
        self._tokens = itertools.count(1)
        self._started_ray = False
        self._opened = False
        self._closed = False

    # ------------------------------------------------------------ lifetime

    async def __aenter__(self) -> RayCluster:
        if self._opened:
            raise RuntimeError("a RayCluster can be entered only once")
        self._opened = True
        agents: dict[str, Any] = {}
        try:
            with anyio.move_on_after(self._open_timeout) as connecting:
                # Abandoned on timeout: ray.init cannot be interrupted (the thread ends
                # with the process, or when Ray gives up).
                await anyio.to_thread.run_sync(self._connect, abandon_on_cancel=True)
            if connecting.cancelled_caught:
                raise ConnectionError(
                    f"could not connect to Ray at {self._address or 'a local instance'} within "
                    f"open_timeout={self._open_timeout:g} s (on one machine, Ray 2.60 needs "
                    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 in the environment to stay on "
                    "127.0.0.1; see docs/ray.md)"
                )
            nodes = await anyio.to_thread.run_sync(_alive_nodes)
            try:
                for node in nodes:
                    agents[node] = self._start_agent(node)
            except TypeError as error:
                raise TypeError(
                    f"provider {shown(self._provider)} cannot be sent to the cluster's nodes "
                    f"(Ray pickles it): {error}"
                ) from error
            stats: dict[str, PoolStatistics] = {}
            failures: dict[str, Exception] = {}

            async def ask(node: str) -> None:
                # Bounded: an agent that cannot start on its node, or whose provider hangs,
                # must not hang the open.
                with anyio.move_on_after(self._open_timeout) as waiting:
                    try:
                        stats[node] = await resolved(agents[node].statistics.remote())
                    except Exception as error:
                        failures[node] = error
                if waiting.cancelled_caught:
                    failures[node] = TimeoutError(
                        f"the agent did not answer within open_timeout={self._open_timeout:g} s"
                    )

            async with anyio.create_task_group() as group:
                for node in agents:
                    group.start_soon(ask, node)
            # A node without GPUs (a CPU-only head, say) or whose provider fails takes
            # no GPU tasks; the cluster fails to open only if no node has a pool.
            for node, failure in failures.items():
                _log.warning("gpupool: no agent on node %s: its pool failed: %r", node, failure)
            for node in [n for n, s in stats.items() if not s.gpus]:
                del stats[node]
            for node in set(agents) - set(stats):
                ray.kill(agents.pop(node))
            if failures and not agents:
                raise next(iter(failures.values()))
        except BaseException:
            self._closed = True
            with anyio.CancelScope(shield=True):
                for agent in agents.values():
                    ray.kill(agent)
                await self._disconnect()
            raise
        self._agents, self._stats = agents, stats
        self._wake = waker()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every node's pool (what the driver still holds is given back) and the agents."""
        if self._closed:
            return
        self._closed = True
        agents, self._agents = self._agents, {}
        with anyio.CancelScope(shield=True):

            async def close(agent: Any) -> None:
                # A node that is gone took its pool with it.
                with anyio.move_on_after(10), contextlib.suppress(ray.exceptions.RayError):
                    await resolved(agent.close.remote())
                ray.kill(agent)

            async with anyio.create_task_group() as group:
                for agent in agents.values():
                    group.start_soon(close, agent)
            self._held.clear()
            for waiter in self._book.waiters:
                waiter.error = PoolClosed("the RayCluster closed while the request waited")
                self._fail(waiter)
            await self._disconnect()

    def _connect(self) -> None:
        if ray.is_initialized():
            return
        _check_reachable(self._address)
        options = {"log_to_driver": False, "logging_level": logging.WARNING, **self._init_options}
        ray.init(address="local" if self._address is None else self._address, **options)
        self._started_ray = True

    async def _disconnect(self) -> None:
        if self._started_ray:
            self._started_ray = False
            await anyio.to_thread.run_sync(ray.shutdown)

    def _start_agent(self, node: str) -> Any:
        strategy = NodeAffinitySchedulingStrategy(node, soft=False)
        actor = ray.remote(NodeAgent).options(num_cpus=0, scheduling_strategy=strategy)
        return actor.remote(node, self._provider, self._pool_options)

    @property
    def nodes(self) -> tuple[str, ...]:
        """The ids of the nodes with a live agent."""
        return tuple(self._agents)

    # ------------------------------------------------------------ what the runner calls

    async def acquire(
        self, resources: Resources, *, experiment_id: str | None = None
    ) -> GPUAllocation:
        if not isinstance(resources, Resources):
            raise TypeError(f"resources must be a gpupool.Resources, got {shown(resources)}")
        if resources.allowed_gpus is not None:
            raise ValueError(
                "allowed_gpus names GPUs of one machine; a cluster's requests cannot use it, "
                f"got {sorted(resources.allowed_gpus)}"
            )
        if self._closed or not self._opened:
            raise PoolClosed("the RayCluster is not open: use `async with RayCluster(...)`")
        # At once, before it waits: a request no node could ever serve.
        servable_by(resources, self._live_stats())
        waiter, send = self._book.arrive(resources, experiment_id)
        done = self._events[waiter] = anyio.Event()
        try:
            if send:
                self._send(resources, experiment_id)
            await done.wait()
        except BaseException:
            # Cancelled (or the send failed). A lease given meanwhile is handed on.
            if waiter.lease is not None:
                self._hand_on(waiter.lease)
            elif waiter.error is None:
                self._cancel_sent(resources, self._book.leave(waiter))
            raise
        finally:
            del self._events[waiter]
        if waiter.error is not None:
            raise waiter.error
        lease = waiter.lease
        assert lease is not None
        granted = lease.grant
        allocation = GPUAllocation(
            next(self._ids),
            granted.gpu_indices,
            granted.gpu_uuids,
            granted.memory_mb,
            granted.exclusive,
            experiment_id,
            self._id,
            gpu_memory_total_mb=granted.gpu_memory_total_mb,
        )
        self._held[allocation.id] = lease
        return allocation

    async def release(self, allocation: GPUAllocation) -> None:
        lease = self._held.pop(allocation.id, None) if allocation.pool_id == self._id else None
        if lease is None:
            raise AllocationNotHeld(
                f"allocation {allocation.id} is not held from this RayCluster: it was released "
                "already, or another pool granted it"
            )
        self._hand_on(lease)

    # -- the leases (leases.py decides; these make the Ray calls)

    def _live_stats(self) -> dict[str, PoolStatistics]:
        # Only nodes with an agent: a late report may name a node just lost.
        return {n: stats for n, stats in self._stats.items() if n in self._agents}

    def _send(self, shape: Resources, experiment_id: str | None) -> None:
        """Send one request of ``shape`` to the node placement picks."""
        node = choose_node(shape, self._live_stats(), self._sent_to)
        number = next(self._requests)
        call = self._agents[node].acquire.remote(shape, experiment_id, number)
        self._track(_Sent(node, shape, call, number))

    def _renew(self, lease: Lease) -> None:
        """Give ``lease`` back and ask its node for its shape again.

        Two calls, not one: the request may be withdrawn later (``_cancel_sent``),
        the give-back must happen whatever becomes of it. Ray runs one caller's
        calls to an actor in the order sent, so the release comes first.
        """
        self._give_back(lease)
        first = self._book.first_of(lease.shape)
        number = next(self._requests)
        agent = self._agents[lease.node]
        call = agent.acquire.remote(lease.shape, first and first.experiment_id, number)
        self._track(_Sent(lease.node, lease.shape, call, number))

    def _track(self, sent: _Sent) -> None:
        """Hear the answer to ``sent`` on the event loop."""
        node = sent.node
        self._sent.setdefault(sent.shape, []).append(sent)
        self._sent_to[node] += 1
        wake = self._wake
        answered = functools.partial(self._answered, sent)

        def on_done(future: concurrent.futures.Future[Any]) -> None:
            # On Ray's thread; the answer is handled on the event loop. A loop
            # that has ended (asyncio: closed; trio.RunFinishedError) hears nothing.
            with contextlib.suppress(RuntimeError):
                wake(functools.partial(answered, future))

        sent.ref.future().add_done_callback(on_done)

    def _answered(self, sent: _Sent, future: concurrent.futures.Future[Any]) -> None:
        """A node answered ``sent`` (on the event loop)."""
        self._sent[sent.shape].remove(sent)
        if not self._sent[sent.shape]:
            del self._sent[sent.shape]
        self._sent_to[sent.node] -= 1
        error = None if future.cancelled() else future.exception()
        if future.cancelled() or error is not None:
            if sent.cancelled or self._closed:
                return
            if isinstance(error, ray.exceptions.RayActorError):
                # The node's agent is gone, and with it its pool and what it held:
                # the request never ran anything, so it waits elsewhere at no cost.
                self._lost(sent.node)
                if self._book.lost(sent.shape):
                    try:
                        self._send(sent.shape, None)
                    except UnsatisfiableRequest as unsatisfiable:  # no node left for it
                        self._fail(self._book.refused(sent.shape, unsatisfiable))
                return
            cause = error.cause if isinstance(error, ray.exceptions.RayTaskError) else error
            self._fail(self._book.refused(sent.shape, cause or PoolClosed("cancelled")))
            return
        answer = future.result()
        if answer is None:  # withdrawn before it was granted
            return
        granted, worker, stats = answer
        if sent.node in self._agents:
            self._stats[sent.node] = stats
        lease = Lease(sent.node, sent.shape, granted, worker, time.monotonic())
        waiter = None if self._closed else self._book.granted(lease, cancelled=sent.cancelled)
        if waiter is None:
            self._give_back(lease)
        else:
            self._events[waiter].set()

    def _fail(self, waiter: Waiter | None) -> None:
        if waiter is not None:
            self._events[waiter].set()

    def _hand_on(self, lease: Lease) -> None:
        """A lease the driver is done with: to its next waiter, or back to its node."""
        if lease.node not in self._agents:
            return  # the node is gone, and its pool with it
        handing = self._book.released(lease, time.monotonic())
        if handing.to is not None:
            self._events[handing.to].set()
            return
        self._cancel_sent(lease.shape, handing.cancel)
        if handing.renew:
            self._renew(lease)
        else:
            self._give_back(lease)

    def _give_back(self, lease: Lease) -> None:
        agent = self._agents.get(lease.node)
        if agent is None or self._closed:
            return  # the node is gone; or closing, which gives back everything
        # Sent, not awaited: a release never yields. The node's new state comes back
        # on Ray's thread (a dict assignment, atomic).
        future = agent.release.remote(lease.grant.id, lease.worker_ok).future()
        future.add_done_callback(functools.partial(self._noted, lease.node))

    def _noted(self, node: str, future: concurrent.futures.Future[Any]) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        stats = future.result()
        if stats is not None and node in self._agents:
            self._stats[node] = stats

    def _cancel_sent(self, shape: Resources, count: int) -> None:
        """Withdraw ``count`` of the requests of ``shape`` still waiting on nodes, the
        last sent first (they are the furthest back in their nodes' queues)."""
        live = [sent for sent in self._sent.get(shape, ()) if not sent.cancelled]
        by_node: dict[str, list[int]] = {}
        for sent in live[len(live) - count :] if count else ():
            sent.cancelled = True  # its grant, if it races the withdrawal, goes back
            by_node.setdefault(sent.node, []).append(sent.number)
        for node, numbers in by_node.items():
            agent = self._agents.get(node)
            if agent is not None:
                agent.withdraw.remote(numbers)

    # -- running a task

    async def call(
        self,
        fn: Callable[..., Any],
        item: object,
        allocation: GPUAllocation,
        *,
        is_async: bool,
    ) -> Any:
        lease = self._held.get(allocation.id) if allocation.pool_id == self._id else None
        if lease is None:
            raise AllocationNotHeld(f"allocation {allocation.id} is not held from this RayCluster")
        _check_not_a_bare_optuna_trial(item)
        shipped = self._ship(fn)
        # The function and the allocation only with the first call of this lease;
        # named after (worker.Call).
        first = shipped.token not in lease.functions
        call = Call(
            next(self._calls),
            shipped.token,
            shipped.payload if first else None,
            item,
            lease.grant.id,
            None if lease.sent_grant else lease.grant,
            is_async,
        )
        try:
            ref = lease.worker.call.remote(call)
        except TypeError as error:
            raise TypeError(
                f"the task's item {shown(item)} cannot be sent to the cluster's nodes "
                f"(Ray pickles it): {error}"
            ) from error
        lease.functions.add(shipped.token)
        lease.sent_grant = True
        number = call.number
        try:
            try:
                return await resolved(ref)
            except ray.exceptions.RayTaskError as error:
                if not isinstance(error.cause, FunctionUnknown):
                    raise
            # The worker had let it go (it keeps the last few): once more, with it.
            call = call._replace(number=next(self._calls), payload=shipped.payload)
            number = call.number
            ref = lease.worker.call.remote(call)
            return await resolved(ref)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await self._stop(lease, number, ref)
            raise
        except ray.exceptions.RayTaskError as error:
            cause = error.cause
            if isinstance(cause, Exception):
                raise cause from error
            raise
        except ray.exceptions.RayActorError:
            lease.worker_ok = False
            if not await anyio.to_thread.run_sync(_is_alive, lease.node):
                self._lost(lease.node)
            raise

    async def _stop(self, lease: Lease, number: int, ref: Any) -> None:
        """Stop call ``number`` on its node: gracefully if it is async (its job ends,
        its ``finally`` runs), within ``stop_timeout``; else by ending its worker."""
        with anyio.move_on_after(self._stop_timeout) as waiting:
            try:
                if await resolved(lease.worker.interrupt.remote(number)):
                    with contextlib.suppress(ray.exceptions.RayTaskError):
                        await resolved(ref)  # what it raised on the way out is not wanted
                    return
            except ray.exceptions.RayError:
                pass  # the worker is gone already
        if waiting.cancelled_caught:
            _log.warning(
                "gpupool: a task on node %s did not stop within stop_timeout=%g s; its "
                "worker process is ended",
                lease.node,
                self._stop_timeout,
            )
        lease.worker_ok = False
        ray.kill(lease.worker)

    def check_task(self, fn: Callable[..., Any]) -> None:
        self._ship(fn)

    def _ship(self, fn: Callable[..., Any]) -> _Shipped:
        """``fn`` pickled once (``TypeError`` naming it if it cannot be), with its token.

        Sent to a worker once, then named by its token: pickling a function
        of ``__main__`` by value on every call cost the driver and the worker
        about 0.2 ms of CPU per task together (docs/benchmarks.md).
        """
        shipped = self._functions.get(id(fn))
        if shipped is not None:
            return shipped
        try:
            payload = ray.cloudpickle.dumps(fn)  # type: ignore[no-untyped-call]
        except Exception as error:
            name = getattr(fn, "__qualname__", None) or shown(fn)
            raise TypeError(
                f"the task function {name} cannot be sent to the cluster's nodes (Ray "
                f"pickles it): {error}"
            ) from error
        if len(self._functions) >= MAX_FUNCTIONS:
            self._functions.pop(next(iter(self._functions)))
        # Kept with the function, so that its id is not reused meanwhile.
        shipped = self._functions[id(fn)] = _Shipped(fn, next(self._tokens), payload)
        return shipped

    def statistics(self) -> PoolStatistics:
        if not self._opened:
            raise PoolClosed("the RayCluster is not open: use `async with RayCluster(...)`")
        nodes = list(self._stats.values())
        caps = [s.max_parallel for s in nodes]
        return PoolStatistics(
            gpus=tuple(g for s in nodes for g in s.gpus),
            holder_count=sum(s.holder_count for s in nodes),
            waiters=sum(s.waiters for s in nodes),
            max_parallel=None if None in caps else sum(c for c in caps if c is not None),
            grants_total=sum(s.grants_total for s in nodes),
        )

    def node_statistics(self) -> dict[str, PoolStatistics]:
        """Each node's pool as it last reported (after a grant or a release there)."""
        return dict(self._stats)

    def _lost(self, node: str) -> None:
        """Forget a node that died: no more requests go there."""
        if self._agents.pop(node, None) is not None:
            _log.warning("gpupool: node %s left the Ray cluster; its tasks go elsewhere", node)
        self._stats.pop(node, None)


def _check_reachable(address: str | None) -> None:
    """Refuse a ``host:port`` address where nothing listens, before ``ray.init`` sees it.

    Ray retries such an address without end, and its retrying thread then
    keeps the process from exiting even after the open has given up
    (``open_timeout``): measured here, still running after 600 s.
    """
    if address is None or address in ("auto", "local"):
        return
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        return  # not host:port: Ray's own parsing says what is wrong with it
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as error:
        raise ConnectionError(
            f"nothing answers at the Ray address {address!r} ({error}): is the cluster "
            "running (`ray status`), and is this its head's address?"
        ) from None


def _check_not_a_bare_optuna_trial(item: object) -> None:
    """Refuse an Optuna trial whose parameters are to be suggested on the node.

    Pickled to a node, a trial's ``suggest_*`` would fill in the copy there,
    and the driver's study would be told a result for parameters it never
    saw: wrong, without an error. With ``OptunaStrategy(search_space=...)``
    the driver's study makes the parameters first.
    """
    kind = type(item)
    if kind.__name__ != "Trial" or not kind.__module__.startswith("optuna."):
        return
    if not getattr(item, "params", None):
        raise TypeError(
            "an Optuna trial cannot be sent to a Ray node to make its suggestions there: "
            "they would never reach the study on the driver. Give the search space on "
            "the driver: OptunaStrategy(study, search_space={'lr': "
            "optuna.distributions.FloatDistribution(1e-5, 1e-1, log=True), ...})"
        )


def _not_open(callback: Callable[[], object]) -> object:
    raise RuntimeError("the RayCluster is not open")


def _alive_nodes() -> list[str]:
    nodes: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
    return [str(n["NodeID"]) for n in nodes if n.get("Alive")]


def _is_alive(node: str) -> bool:
    return node in _alive_nodes()
