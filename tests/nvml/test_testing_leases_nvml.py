"""GPU leases of the pytest plugin on "real" GPUs: NVML itself, answered by the fake
libnvidia-ml, in a pytest process of its own (``pytester``)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ..fake_nvml import FakeMachine, gpu_uuid


@pytest.fixture
def nvml_machine(
    fake_nvml_build: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[FakeMachine, str]]:
    """Two GPUs behind NVML for the pytest runs this test starts, and a ledger for them."""
    pytest.importorskip("pynvml", reason="nvidia-ml-py is not installed (pip install .[nvml])")
    machine = FakeMachine(tmp_path / "nvml-state")
    for _ in range(2):
        machine.add_gpu(name="NVIDIA A100-SXM4-80GB", total_mb=81_920)
    monkeypatch.setenv("LD_LIBRARY_PATH", str(fake_nvml_build()))
    monkeypatch.setenv("FAKE_NVML_STATE", str(machine.state_path))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    ledger = tempfile.mkdtemp(prefix="gpupool-nvml-leases-")
    yield machine, ledger
    shutil.rmtree(ledger, ignore_errors=True)


def test_a_leased_test_gets_an_nvml_gpu_by_uuid(
    pytester: pytest.Pytester, nvml_machine: tuple[FakeMachine, str]
) -> None:
    _, ledger = nvml_machine
    pytester.makepyfile(
        f"""
        import os
        import pytest

        @pytest.mark.gpus(2)
        def test_both():
            assert sorted(os.environ["CUDA_VISIBLE_DEVICES"].split(",")) == [
                {gpu_uuid(0)!r}, {gpu_uuid(1)!r}
            ]

        @pytest.mark.gpus(1, mem="100G")
        def test_more_memory_than_an_a100():
            pass
        """
    )
    result = pytester.runpytest_subprocess("-rs", "--gpus-ledger", ledger)
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED * 1 GPU with 102400 MB free each, more than *"])


def test_gpus_hidden_by_cuda_visible_devices_skip_saying_so(
    pytester: pytest.Pytester,
    nvml_machine: tuple[FakeMachine, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, ledger = nvml_machine
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.gpus(1)
        def test_it():
            pass
        """
    )
    result = pytester.runpytest_subprocess("-rs", "--gpus-ledger", ledger)
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(
        ["SKIPPED * 1 GPU: needs GPUs, and none is visible to this process (*CUDA_VISIBLE_DEVICES*"]
    )
