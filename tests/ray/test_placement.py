"""Which node a request goes to (gpupool.integrations.ray.placement), pure."""

from __future__ import annotations

import pytest

from gpupool import GPUStatistics, PoolStatistics, Resources, UnsatisfiableRequest

pytest.importorskip("ray")
from gpupool.integrations.ray.placement import choose_node


def node(count: int, memory_mb: int, *, held: int = 0, waiters: int = 0) -> PoolStatistics:
    gpus = tuple(
        GPUStatistics(
            index=i,
            uuid=f"GPU-{i}",
            healthy=True,
            memory_total_mb=memory_mb,
            memory_reserved_mb=0,
            memory_foreign_mb=0,
            memory_free_mb=memory_mb,
            utilization_pct=0.0,
            holder_ids=(i + 1,) if i < held else (),
            exclusive=i < held,
            settling=False,
        )
        for i in range(count)
    )
    return PoolStatistics(gpus, held, waiters, None, 0)


ONE = Resources(required_gpus=1)


def test_a_node_that_can_serve_now_wins() -> None:
    nodes = {"a": node(4, 8000, held=4), "b": node(4, 8000, held=3)}
    assert choose_node(ONE, nodes, {"a": 0, "b": 0}) == "b"


def test_the_shortest_queue_counts_this_drivers_requests_once() -> None:
    # The wave seen in bench_ray (docs/benchmarks.md): both nodes busy; this driver has
    # 4 requests waiting on "a" and 3 on "b", and the nodes' last reports, stale, name
    # 1 and 3 waiters, which are the same requests again. The next goes to "b".
    nodes = {"a": node(4, 8000, held=4, waiters=1), "b": node(4, 8000, held=4, waiters=3)}
    assert choose_node(ONE, nodes, {"a": 4, "b": 3}) == "b"


def test_ties_go_to_the_most_free_gpus_then_the_node_id() -> None:
    nodes = {"b": node(4, 8000, held=1), "a": node(4, 8000, held=2)}
    assert choose_node(ONE, nodes, {}) == "b"
    nodes = {"b": node(4, 8000), "a": node(4, 8000)}
    assert choose_node(ONE, nodes, {}) == "a"


def test_memory_decides_which_nodes_could_ever_serve() -> None:
    nodes = {"a": node(2, 8000), "b": node(2, 24000, held=2)}
    assert choose_node(Resources(required_gpus=1, min_memory_mb=16000), nodes, {}) == "b"


def test_a_request_no_node_could_ever_serve_fails() -> None:
    nodes = {"a": node(2, 8000), "b": node(2, 24000)}
    with pytest.raises(UnsatisfiableRequest, match="most healthy GPUs on one node is 2"):
        choose_node(Resources(required_gpus=3), nodes, {})
    with pytest.raises(UnsatisfiableRequest, match="the largest GPU has 24000 MB"):
        choose_node(Resources(required_gpus=1, min_memory_mb=30000), nodes, {})


def test_requests_sent_since_a_report_count_against_its_free_gpus() -> None:
    # Both reported 4 free; 4 requests are on their way to "a" and 3 to "b": "b" is the
    # one that can still serve the next at once.
    nodes = {"a": node(4, 8000), "b": node(4, 8000)}
    assert choose_node(ONE, nodes, {"a": 4, "b": 3}) == "b"
    # A wave of 8 from nothing goes 4 and 4.
    sent = {"a": 0, "b": 0}
    for _ in range(8):
        sent[choose_node(ONE, nodes, sent)] += 1
    assert sent == {"a": 4, "b": 4}
