"""The cookbook's commands and its PyTorch recipe, run as docs/cookbook.md shows them.

The Python blocks of the cookbook run in tests/test_docs_examples.py like every
other page's; what runs here is what that test cannot run: the shell commands
(``gpupool run sweep.txt``, ``gpupool reserve``) and the PyTorch DDP recipe,
which needs torch (CI installs the CPU build; without torch that one test is
skipped). All of it on the fake NVML machine of the docs' examples.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .docs_env import EXAMPLES, REPO, fake_gpu_environment
from .fake_nvml import gpu_uuid
from .gpupool_command import run_gpupool

COOKBOOK = REPO / "docs" / "cookbook.md"


@pytest.fixture(scope="module")
def machine_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return fake_gpu_environment(tmp_path_factory.mktemp("cookbook-machine"))


@pytest.fixture
def workdir(tmp_path: Path, machine_env: dict[str, str]) -> tuple[Path, dict[str, str]]:
    """A directory with the recipe's files, and an environment with a ledger of its own."""
    for name in ("train.py", "sweep.txt", "ddp_launch.py", "ddp_train.py"):
        shutil.copy(EXAMPLES / name, tmp_path / name)
    return tmp_path, {**machine_env, "GPUPOOL_LEDGER": str(tmp_path / "ledger")}


def gpupool_cli(where: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_gpupool(*args, cwd=where, env=env, timeout=120)


def test_the_page_shows_the_files_this_test_runs() -> None:
    page = COOKBOOK.read_text()
    for name in ("sweep.txt", "ddp_launch.py", "ddp_train.py"):
        assert f'--8<-- "docs/examples/{name}"' in page, name
    assert "gpupool run sweep.txt" in page
    assert "gpupool reserve --gpus 1 --mem 20G --for 8h --" in page


def test_the_jobs_file_sweep_runs_and_resumes(workdir: tuple[Path, dict[str, str]]) -> None:
    where, env = workdir
    first = gpupool_cli(where, env, "run", "sweep.txt")
    assert first.returncode == 0, first.stdout + first.stderr
    logs = sorted(path.name for path in (where / "sweep.txt.logs").iterdir())
    assert len(logs) == 5, logs
    assert {"big-batch.log", "cpu-check.log"} <= set(logs)
    assert "GPUs seen: ''" in (where / "sweep.txt.logs" / "cpu-check.log").read_text()
    big = (where / "sweep.txt.logs" / "big-batch.log").read_text()
    assert re.search(r"GPUs: GPU-[0-9a-f-]+,GPU-[0-9a-f-]+\n", big), big
    # The same command again: everything comes back from the journal.
    again = gpupool_cli(where, env, "run", "sweep.txt")
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("(earlier run)") == 5, again.stdout


def test_reserve_runs_the_command_with_the_reserved_gpu(
    workdir: tuple[Path, dict[str, str]],
) -> None:
    """The notebook recipe's command, with a stand-in for ``jupyter lab`` (not installed)."""
    where, env = workdir
    show = "import os; print(os.environ['CUDA_VISIBLE_DEVICES'], os.environ['GPUPOOL_RESERVATION'])"
    done = gpupool_cli(
        where, env, "reserve", "--gpus", "1", "--mem", "20G", "--for", "8h", "--",
        "python", "-c", show,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    visible, reservation = done.stdout.split()
    assert visible in {gpu_uuid(n) for n in range(4)}
    assert reservation.isdigit()


def test_reserve_without_a_command_prints_the_exports(
    workdir: tuple[Path, dict[str, str]],
) -> None:
    where, env = workdir
    done = gpupool_cli(where, env, "reserve", "--gpus", "1", "--for", "1s")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "export CUDA_DEVICE_ORDER=PCI_BUS_ID" in done.stdout
    exported = re.search(r"^export CUDA_VISIBLE_DEVICES=(\S+)$", done.stdout, re.MULTILINE)
    assert exported is not None, done.stdout
    assert exported[1] in {gpu_uuid(n) for n in range(4)}


def test_pytorch_ddp_on_an_allocation(workdir: tuple[Path, dict[str, str]]) -> None:
    """torchrun with one process per GPU of the allocation: gloo on the CPU here."""
    pytest.importorskip("torch", reason="PyTorch is not installed (pip install torch)")
    where, env = workdir
    done = subprocess.run(
        [sys.executable, "ddp_launch.py"],
        cwd=where,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=110,
    )
    log = (where / "ddp.log").read_text() if (where / "ddp.log").exists() else ""
    assert done.returncode == 0, done.stdout + done.stderr + log
    assert "world_size=2 backend=gloo" in log, log
    visible = re.search(r"CUDA_VISIBLE_DEVICES=(\S+)", log)
    assert visible is not None, log
    uuids = visible[1].split(",")
    assert len(uuids) == 2, log
    assert set(uuids) <= {gpu_uuid(n) for n in range(4)}
