"""``gpupool status`` through real subprocesses (``python -m gpupool``).

The tables and ``--json`` over hand-made views are tested in
``tests/test_cli_status.py``; here the view is the real one, over the fake NVML.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from ..fake_nvml import DRIVER_NOT_LOADED, GPU_IS_LOST, FakeMachine, gpu_uuid
from .conftest import PYTHON, REPO_ROOT, subprocess_env


def gpupool(
    *args: str, library_dir: Path | None = None, state: FakeMachine | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    environ = subprocess_env(library_dir, state)
    environ.update(env)
    return subprocess.run(
        [PYTHON, "-m", "gpupool", *args],
        cwd=REPO_ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


#: The command's view comes from gpupool._ledger.status.machine_status.
needs_machine_status = pytest.mark.skipif(
    importlib.util.find_spec("gpupool._ledger.status") is None,
    reason="gpupool._ledger.status (machine_status) is not in this tree yet",
)


@pytest.fixture
def fake_machine(fake_nvml_build: Callable[..., Path], tmp_path: Path) -> tuple[Path, FakeMachine]:
    """A fake libnvidia-ml directory (for LD_LIBRARY_PATH) and the machine it reports."""
    return fake_nvml_build(), FakeMachine(tmp_path / "nvml-state")


@needs_machine_status
def test_fake_gpus_table(tmp_path: Path) -> None:
    (tmp_path / "ledger").mkdir()
    done = gpupool("status", "--fake-gpus", "4", "--ledger", str(tmp_path / "ledger"))
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if "Fake GPU" in line]
    assert len(rows) == 4
    assert "0 / 24,576" in rows[3]
    assert "4 fake GPU(s)" in done.stdout


@needs_machine_status
def test_fake_gpus_json(tmp_path: Path) -> None:
    (tmp_path / "ledger").mkdir()
    done = gpupool("status", "--fake-gpus", "2", "--json", "--ledger", str(tmp_path / "ledger"))
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["schema"] == 1
    gpus = status["gpus"]
    assert [g["index"] for g in gpus] == [0, 1]
    assert gpus[0]["memory_free_mb"] == gpus[0]["memory_total_mb"] == 24_576
    assert gpus[1]["healthy"] is True
    assert gpus[1]["holders"] == gpus[1]["other_processes"] == []


@needs_machine_status
def test_nvml_table_and_json(fake_machine: tuple[Path, FakeMachine], tmp_path: Path) -> None:
    library, machine = fake_machine
    machine.add_gpu(name="NVIDIA A100-SXM4-80GB", total_mb=81_920, used_mb=20_000,
                    utilization=63, processes={4242: 19_000, 5151: None})  # fmt: skip
    machine.add_gpu(name="NVIDIA A100-SXM4-80GB", errors={"error": GPU_IS_LOST})
    (tmp_path / "ledger").mkdir()
    ledger = str(tmp_path / "ledger")
    table = gpupool("status", "--ledger", ledger, library_dir=library, state=machine, COLUMNS="140")
    assert table.returncode == 0, table.stderr
    rows = [line for line in table.stdout.splitlines() if line.startswith("│")]
    first = next(row for row in rows if "20,000 / 81,920" in row)
    assert "63%" in first
    # Lost from the start, so NVML could not even tell its name or UUID.
    second = next(row for row in rows if "unidentified GPU" in row)
    assert "UNHEALTHY: GPU is lost" in second
    # Neither process is in the ledger: both are listed as not managed by gpupool.
    managed = table.stdout[table.stdout.index("Not managed by gpupool") :]
    assert "4242" in managed
    assert "19,000 MiB" in managed
    assert "5151" in managed
    assert "? MiB" in managed

    as_json = gpupool("status", "--json", "--ledger", ledger, library_dir=library, state=machine)
    assert as_json.returncode == 0, as_json.stderr
    gpus = json.loads(as_json.stdout)["gpus"]
    assert len(gpus) == 2
    assert gpus[0]["uuid"] == gpu_uuid(0)
    assert [(p["pid"], p["memory_mb"]) for p in gpus[0]["other_processes"]] == [
        (4242, 19_000),
        (5151, None),
    ]
    assert gpus[0]["holders"] == []
    assert gpus[1]["healthy"] is False
    assert "lost" in gpus[1]["health_detail"].lower()


@needs_machine_status
def test_the_machine_view_shows_every_gpu_whatever_the_mask(
    fake_machine: tuple[Path, FakeMachine], tmp_path: Path
) -> None:
    """The view is the machine's: this shell's CUDA_VISIBLE_DEVICES (even a malformed
    one) is not applied, and the table says so."""
    library, machine = fake_machine
    for _ in range(3):
        machine.add_gpu()
    (tmp_path / "ledger").mkdir()
    ledger = ("--ledger", str(tmp_path / "ledger"))
    for mask in ("2,0", "", "0,gpu0"):
        done = gpupool(
            "status",
            "--json",
            *ledger,
            library_dir=library,
            state=machine,
            CUDA_VISIBLE_DEVICES=mask,
        )
        assert done.returncode == 0, done.stderr
        uuids = [g["uuid"] for g in json.loads(done.stdout)["gpus"]]
        assert uuids == [gpu_uuid(0), gpu_uuid(1), gpu_uuid(2)]
    table = gpupool(
        "status",
        *ledger,
        library_dir=library,
        state=machine,
        CUDA_VISIBLE_DEVICES="2,0",
        COLUMNS="140",
    )
    assert table.returncode == 0, table.stderr
    assert "CUDA_VISIBLE_DEVICES=2,0 not applied" in table.stdout


@needs_machine_status
def test_no_nvml_driver_is_a_clear_error(fake_machine: tuple[Path, FakeMachine]) -> None:
    library, machine = fake_machine
    machine.init_error = DRIVER_NOT_LOADED
    machine.add_gpu()
    done = gpupool("status", library_dir=library, state=machine)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith("gpupool: error: cannot use NVML: the NVIDIA kernel driver")
    assert "--fake-gpus" in done.stderr
    assert "Traceback" not in done.stderr


@needs_machine_status
def test_no_nvml_library_is_a_clear_error(tmp_path: Path) -> None:
    import ctypes.util

    if ctypes.util.find_library("nvidia-ml"):
        pytest.skip("this machine has a real libnvidia-ml")
    done = gpupool("status", "--json", library_dir=tmp_path)
    assert done.returncode == 2
    assert "libnvidia-ml.so.1) was not found" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ((), "the following arguments are required: COMMAND"),
        (("status", "--fake-gpus", "0"), "N must be an int in [1, 1024], got '0'"),
        (("status", "--fake-gpus", "two"), "N must be an int in [1, 1024], got 'two'"),
        (("frobnicate",), "invalid choice: 'frobnicate'"),
    ],
)
def test_usage_errors(args: tuple[str, ...], fragment: str) -> None:
    done = gpupool(*args)
    assert done.returncode == 2
    assert fragment in done.stderr


def test_version() -> None:
    done = gpupool("--version")
    assert done.returncode == 0
    assert done.stdout.startswith("gpupool ")
