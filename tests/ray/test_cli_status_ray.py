"""``gpupool status --ray ADDRESS`` in a subprocess, against a real two-node Ray cluster
(tests/ray/conftest.py): every node's GPUs and holders under its own heading, the
cluster form of ``--json``, a node that fails or hangs shown as one line while the
others show, and the refusals (nothing at the address, ``--watch``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.gpupool_command import held_reservation

from .conftest import RayTestCluster

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[2]


def gpupool(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m gpupool ARGS`` from the repository root (the nodes import tests.ray.tasks)."""
    return subprocess.run(
        [sys.executable, "-m", "gpupool", *args],
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "160"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def reservation(ray_cluster: RayTestCluster) -> Iterator[int]:
    """A ``gpupool reserve`` holding GPU 0 of node "a", in node a's ledger only."""
    with held_reservation(
        "--gpus",
        "1",
        "--fake-gpus",
        "2",
        "--ledger",
        str(ray_cluster.ledgers["a"]),
        "--for",
        "170",
        cwd=ROOT,
    ) as hold_id:
        yield hold_id


def sections(out: str, cluster: RayTestCluster) -> dict[str, str]:
    """The text under each worker node's heading, by node name."""
    starts = {}
    for name, node_id in cluster.ids.items():
        heading = f"node {node_id[:8]} 127.0.0.1"
        assert out.count(heading) == 1, (heading, out)
        starts[name] = out.index(heading)
    found = {}
    for name, start in starts.items():
        later = [s for s in starts.values() if s > start]
        found[name] = out[start : min(later) if later else len(out)]
    return found


def test_every_node_shows_its_own_gpus_and_holders(
    ray_cluster: RayTestCluster, reservation: int
) -> None:
    done = gpupool(
        "status", "--ray", ray_cluster.address, "--provider", "tests.ray.tasks:fake_gpus"
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.count("(head) 127.0.0.1") == 1  # the head: no GPUs
    assert "No GPUs visible" in out
    by_node = sections(out, ray_cluster)
    assert "0 / 8,000 " in by_node["a"]
    assert "24,000" not in by_node["a"]
    assert "0 / 24,000 " in by_node["b"]
    assert "8,000" not in by_node["b"]
    assert out.index("(head)") < min(out.index(by_node[name]) for name in by_node)
    # The reservation is in node a's ledger: shown there, and only there.
    assert f"ledger {ray_cluster.ledgers['a']}" in by_node["a"]
    assert f"reservation #{reservation}" in by_node["a"]
    assert "reserve --gpus 1" in by_node["a"]
    assert "gpupool release" in by_node["a"]
    assert "reserve" not in by_node["b"]
    assert f"ledger {ray_cluster.ledgers['b']}" in by_node["b"]


def test_json_has_one_machine_object_per_node(
    ray_cluster: RayTestCluster, reservation: int
) -> None:
    done = gpupool(
        "status", "--json", "--ray", ray_cluster.address, "--provider", "tests.ray.tasks:fake_gpus"
    )
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["cluster_schema"] == 1
    assert document["address"] == ray_cluster.address
    assert isinstance(document["taken_at"], float)
    assert document["taken_at_iso"].endswith("+00:00")
    nodes: dict[str, dict[str, Any]] = {n["node_id"]: n for n in document["nodes"]}
    assert len(nodes) == 3
    heads = [n for n in nodes.values() if n["head"]]
    assert len(heads) == 1
    assert heads[0]["machine"]["gpus"] == []
    a, b = nodes[ray_cluster.ids["a"]], nodes[ray_cluster.ids["b"]]
    for node in (a, b):
        assert node["error"] is None
        assert node["ip"] == "127.0.0.1"
        assert not node["head"]
        assert node["machine"]["schema"] == 1  # the one-machine form, as it is
    assert [g["memory_total_mb"] for g in a["machine"]["gpus"]] == [8000, 8000]
    assert [g["memory_total_mb"] for g in b["machine"]["gpus"]] == [24000, 24000]
    assert [(h["id"], h["kind"]) for h in a["machine"]["holders"]] == [(reservation, "reservation")]
    assert a["machine"]["gpus"][0]["holders"][0]["id"] == reservation
    assert a["machine"]["ledger"] == str(ray_cluster.ledgers["a"])
    assert b["machine"]["holders"] == []


def test_a_node_whose_nvml_fails_is_one_line_and_the_others_show(
    ray_cluster: RayTestCluster,
) -> None:
    provider = "tests.ray.tasks:fake_gpus_but_node_a_broken"
    done = gpupool("status", "--ray", ray_cluster.address, "--provider", provider)
    assert done.returncode == 1, done.stderr
    by_node = sections(done.stdout, ray_cluster)
    assert "cannot read this node: NVML: Driver Not Loaded (node a, on purpose)" in by_node["a"]
    assert "0 / 24,000 " in by_node["b"]
    document = json.loads(
        gpupool("status", "--json", "--ray", ray_cluster.address, "--provider", provider).stdout
    )
    errors = {n["node_id"]: n["error"] for n in document["nodes"]}
    assert "Driver Not Loaded" in errors[ray_cluster.ids["a"]]
    assert errors[ray_cluster.ids["b"]] is None


def test_a_node_that_does_not_answer_is_one_line_and_the_others_show(
    ray_cluster: RayTestCluster,
) -> None:
    provider = "tests.ray.tasks:fake_gpus_but_node_a_stuck"
    done = gpupool(
        "status", "--ray", ray_cluster.address, "--provider", provider, "--node-timeout", "5"
    )
    assert done.returncode == 1, done.stderr
    by_node = sections(done.stdout, ray_cluster)
    assert "cannot read this node: did not answer within 5 s" in by_node["a"]
    assert "0 / 24,000 " in by_node["b"]


def test_an_address_where_nothing_listens_is_refused_at_once(tmp_path: Path) -> None:
    done = gpupool("status", "--ray", "127.0.0.1:1", timeout=60)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith(
        "gpupool: error: nothing answers at the Ray address '127.0.0.1:1'"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--watch"], "--watch cannot be used with --ray"),
        (["--fake-gpus", "2", "--provider", "tests.ray.tasks:fake_gpus"], "give one"),
    ],
)
def test_options_that_do_not_go_with_ray_are_usage_errors(
    ray_cluster: RayTestCluster, args: list[str], message: str
) -> None:
    done = gpupool("status", "--ray", ray_cluster.address, *args)
    assert done.returncode == 2
    assert message in done.stderr
    assert done.stdout == ""


def test_provider_without_ray_and_a_bad_provider_are_usage_errors() -> None:
    done = gpupool("status", "--provider", "tests.ray.tasks:fake_gpus")
    assert done.returncode == 2
    assert "--provider MODULE:FUNCTION needs --ray" in done.stderr
    done = gpupool("status", "--ray", "auto", "--provider", "tests.ray.tasks:nothing_here")
    assert done.returncode == 2
    assert "has no callable 'nothing_here'" in done.stderr


def test_status_and_run_without_ray_do_not_import_ray(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("[gpus=0] true\n")
    code = (
        "import sys; from gpupool._cli.main import main; "
        f"assert main(['status', '--fake-gpus', '1', '--ledger', {str(tmp_path)!r}]) == 0; "
        f"assert main(['run', {str(jobs)!r}]) == 0; "
        "assert 'ray' not in sys.modules, 'ray was imported'"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


def documented_fields() -> tuple[list[str], list[str]]:
    """The fields docs/machine.md's "The cluster form" lists: the top level's, a node's."""
    text = (ROOT / "docs" / "machine.md").read_text().split("### The cluster form", 1)[1]
    top, node = text.split("A node object:", 1)

    def fields(part: str) -> list[str]:
        rows = [line for line in part.splitlines() if line.startswith("| `")]
        return [row.split("`")[1] for row in rows]

    return fields(top), fields(node)


def test_the_json_fields_are_the_documented_ones(ray_cluster: RayTestCluster) -> None:
    done = gpupool(
        "status", "--json", "--ray", ray_cluster.address, "--provider", "tests.ray.tasks:fake_gpus"
    )
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    top, node = documented_fields()
    assert list(document) == top
    for entry in document["nodes"]:
        assert list(entry) == node
