"""GPU leases for tests (``@pytest.mark.gpus``, ``--gpus-per-test``), over fake GPUs shared
through a real ledger directory, each suite run by ``pytester`` in a pytest process of its
own: the environment a leased test sees, skips and failures, the timeout, a killed suite.

Several processes at once (pytest-xdist, two suites) are in tests/test_testing_xdist.py.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gpupool_command import held_reservation

HIDE_NVML = """
import importlib.abc
import sys

class HideNVML(importlib.abc.MetaPathFinder):
    # As on a machine without nvidia-ml-py: the same skip whatever this machine has.
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "pynvml":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, HideNVML())
"""


@pytest.fixture
def ledger() -> Iterator[str]:
    """A ledger directory of a short path (the sockets in it must fit 107 bytes)."""
    directory = tempfile.mkdtemp(prefix="gpupool-leases-")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def fake(ledger: str, count: int = 2) -> list[str]:
    return ["--gpus-fake", str(count), "--gpus-ledger", ledger]


def test_a_leased_test_and_its_fixtures_see_its_gpus_and_only_while_it_runs(
    pytester: pytest.Pytester, ledger: str
) -> None:
    pytester.makepyfile(
        """
        import os
        import pytest
        from gpupool.testing import fake_uuid

        BEFORE = {k: os.environ.get(k) for k in
                  ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "GPUPOOL_LEDGER")}

        @pytest.fixture
        def device_seen_by_a_fixture():
            return os.environ["CUDA_VISIBLE_DEVICES"]

        @pytest.mark.gpus(2, mem="8G")
        def test_two(gpu_lease, device_seen_by_a_fixture):
            assert len(gpu_lease.gpu_uuids) == 2
            assert set(gpu_lease.gpu_uuids) <= {fake_uuid(i) for i in range(3)}
            assert os.environ["CUDA_VISIBLE_DEVICES"] == ",".join(gpu_lease.gpu_uuids)
            assert device_seen_by_a_fixture == os.environ["CUDA_VISIBLE_DEVICES"]
            assert os.environ["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
            # The code under test gets a ledger of its own, not the one the lease is in.
            inner = os.environ["GPUPOOL_LEDGER"]
            assert inner != BEFORE["GPUPOOL_LEDGER"] and os.path.isdir(inner)
            assert gpu_lease.memory_mb >= 0

        def test_after(gpu_lease):
            assert gpu_lease is None
            assert {k: os.environ.get(k) for k in BEFORE} == BEFORE

        @pytest.mark.gpus(0)
        def test_none(gpu_lease):
            assert gpu_lease is None
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:randomly", *fake(ledger, 3))
    result.assert_outcomes(passed=3)


def test_gpus_per_test_leases_for_every_unmarked_test(
    pytester: pytest.Pytester, ledger: str
) -> None:
    pytester.makepyfile(
        """
        import os
        import pytest

        def test_unmarked(gpu_lease):
            assert len(gpu_lease.gpu_uuids) == 1
            assert os.environ["CUDA_VISIBLE_DEVICES"] == gpu_lease.gpu_uuids[0]

        @pytest.mark.gpus(2)
        def test_marked(gpu_lease):
            assert len(gpu_lease.gpu_uuids) == 2

        @pytest.mark.gpus(0)
        def test_opted_out(gpu_lease):
            assert gpu_lease is None
        """
    )
    result = pytester.runpytest_subprocess("--gpus-per-test", "1", *fake(ledger))
    result.assert_outcomes(passed=3)


def test_the_ini_options_work_as_the_command_line(pytester: pytest.Pytester, ledger: str) -> None:
    pytester.makeini(
        f"""
        [pytest]
        gpus_per_test = 1
        gpus_fake = 2
        gpus_ledger = {ledger}
        """
    )
    pytester.makepyfile(
        """
        def test_unmarked(gpu_lease):
            assert len(gpu_lease.gpu_uuids) == 1
        """
    )
    pytester.runpytest_subprocess().assert_outcomes(passed=1)
    assert (Path(ledger) / "ledger.db").exists()


def test_a_test_asking_for_more_than_the_machine_has_skips_or_fails_as_configured(
    pytester: pytest.Pytester, ledger: str
) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.gpus(3)
        def test_three():
            pass

        @pytest.mark.gpus(1, mem="64G")
        def test_too_much_memory():
            pass
        """
    )
    result = pytester.runpytest_subprocess("-rs", *fake(ledger))
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(["SKIPPED * 3 GPUs, more than this machine has: *"])
    result.stdout.fnmatch_lines(["SKIPPED * 1 GPU with 65536 MB free each, more than *"])

    result = pytester.runpytest_subprocess(*fake(ledger), "--gpus-too-many", "fail")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*3 GPUs, more than this machine has: *(--gpus-too-many=fail)"])


def test_without_gpus_a_marked_test_skips_saying_why(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(HIDE_NVML)
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.gpus(1)
        def test_needs_a_gpu():
            pass

        def test_needs_none():
            pass
        """
    )
    result = pytester.runpytest_subprocess("-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(
        [
            "SKIPPED * 1 GPU: needs GPUs, and this machine has none that gpupool can use (*); "
            "to run GPU tests on fake GPUs: --gpus-fake N --gpus-ledger DIR"
        ]
    )


WRONG_MARKERS = {
    "gpus('two')": "TypeError: @pytest.mark.gpus: n must be an int >= 0, got 'two'",
    "gpus(1, mem='lots')": "ValueError: @pytest.mark.gpus: mem: memory must look like 8G*",
    "gpus(1, mem=[8])": "TypeError: @pytest.mark.gpus: mem must be a size like '8G'*",
    "gpus(1, memory='8G')": "TypeError: @pytest.mark.gpus takes (n=1, *, mem=None): *'memory'",
}


def test_a_wrong_gpus_marker_names_what_is_wrong(pytester: pytest.Pytester, ledger: str) -> None:
    # In this process: a wrong marker fails before any pool would be opened.
    pytester.makepyfile(
        "import pytest\n"
        + "".join(
            f"\n@pytest.mark.{marker}\ndef test_{i}():\n    pass\n"
            for i, marker in enumerate(WRONG_MARKERS)
        )
    )
    result = pytester.runpytest(*fake(ledger))
    result.assert_outcomes(errors=len(WRONG_MARKERS))
    result.stdout.fnmatch_lines([f"E *{message}" for message in WRONG_MARKERS.values()])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--gpus-fake", "2"], "ERROR: --gpus-fake needs --gpus-ledger DIR*"),
        (["--gpus-per-test", "-1"], "ERROR: --gpus-per-test must be an int >= 0, got '-1'"),
        (["--gpus-timeout", "soon"], "ERROR: --gpus-timeout must be a number of seconds > 0*"),
        (["--gpus-too-many", "maybe"], "ERROR: --gpus-too-many must be skip or fail, got 'maybe'"),
    ],
)
def test_wrong_options_are_usage_errors(
    pytester: pytest.Pytester, options: list[str], message: str
) -> None:
    pytester.makepyfile("def test_it(): pass")
    result = pytester.runpytest(*options)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


@pytest.fixture
def reservation(ledger: str) -> Iterator[int]:
    """`gpupool reserve` holding the one fake GPU of ``ledger`` until the test ends."""
    with held_reservation("--gpus", "1", "--fake-gpus", "1", "--ledger", ledger) as hold_id:
        yield hold_id


def test_a_test_whose_gpus_stay_busy_fails_at_its_timeout_naming_the_holder(
    pytester: pytest.Pytester, ledger: str, reservation: int
) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.gpus(1)
        def test_waits():
            pass
        """
    )
    result = pytester.runpytest_subprocess(*fake(ledger, 1), "--gpus-timeout", "0.5")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*1 GPU not granted within 0.5 s (--gpus-timeout): pid * (*gpupool reserve*) holds "
            "GPU-fa4e0000-0000-4000-8000-000000000000; `gpupool status --ledger *` shows the machine"
        ]
    )


def test_a_suite_killed_mid_test_frees_its_gpus(pytester: pytest.Pytester, ledger: str) -> None:
    held = pytester.path / "held"
    pytester.makepyfile(
        test_holds=f"""
        import pathlib
        import time
        import pytest

        @pytest.mark.gpus(1)
        def test_holds():
            pathlib.Path({str(held)!r}).write_text("held")
            time.sleep(120)
        """,
        test_next="""
        import pytest

        @pytest.mark.gpus(1)
        def test_next(gpu_lease):
            assert gpu_lease is not None
        """,
    )
    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "test_holds.py",
            *fake(ledger, 1),
        ],
        cwd=pytester.path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not held.exists():
            assert first.poll() is None, "the first suite ended before its test held the GPU"
            assert time.monotonic() < deadline, "the first suite's test never got its GPU"
            time.sleep(0.05)
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    # The only GPU was held by the killed suite's test: the ledger frees it.
    result = pytester.runpytest_subprocess("test_next.py", *fake(ledger, 1), "--gpus-timeout", "30")
    result.assert_outcomes(passed=1)
