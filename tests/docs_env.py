"""The machine the docs' examples run on: fake NVML under the real bindings.

Shared by tests/test_docs_examples.py (every Python block of the docs) and
tests/test_cookbook.py (the cookbook's commands and scripts).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from .fake_nvml import FakeMachine, build_library, find_compiler

__all__ = ["EXAMPLES", "FAKE_GPUS", "REPO", "fake_gpu_environment"]

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "docs" / "examples"
FAKE_GPUS = 4


def fake_gpu_environment(scratch: Path) -> dict[str, str]:
    """The environment of a block: fake NVML under the real bindings, python on PATH."""
    if find_compiler() is None:
        pytest.skip("no C compiler (cc, gcc or clang) to build the fake libnvidia-ml.so.1")
    library = build_library(scratch / "nvml")
    machine = FakeMachine(scratch / "nvml-state")
    for _ in range(FAKE_GPUS):
        machine.add_gpu(name="NVIDIA A100-SXM4-80GB", total_mb=81_920)
    bin_dir = scratch / "bin"
    bin_dir.mkdir()
    for name in ("python", "python3"):
        (bin_dir / name).symlink_to(sys.executable)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CUDA_", "FAKE_NVML"))}
    path = [str(bin_dir), str(Path(sys.executable).parent), env.get("PATH", "")]
    env.update(
        PATH=os.pathsep.join(filter(None, path)),
        LD_LIBRARY_PATH=str(library.parent),
        FAKE_NVML_STATE=str(machine.state_path),
        COLUMNS="120",
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env
