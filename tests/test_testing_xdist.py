"""GPU leases across processes: a pytest-xdist run of 4 workers over 4 fake GPUs shared
through one ledger directory, and two suites started at once on one ledger.

Every leased test records when it ran (from the moment its GPUs were granted to its
end), which GPUs it held and what its ``CUDA_VISIBLE_DEVICES`` said. The checks: no two
tests that held a GPU ran at the same time, every test saw exactly its own GPUs, and
tests did run at the same time on different GPUs (else the first check proves nothing).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("xdist", reason="pytest-xdist is in the dev extra")

RECORDING_TEST = """
import json
import os
import time

import pytest

def record(gpu_lease, pause):
    start = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process of the machine
    seen = os.environ["CUDA_VISIBLE_DEVICES"]
    time.sleep(pause)
    line = json.dumps({
        "suite": os.environ.get("SUITE", "-"),
        "worker": os.environ.get("PYTEST_XDIST_WORKER", "main"),
        "test": os.environ["PYTEST_CURRENT_TEST"].split(" ")[0],
        "uuids": list(gpu_lease.gpu_uuids),
        "seen": seen,
        "order": os.environ["CUDA_DEVICE_ORDER"],
        "start": start,
        "end": time.monotonic(),
    })
    with open(os.environ["RECORD"], "a") as out:  # O_APPEND: one write per line
        out.write(line + "\\n")

@pytest.fixture(autouse=True, scope="session")
def both_suites_started():
    # With BARRIER set, a suite's first test starts once the other suite has started too.
    barrier = os.environ.get("BARRIER")
    if barrier:
        open(os.path.join(barrier, os.environ["SUITE"]), "w").close()
        deadline = time.monotonic() + 60
        while len(os.listdir(barrier)) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)

@pytest.mark.parametrize(
    "n",
    [pytest.param(n, marks=pytest.mark.gpus(n)) for n in [1, 1, 2, 1, 1, 1, 2, 1] * TIMES],
)
def test_leased(gpu_lease, n):
    assert len(gpu_lease.gpu_uuids) == n
    record(gpu_lease, float(os.environ.get("PAUSE", "0.1")) * n)
"""


@pytest.fixture
def ledger() -> Iterator[str]:
    """A ledger directory of a short path (the sockets in it must fit 107 bytes)."""
    directory = tempfile.mkdtemp(prefix="gpupool-xdist-")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def overlaps(runs: list[dict[str, object]]) -> list[tuple[str, str, str]]:
    """Pairs of tests that held one GPU at the same time: (GPU, test, test)."""
    found = []
    for a, b in itertools.combinations(runs, 2):
        shared = set(a["uuids"]) & set(b["uuids"])  # type: ignore[call-overload]
        if shared and a["start"] < b["end"] and b["start"] < a["end"]:  # type: ignore[operator]
            found.extend((uuid, str(a["test"]), str(b["test"])) for uuid in sorted(shared))
    return found


def concurrent_pairs(runs: list[dict[str, object]], key: str = "worker") -> int:
    """Pairs of tests of different ``key`` (worker, suite) that ran at the same time."""
    return sum(
        1
        for a, b in itertools.combinations(runs, 2)
        if a[key] != b[key] and a["start"] < b["end"] and b["start"] < a["end"]  # type: ignore[operator]
    )


def check_each_saw_its_own_gpus(runs: list[dict[str, object]]) -> None:
    for run in runs:
        assert run["seen"] == ",".join(run["uuids"]), run  # type: ignore[arg-type]
        assert run["order"] == "PCI_BUS_ID", run


def test_four_xdist_workers_share_four_fake_gpus_without_collision(
    pytester: pytest.Pytester, ledger: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    record_file = pytester.path / "record.jsonl"
    monkeypatch.setenv("RECORD", str(record_file))
    pytester.makepyfile(test_leased=RECORDING_TEST.replace("TIMES", "3"))
    result = pytester.runpytest_subprocess(
        "-n", "4", "-p", "no:randomly", "--gpus-fake", "4", "--gpus-ledger", ledger
    )
    result.assert_outcomes(passed=24)
    runs = records(record_file)
    workers = {run["worker"] for run in runs}
    gpus = {uuid for run in runs for uuid in run["uuids"]}  # type: ignore[attr-defined]
    found = overlaps(runs)
    print(
        f"xdist: {len(workers)} workers, {len(runs)} tests, {len(gpus)} GPUs, "
        f"{concurrent_pairs(runs)} pairs of tests ran at once on different workers, "
        f"overlaps found: {len(found)}"
    )
    assert len(runs) == 24
    assert workers == {"gw0", "gw1", "gw2", "gw3"}
    check_each_saw_its_own_gpus(runs)
    assert found == []
    assert concurrent_pairs(runs) > 0, "no two tests ran at once: the run proves nothing"


def test_two_suites_started_at_once_share_the_gpus_of_one_ledger(
    pytester: pytest.Pytester, ledger: str
) -> None:
    record_file = pytester.path / "record.jsonl"
    barrier = pytester.mkdir("barrier")
    pytester.makepyfile(test_leased=RECORDING_TEST.replace("TIMES", "1"))
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly"]
    command += ["-q", "--gpus-fake", "2", "--gpus-ledger", ledger, "--gpus-timeout", "120"]
    suites = [
        subprocess.Popen(
            command,
            cwd=pytester.path,
            env={
                **os.environ,
                "RECORD": str(record_file),
                "SUITE": name,
                "BARRIER": str(barrier),
                "PAUSE": "0.3",
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name in ("a", "b")
    ]
    outputs = [suite.communicate(timeout=300)[0] for suite in suites]
    for suite, output in zip(suites, outputs, strict=True):
        assert suite.returncode == 0, output
        assert "8 passed" in output, output
    runs = records(record_file)
    found = overlaps(runs)
    print(
        f"two suites: {len(runs)} tests, 2 GPUs, {concurrent_pairs(runs, 'suite')} pairs of "
        f"tests of different suites ran at once, overlaps found: {len(found)}"
    )
    assert sorted(str(run["suite"]) for run in runs) == ["a"] * 8 + ["b"] * 8
    check_each_saw_its_own_gpus(runs)
    assert found == []
    assert concurrent_pairs(runs, "suite") > 0, "the suites never ran at once"


def test_with_a_gpu_per_worker_each_worker_keeps_its_own_gpu_for_the_whole_run(
    pytester: pytest.Pytester, ledger: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # CUDA reads CUDA_VISIBLE_DEVICES once per process: a worker whose tests moved from
    # GPU to GPU would run the later ones on the first GPU, held by someone else by then.
    record_file = pytester.path / "record.jsonl"
    monkeypatch.setenv("RECORD", str(record_file))
    pytester.makepyfile(
        test_leased=RECORDING_TEST.replace("[1, 1, 2, 1, 1, 1, 2, 1] * TIMES", "[1] * 16")
    )
    result = pytester.runpytest_subprocess(
        "-n", "4", "-p", "no:randomly", "--gpus-fake", "4", "--gpus-ledger", ledger
    )
    result.assert_outcomes(passed=16)
    runs = records(record_file)
    gpus_of = {
        worker: {run["seen"] for run in runs if run["worker"] == worker}
        for worker in {run["worker"] for run in runs}
    }
    assert sorted(gpus_of) == ["gw0", "gw1", "gw2", "gw3"]
    assert all(len(seen) == 1 for seen in gpus_of.values()), gpus_of
    assert len(set.union(*gpus_of.values())) == 4, gpus_of
    assert overlaps(runs) == []
