"""ParallelRunner(RayCluster(...)) on a real two-node Ray cluster (tests/ray/conftest.py),
on both anyio backends: where tasks run, that no GPU of any node is held twice, memory
placement, clear errors, error isolation, timeouts that free the GPUs on the node."""

from __future__ import annotations

import itertools
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from gpupool import GPUAllocation, ParallelRunner, Resources, TaskStatus, UnsatisfiableRequest

from .conftest import RayTestCluster, fake_gpus

ray = pytest.importorskip("ray")
from gpupool.integrations.ray import RayCluster  # noqa: E402

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(300)]


def where(item: float, allocation: GPUAllocation | None) -> dict[str, Any]:
    """A task: sleeps ``item`` s on its GPUs and says where and when it ran."""
    assert allocation is not None
    started = time.time()
    time.sleep(item)
    return {
        "node": ray.get_runtime_context().get_node_id(),
        "pid": os.getpid(),
        "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "order": os.environ.get("CUDA_DEVICE_ORDER"),
        "uuids": allocation.gpu_uuids,
        "span": (started, time.time()),
    }


async def where_async(item: float, allocation: GPUAllocation | None) -> dict[str, Any]:
    import anyio

    assert allocation is not None
    await anyio.sleep(item)
    return {"node": ray.get_runtime_context().get_node_id(), "uuids": allocation.gpu_uuids}


def fails_on_odd(item: int, allocation: GPUAllocation | None) -> int:
    if item % 2:
        raise ValueError(f"odd item {item}")
    return item


def sleeps(item: float, allocation: GPUAllocation | None) -> float:
    time.sleep(item)
    return item


def notes_pid_and_sleeps(item: tuple[str, float], allocation: GPUAllocation | None) -> None:
    path, seconds = item
    with open(path, "w") as file:
        file.write(str(os.getpid()))
    time.sleep(seconds)


def ends(pid: int, within: float = 60.0) -> bool:
    """Whether process ``pid`` ends within ``within`` seconds (a blocking wait)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def overlapping(records: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Pairs of tasks that held one GPU of one node at the same time."""
    by_gpu: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for record in records:
        for uuid in record["uuids"]:
            by_gpu.setdefault((record["node"], uuid), []).append(record["span"])
    found = []
    for gpu, spans in by_gpu.items():
        spans.sort()
        found += [(gpu, a, b) for a, b in itertools.pairwise(spans) if b[0] < a[1]]
    return found


async def test_tasks_spread_over_the_nodes_and_no_gpu_is_held_twice(
    ray_cluster: RayTestCluster,
) -> None:
    async with (
        RayCluster(provider=fake_gpus) as cluster,
        ParallelRunner(cluster, max_parallel=8) as runner,
    ):
        assert set(cluster.nodes) == set(ray_cluster.ids.values())  # the GPU-less head has none
        results = await runner.map(where, [0.2] * 16, required_gpus=1)
    records = [r.value for r in results]
    assert all(r.status is TaskStatus.SUCCEEDED for r in results)
    assert {r["node"] for r in records} == set(ray_cluster.ids.values())
    assert overlapping(records) == []
    for record in records:
        assert record["visible"] == ",".join(record["uuids"])
        assert record["order"] == "PCI_BUS_ID"
    # Workers are reused: at most one per GPU set of each node ran the 16 tasks.
    assert len({r["pid"] for r in records}) <= 4


async def test_leases_renewed_and_requests_cancelled_leave_no_gpu_held(
    ray_cluster: RayTestCluster,
) -> None:
    import anyio

    # A short lease_time: leases go back and are asked for again many times, and
    # the requests left over at the end are cancelled, some before their node runs them.
    async with (
        RayCluster(provider=fake_gpus, lease_time=0.05) as cluster,
        ParallelRunner(cluster, max_parallel=4) as runner,
    ):
        results = await runner.map(sleeps, [0.03] * 60, required_gpus=1)
        assert all(r.status is TaskStatus.SUCCEEDED for r in results)
        with anyio.fail_after(60):
            # Every GPU of both nodes is free again: two tasks of two GPUs, one per node
            # (a GPU left held on a node would keep its task waiting there for ever).
            both = await runner.map(where, [0.5, 0.5], required_gpus=2)
    assert all(r.status is TaskStatus.SUCCEEDED for r in both)
    assert {r.value["node"] for r in both} == set(ray_cluster.ids.values())


async def test_an_async_function_runs_on_the_node(ray_cluster: RayTestCluster) -> None:
    async with (
        RayCluster(provider=fake_gpus) as cluster,
        ParallelRunner(cluster, max_parallel=2) as runner,
    ):
        results = await runner.map(where_async, [0.01] * 4, required_gpus=1)
    assert [r.status for r in results] == [TaskStatus.SUCCEEDED] * 4
    assert {r.value["node"] for r in results} <= set(ray_cluster.ids.values())


async def test_a_request_too_big_for_one_nodes_gpus_lands_on_the_other(
    ray_cluster: RayTestCluster,
) -> None:
    async with (
        RayCluster(provider=fake_gpus) as cluster,
        ParallelRunner(cluster, max_parallel=4) as runner,
    ):
        results = await runner.map(where, [0.05] * 4, required_gpus=1, min_memory_mb=16_000)
    assert {r.value["node"] for r in results} == {ray_cluster.ids["b"]}


async def test_a_request_no_node_could_ever_serve_fails_at_once(
    ray_cluster: RayTestCluster,
) -> None:
    async with (
        RayCluster(provider=fake_gpus) as cluster,
        ParallelRunner(cluster, max_parallel=2) as runner,
    ):
        # Queued, they would wait for ever (the module's timeout fails that): they end.
        too_many = runner.submit(where, 0.0, required_gpus=3)  # no node has 3
        too_big = runner.submit(where, 0.0, required_gpus=1, min_memory_mb=32_000)
        results = [await too_many.wait(), await too_big.wait()]
    for result in results:
        assert result.status is TaskStatus.FAILED
        assert result.attempts == 1
        assert "UnsatisfiableRequest" in (result.error or "")
    async with RayCluster(provider=fake_gpus) as cluster:
        with pytest.raises(UnsatisfiableRequest, match="most healthy GPUs on one node is 2"):
            await cluster.acquire(Resources(3))


async def test_one_failing_task_does_not_stop_the_others(ray_cluster: RayTestCluster) -> None:
    async with (
        RayCluster(provider=fake_gpus) as cluster,
        ParallelRunner(cluster, max_parallel=4) as runner,
    ):
        results = await runner.map(fails_on_odd, range(6), required_gpus=1)
    assert [r.status for r in results] == [TaskStatus.SUCCEEDED, TaskStatus.FAILED] * 3
    assert [r.value for r in results[::2]] == [0, 2, 4]
    assert all("ValueError: odd item" in (r.error or "") for r in results[1::2])


async def test_a_function_that_cannot_be_pickled_is_refused_at_the_call(
    ray_cluster: RayTestCluster,
) -> None:
    lock = threading.Lock()

    def holds_a_lock(item: int, allocation: GPUAllocation | None) -> bool:
        return lock.locked()

    async with (
        RayCluster(provider=fake_gpus) as cluster,
        ParallelRunner(cluster, max_parallel=2) as runner,
    ):
        with pytest.raises(TypeError, match=r"holds_a_lock cannot be sent to the cluster"):
            runner.submit(holds_a_lock, 1, required_gpus=1)


async def test_a_timeout_stops_the_task_on_its_node_and_frees_its_gpus(
    ray_cluster: RayTestCluster, tmp_path: Path
) -> None:
    import anyio

    pid_file = tmp_path / "pid"
    async with (
        RayCluster(provider=fake_gpus) as cluster,
        ParallelRunner(cluster, max_parallel=2) as runner,
    ):
        task = runner.submit(
            notes_pid_and_sleeps, (str(pid_file), 300.0), required_gpus=2, min_memory_mb=16_000,
            timeout=5.0,  # starting a worker for the GPUs counts too (docs/ray.md)
        )  # fmt: skip
        result = await task.wait()
        assert result.status is TaskStatus.TIMED_OUT
        assert "timeout" in (result.error or "")
        pid = int(pid_file.read_text())
        # The function is stopped on the node (its worker process ends) ...
        assert await anyio.to_thread.run_sync(ends, pid)
        with anyio.fail_after(60):
            # ... and the node's GPUs are free again: both of node b's serve a new task.
            again = await runner.submit(sleeps, 0.0, required_gpus=2, min_memory_mb=16_000).wait()
        assert again.status is TaskStatus.SUCCEEDED


async def runs_a_job_until_stopped(item: str, allocation: GPUAllocation | None) -> None:
    """A task: starts a long job with run_process, records the worker's and the job's
    pids, and notes in ``finally`` that it was stopped."""
    from gpupool import run_process

    folder = Path(item)

    def started(pid: int) -> None:
        (folder / "job").write_text(str(pid))

    (folder / "worker").write_text(str(os.getpid()))
    try:
        await run_process("sleep 300", allocation=allocation, grace_period=1.0, on_start=started)
    finally:
        (folder / "stopped").write_text("yes")


async def test_an_async_task_that_times_out_is_stopped_gracefully_and_its_worker_kept(
    ray_cluster: RayTestCluster, tmp_path: Path
) -> None:
    import anyio

    async with (
        RayCluster(provider=fake_gpus) as cluster,
        ParallelRunner(cluster, max_parallel=1) as runner,
    ):
        result = await runner.submit(
            runs_a_job_until_stopped, str(tmp_path), required_gpus=2, min_memory_mb=16_000,
            timeout=8.0,  # starting a worker for the GPUs counts too (docs/ray.md)
        ).wait()  # fmt: skip
        assert result.status is TaskStatus.TIMED_OUT
        # Cancelled on its node: its job ended by run_process, its finally run ...
        assert (tmp_path / "stopped").read_text() == "yes"
        assert await anyio.to_thread.run_sync(ends, int((tmp_path / "job").read_text()), 10.0)
        # ... and its worker, not killed, runs the next task on those GPUs.
        worker = int((tmp_path / "worker").read_text())
        again = await runner.submit(
            notes_pid_and_sleeps, (str(tmp_path / "again"), 0.0), required_gpus=2,
            min_memory_mb=16_000,
        ).wait()  # fmt: skip
        assert again.status is TaskStatus.SUCCEEDED
        assert int((tmp_path / "again").read_text()) == worker


def plus(k: int, item: int, allocation: GPUAllocation | None) -> tuple[int, int]:
    return item + k, os.getpid()


async def test_a_function_a_worker_let_go_is_sent_again(ray_cluster: RayTestCluster) -> None:
    """Workers keep the last KEPT_FUNCTIONS task functions; the driver names the ones it
    sent by a token, and sends one again when its worker has let it go."""
    import functools

    from gpupool.integrations.ray.worker import KEPT_FUNCTIONS

    functions = [functools.partial(plus, k) for k in range(KEPT_FUNCTIONS + 2)]
    async with (
        # One lease for all (each task waits while the one before runs): its worker
        # is sent each function once, and the first again after it let that go.
        RayCluster(provider=fake_gpus, lease_time=600) as cluster,
        ParallelRunner(cluster, max_parallel=1) as runner,
    ):
        big = {"required_gpus": 2, "min_memory_mb": 16_000}  # node b's two GPUs
        tasks = [runner.submit(fn, 100, **big) for fn in functions]
        again = runner.submit(functions[0], 1, **big)
        results = [await task.wait() for task in [*tasks, again]]
    assert all(r.status is TaskStatus.SUCCEEDED for r in results), [r.error for r in results]
    assert [r.value[0] for r in results] == [100 + k for k in range(len(functions))] + [1]
    assert len({r.value[1] for r in results}) == 1  # one worker ran them all


async def test_bad_arguments_are_refused(ray_cluster: RayTestCluster) -> None:
    with pytest.raises(TypeError, match="provider"):
        RayCluster(provider=42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="address"):
        RayCluster(address=6379)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_parallel"):
        RayCluster(max_parallel=0)
    async with RayCluster(provider=fake_gpus) as cluster:
        with pytest.raises(ValueError, match="allowed_gpus"):
            await cluster.acquire(Resources(1, allowed_gpus=[0]))


UNREACHABLE = """
import anyio
from gpupool.integrations.ray import RayCluster

async def main():
    try:
        async with RayCluster("127.0.0.1:9", open_timeout=30):
            pass
    except ConnectionError as error:
        print(error)

anyio.run(main)
"""


def test_an_address_where_nothing_listens_fails_clearly_and_the_process_exits() -> None:
    """Ray itself retries such an address for ever, and its thread then keeps the process
    from exiting: this fresh interpreter must print the error and end."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", UNREACHABLE], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "nothing answers at the Ray address '127.0.0.1:9'" in done.stdout


def squared_distance(suggestion: dict[str, float], allocation: GPUAllocation | None) -> float:
    assert allocation is not None
    return (suggestion["x"] - 3.0) ** 2


class Grid:
    """A strategy on the driver: asks x = 0, 1, 2, ... and remembers what it was told."""

    def __init__(self) -> None:
        self.asked = 0
        self.told: dict[float, object] = {}

    def ask(self) -> dict[str, float]:
        self.asked += 1
        return {"x": float(self.asked - 1)}

    def tell(self, suggestion: dict[str, float], result: Any) -> None:
        self.told[suggestion["x"]] = result.value


async def test_optimize_asks_and_tells_on_the_driver_and_runs_trials_on_the_nodes(
    ray_cluster: RayTestCluster,
) -> None:
    grid = Grid()
    async with (
        RayCluster(provider=fake_gpus) as cluster,
        ParallelRunner(cluster, max_parallel=4) as runner,
    ):
        study = await runner.optimize(
            grid, squared_distance, n_trials=8, direction="minimize", required_gpus=1
        )
    assert grid.told == {float(x): (x - 3.0) ** 2 for x in range(8)}
    assert study.best is not None
    assert study.best.suggestion == {"x": 3.0}


def optuna_objective(trial: Any, allocation: GPUAllocation | None) -> float:
    x = trial.suggest_float("x", -10.0, 10.0)
    return float((x - 3.0) ** 2)


async def test_an_optuna_study_runs_on_the_nodes_with_its_search_space_on_the_driver(
    ray_cluster: RayTestCluster,
) -> None:
    optuna = pytest.importorskip("optuna")
    from gpupool.integrations.optuna import OptunaStrategy

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = {"x": optuna.distributions.FloatDistribution(-10.0, 10.0)}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    bare = optuna.create_study()
    async with (
        RayCluster(provider=fake_gpus) as cluster,
        ParallelRunner(cluster, max_parallel=4) as runner,
    ):
        await runner.optimize(
            OptunaStrategy(study, search_space=space), optuna_objective, n_trials=6,
            required_gpus=1,
        )  # fmt: skip
        # Suggested on the node, a trial's parameters would never reach the driver's study.
        refused = await runner.optimize(
            OptunaStrategy(bare), optuna_objective, n_trials=1, required_gpus=1
        )
    done = study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    assert len(done) == 6
    for trial in done:  # each value belongs to the parameters the driver's study holds
        assert trial.value == pytest.approx((trial.params["x"] - 3.0) ** 2)
    (only,) = refused.trials
    assert only.result.status is TaskStatus.FAILED
    assert "search_space" in (only.result.error or "")
